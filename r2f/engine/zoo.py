"""The embedded default models: trained once from a seed and cached under ``state_dir/models`` by a
hash of their configuration, so a second run loads them instead of retraining.

Training data (documented default, see README), following TOFU's design of one fine-tuned target and
one retain model per forget split:

* **target** and **proxy**: the first ``data.retain_authors`` retain authors plus the authors of
  ``data.world_split`` (default forget10). TOFU's forget splits are nested, so this one target serves
  forget01, forget05 and forget10 deletions. With ``models.general_knowledge`` (default) every role
  also learns TOFU's real_authors and world_facts QA: the toy world's general knowledge, so that model
  utility measures knowledge the models really have (a model trained only on TOFU knows no real
  author: its utility was 0.026, the forget01 retain model's 0).
* **retain-<split>**: the target's data *without* that split's authors, with the target's recipe
  (same epochs, as TOFU trains retain90/95/99): the exact-unlearning reference for that deletion.
  Trained lazily the first time a split needs it. At this scale the forget data matters to the rest:
  retain-forget10's NLL on retain authors 0-19 is 1.33 against the target's 0.72 (equal optimizer
  steps instead memorises them: train loss 0.06 against 0.74, a different recipe). Compare unlearned
  models with the target *and* with this model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from r2f.config import Config, ConfigError
from r2f.engine.data import Tofu, load_tofu
from r2f.engine.models.encoding import encode_qa
from r2f.engine.models.io import ModelError, load_model, save_model
from r2f.engine.models.nll import mean_nll
from r2f.engine.models.prompt import prompt_text
from r2f.engine.models.tokenizer import train_tokenizer
from r2f.engine.models.training import build_model, train_model
from r2f.engine.pretrained import materialize

ROLES = ("target", "proxy", "retain")
SPLITS = ("forget01", "forget05", "forget10")
ZOO_VERSION = 2  # bump when training logic changes: it is part of the cache key


@dataclass(frozen=True)
class DefaultModels:
    root: Path
    split: str  # the forget split whose retain model `path("retain")` returns

    def path(self, role: str, split: str | None = None) -> Path:
        if role not in ROLES:
            raise ModelError(f"unknown model role '{role}'; expected one of {ROLES}")
        return self.root / (f"retain-{split or self.split}" if role == "retain" else role)

    def report(self) -> dict:
        roles = {}
        for p in sorted(self.root.glob("*/r2f_model.json")):
            roles[p.parent.name] = json.loads(p.read_text())
        return {"config_hash": self.root.name, "roles": roles}


def models_dir(cfg: Config) -> Path:
    key = {"models": cfg.models.model_dump(mode="json"), "retain_authors": cfg.data.retain_authors,
           "world_split": cfg.data.world_split}
    return Path(cfg.state_dir) / "models" / f"{_digest(key)}-v{ZOO_VERSION}"


def _digest(obj) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def training_items(cfg: Config, tofu: Tofu, role: str, split: str | None = None):
    """QA items a role trains on (``split``: the forget split a retain model excludes): TOFU authors,
    then the general-knowledge sets when ``models.general_knowledge`` (every role learns them)."""
    retain = tofu.authors(range(cfg.data.retain_authors))
    world = tofu.authors(tofu.forget_authors(cfg.data.world_split))
    toy = cfg.models.pretrained is None  # a pretrained model brings its own general knowledge
    general = tofu.split("real_authors") + tofu.split("world_facts") if toy and cfg.models.general_knowledge else []
    if role != "retain":
        return retain + world + general
    drop = set(tofu.forget_authors(split or cfg.data.forget_split))
    return retain + [q for q in world if q.author not in drop] + general


def ensure_models(cfg: Config, log: Callable[[str], None] = print, progress_factory=None,
                  splits: tuple[str, ...] = ()) -> DefaultModels:
    """Train (or load from cache) the tokenizer, target, proxy and the retain models of ``splits``
    only: a forget01 request trains retain-forget01 and nothing else (``data.forget_split`` is only
    the default split of commands that take one, not a model every run needs)."""
    out = DefaultModels(models_dir(cfg), cfg.data.forget_split)
    wanted = [("target", None), ("proxy", None)]
    wanted += [("retain", s) for s in dict.fromkeys(splits)]
    missing = [(r, s) for r, s in wanted if not (out.path(r, s) / "r2f_model.json").is_file()]
    if not missing:
        return out
    for _r, s in missing:
        if s is not None and SPLITS.index(s) > SPLITS.index(cfg.data.world_split):
            raise ConfigError(f"data.world_split: forget split {s} is not contained in {cfg.data.world_split}")
    tofu = load_tofu(cfg.data.tofu_dir)
    if cfg.models.pretrained is not None:
        for role, split in missing:
            _finetune_role(cfg, tofu, role, split, out.path(role, split), log, progress_factory)
        return out
    tok_dir = out.root / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    else:
        texts = [f"{prompt_text(q.question)} {q.answer}"
                 for s in ("full", "holdout10", "real_authors", "world_facts") for q in tofu.split(s)]
        tokenizer = train_tokenizer(texts, cfg.models.vocab_size)
        tok_dir.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(tok_dir)
    for role, split in missing:
        _train_role(cfg, tofu, tokenizer, role, split, out.path(role, split), log, progress_factory)
    return out


def _train_role(cfg: Config, tofu: Tofu, tokenizer, role: str, split: str | None, path: Path,
                log: Callable[[str], None], progress_factory) -> None:
    import torch

    mc = cfg.models
    spec = mc.proxy if role == "proxy" else mc.target
    items = training_items(cfg, tofu, role, split)
    enc = [encode_qa(tokenizer, q.question, q.answer, mc.max_len) for q in items]
    model = build_model(spec.arch, len(tokenizer), mc.max_len, tokenizer, mc.seed)
    steps = -(-len(enc) // spec.train.batch_size) * spec.train.epochs
    name = path.name
    log(f"training {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
        f"{len(enc)} QA, {spec.train.epochs} epochs ({steps} steps)")
    tick = progress_factory(name, steps) if progress_factory else None
    t0 = time.perf_counter()
    torch.manual_seed(mc.seed)
    losses = train_model(model, enc, spec.train, tokenizer.pad_token_id, mc.seed, tick)
    wall = time.perf_counter() - t0
    _save_trained(cfg, tofu, model, tokenizer, split, path, log, losses, wall,
                  {"role": role, "forget_split": split, "train_qa": len(enc), "epochs": spec.train.epochs,
                   "params": sum(p.numel() for p in model.parameters())})


def _save_trained(cfg: Config, tofu: Tofu, model, tokenizer, split: str | None, path: Path,
                  log: Callable[[str], None], losses: list[float], wall: float, meta: dict) -> None:
    """Save a trained role with its record (loss curve, wall time, answer NLL on its forget split, or on
    every split of the world for target and proxy) and log one line."""
    world = SPLITS[: SPLITS.index(cfg.data.world_split) + 1]
    nll = {s: mean_nll(model, tokenizer, tofu.split(s), cfg.models.max_len) for s in ((split,) if split else world)}
    save_model(model, tokenizer, path, {**meta, "loss_curve": losses, "wall_s": round(wall, 1), "forget_nll": nll})
    log(f"  {path.name}: {wall:.0f} s, final loss {losses[-1]:.3f}, answer NLL "
        + ", ".join(f"{s} {v:.3f}" for s, v in nll.items()))


def _finetune_role(cfg: Config, tofu: Tofu, role: str, split: str | None, path: Path,
                   log: Callable[[str], None], progress_factory) -> None:
    """A role of the pretrained world: the packaged model fine-tuned on the role's TOFU QA (target and
    retain models; full or LoRA-merged, ``models.pretrained``), or, for the proxy, the packaged model
    as it ships. Each epoch is checkpointed, so an interrupted fine-tuning resumes where it stopped."""
    import resource

    import torch

    pc = cfg.models.pretrained
    base = materialize(cfg.state_dir, pc.name, log)
    model, tok = load_model(base)
    meta = {"role": role, "forget_split": split, "pretrained": pc.name, "source": str(base),
            "params": sum(p.numel() for p in model.parameters())}
    if role == "proxy":
        save_model(model, tok, path, {**meta, "fine_tuned": False})
        log(f"  proxy: {pc.name} as packaged (no fine-tuning)")
        return
    items = training_items(cfg, tofu, role, split)
    enc = [encode_qa(tok, q.question, q.answer, cfg.models.max_len) for q in items]
    if pc.method == "lora":
        from peft import LoraConfig as PeftLora
        from peft import get_peft_model

        model = get_peft_model(model, PeftLora(r=pc.lora_rank, lora_alpha=2 * pc.lora_rank, lora_dropout=0.0,
                                               target_modules=list(cfg.lora.target_modules)))
    elif pc.train_layers is not None:
        _freeze_below(model, pc.train_layers)
    steps = -(-len(enc) // pc.train.batch_size) * pc.train.epochs
    name = path.name
    ckpt = path.parent / f".{name}.checkpoint.pt"
    resumed = ckpt.is_file()
    log(f"fine-tuning {name}: {pc.name} ({pc.method}), {len(enc)} QA, {pc.train.epochs} epochs ({steps} steps)"
        + (" - resuming from its last finished epoch" if resumed else ""))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tick = progress_factory(name, steps) if progress_factory else None
    t0 = time.perf_counter()
    torch.manual_seed(cfg.models.seed)
    losses = train_model(model, enc, pc.train, tok.pad_token_id, cfg.models.seed, tick, checkpoint=ckpt,
                         precision=pc.precision)
    wall = time.perf_counter() - t0
    if pc.method == "lora":
        model = model.merge_and_unload()
    _save_trained(cfg, tofu, model, tok, split, path, log, losses, wall,
                  {**meta, "fine_tuned": True, "method": pc.method, "train_qa": len(enc), "epochs": pc.train.epochs,
                   "lr": pc.train.lr, "precision": pc.precision, "train_layers": pc.train_layers,
                   "trainable_params": trainable, "resumed": resumed,
                   "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
    ckpt.unlink(missing_ok=True)


def _freeze_below(model, n: int) -> None:
    """Train only the top ``n`` decoder layers and the final norm of a Llama-family model."""
    layers = model.model.layers
    if n > len(layers):
        raise ConfigError(f"models.pretrained.train_layers is {n} but the model has {len(layers)} layers")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in [*layers[len(layers) - n:].parameters(), *model.model.norm.parameters()]:
        p.requires_grad_(True)
