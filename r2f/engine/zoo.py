"""The embedded default models: trained once from a seed and cached under ``state_dir/models`` by a
hash of their configuration, so a second run loads them instead of retraining.

Training data (documented default, see README), following TOFU's design of one fine-tuned target and
one retain model per forget split:

* **target** and **proxy**: the first ``data.retain_authors`` retain authors plus the authors of
  ``data.world_split`` (default forget10). TOFU's forget splits are nested, so this one target serves
  forget01, forget05 and forget10 deletions.
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

from r2f.config import Config
from r2f.engine.data import Tofu, load_tofu
from r2f.engine.models.encoding import encode_qa
from r2f.engine.models.io import save_model
from r2f.engine.models.nll import mean_nll
from r2f.engine.models.prompt import prompt_text
from r2f.engine.models.tokenizer import train_tokenizer
from r2f.engine.models.training import build_model, train_model

ROLES = ("target", "proxy", "retain")
SPLITS = ("forget01", "forget05", "forget10")
ZOO_VERSION = 2  # bump when training logic changes: it is part of the cache key


@dataclass(frozen=True)
class DefaultModels:
    root: Path
    split: str  # the forget split whose retain model `path("retain")` returns

    def path(self, role: str, split: str | None = None) -> Path:
        if role not in ROLES:
            raise ValueError(f"unknown model role '{role}'; expected one of {ROLES}")
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
    """QA items a role trains on (``split``: the forget split a retain model excludes)."""
    retain = tofu.authors(range(cfg.data.retain_authors))
    world = tofu.authors(tofu.forget_authors(cfg.data.world_split))
    if role != "retain":
        return retain + world
    drop = set(tofu.forget_authors(split or cfg.data.forget_split))
    return retain + [q for q in world if q.author not in drop]


def ensure_models(cfg: Config, log: Callable[[str], None] = print, progress_factory=None,
                  splits: tuple[str, ...] = ()) -> DefaultModels:
    """Train (or load from cache) the tokenizer, target, proxy and the retain model of
    ``cfg.data.forget_split`` (plus those of ``splits``)."""
    out = DefaultModels(models_dir(cfg), cfg.data.forget_split)
    wanted = [("target", None), ("proxy", None)]
    wanted += [("retain", s) for s in dict.fromkeys((cfg.data.forget_split, *splits))]
    missing = [(r, s) for r, s in wanted if not (out.path(r, s) / "r2f_model.json").is_file()]
    if not missing:
        return out
    for _r, s in missing:
        if s is not None and SPLITS.index(s) > SPLITS.index(cfg.data.world_split):
            raise ValueError(f"forget split {s} is not contained in data.world_split {cfg.data.world_split}")
    tofu = load_tofu(cfg.data.tofu_dir)
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
    world = SPLITS[: SPLITS.index(cfg.data.world_split) + 1]
    nll = {s: mean_nll(model, tokenizer, tofu.split(s), mc.max_len) for s in ((split,) if split else world)}
    meta = {"role": role, "forget_split": split, "train_qa": len(enc), "epochs": spec.train.epochs,
            "loss_curve": losses, "wall_s": round(wall, 1), "params": sum(p.numel() for p in model.parameters()),
            "forget_nll": nll}
    save_model(model, tokenizer, path, meta)
    log(f"  {name}: {wall:.0f} s, final loss {losses[-1]:.3f}, answer NLL "
        + ", ".join(f"{s} {v:.3f}" for s, v in nll.items()))

