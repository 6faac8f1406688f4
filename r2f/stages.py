"""Pipeline stages as pure functions of the configuration (the CLI, ``dvc.yaml`` and the Prefect
flows all call these). Each returns a small JSON-able report and writes its artifacts atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from .config import Config
from .data import load_tofu

Log = Callable[[str], None]


def _noop(_msg: str) -> None:
    pass


def train_models(cfg: Config, log: Log = _noop, progress=None) -> dict:
    """Tokenizer + target, proxy and retain models (cached by config hash)."""
    from .zoo import ensure_models

    models = ensure_models(cfg, log, progress)
    return {"models_dir": str(models.root), **models.report()}


def decoder_dir(cfg: Config) -> Path:
    key = cfg.section_hash("models", "data", "lora", "paraphrase", "decoder")
    return Path(cfg.state_dir) / "decoders" / f"{key}-{cfg.unlearn.objective}"


def decoder_train_items(cfg: Config, tofu):
    """Proxy prompts for decoder training: retain authors only, never forget or evaluation items.

    Authors ``20..retain_authors-1`` first (not in retain_perturbed), then the rest if needed.
    """
    from .zoo import training_items

    retain = training_items(cfg, tofu, "retain")
    return retain[400:] + retain[:400]


def train_decoder(cfg: Config, log: Log = _noop, progress=None, force: bool = False) -> dict:
    """Train the learned decoder on (LoRA-grad, full-grad) pairs from the proxy; cached."""
    from .decoder import LearnedDecoder, train_decoder as fit
    from .fidelity import collect_pairs, fidelity, flatten
    from .grads import target_modules
    from .zoo import ensure_models
    from .models import load_model

    out = decoder_dir(cfg)
    if (out / "decoder.json").is_file() and not force:
        return {"decoder_dir": str(out), **LearnedDecoder.load(out).meta}
    models = ensure_models(cfg, log)
    model, tok = load_model(models.path("proxy"))
    per_prompt = len(target_modules(model, cfg.lora.target_modules))
    n_prompts = -(-cfg.decoder.pairs // per_prompt)
    items = decoder_train_items(cfg, load_tofu(cfg.data.tofu_dir))[:n_prompts]
    log(f"decoder: collecting {n_prompts} proxy prompts x {per_prompt} modules "
        f"({n_prompts * per_prompt} pairs, A init '{cfg.lora.init}')")
    t0 = time.perf_counter()
    tick = progress("proxy pairs", n_prompts) if progress else None
    prompts = collect_pairs(model, tok, cfg, items, progress=tick)
    t_pairs = time.perf_counter() - t0
    n_val = max(1, len(prompts) // 10)
    train, val = prompts[n_val:], prompts[:n_val]
    tick = progress("decoder steps", cfg.decoder.steps) if progress else None
    dec, curve = fit(flatten(train), cfg.decoder.hidden, cfg.decoder.steps, cfg.decoder.lr,
                     cfg.decoder.cosine_weight, cfg.decoder.seed, progress=tick)
    dec.meta = {
        "kind": "learned", "a_init": cfg.lora.init, "objective": cfg.unlearn.objective,
        "proxy": str(models.path("proxy")), "pairs": len(flatten(train)), "steps": cfg.decoder.steps,
        "loss_first": curve[0], "loss_last": curve[-1], "loss_curve": curve[:: max(1, len(curve) // 50)],
        "val_learned": fidelity(dec, val), "val_prior": fidelity("prior", val),
        "val_analytic": fidelity("analytic", val),
        "pairs_s": round(t_pairs, 1), "train_s": round(time.perf_counter() - t0 - t_pairs, 1),
    }
    dec.save(out)
    log(f"decoder: loss {curve[0]:.3f} -> {curve[-1]:.3f}; held-out proxy cosine "
        f"learned {dec.meta['val_learned']['cosine_mean']:.3f} vs analytic {dec.meta['val_analytic']['cosine_mean']:.3f}")
    return {"decoder_dir": str(out), **dec.meta}


def unlearn(cfg: Config, method: str | None = None, forget_split: str | None = None,
            model_path: str | Path | None = None, out: str | Path | None = None,
            log: Log = _noop, progress=None) -> dict:
    """Apply one unlearning method to the target (default: the embedded target) and report the
    mean answer-token NLL on forget, retain and holdout before and after."""
    import resource

    from .decoder import LearnedDecoder
    from .models import load_model, mean_nll, save_model
    from .unlearn import UnlearnContext, get_method
    from .zoo import ensure_models

    method = method or cfg.unlearn.method
    forget_split = forget_split or cfg.data.forget_split
    impl = get_method(method)
    tofu = load_tofu(cfg.data.tofu_dir)
    models = ensure_models(cfg, log)
    model_path = Path(model_path) if model_path else models.path("target")
    model, tok = load_model(model_path)
    decoder = None
    if method == "r2f":
        decoder = cfg.decoder.kind
        if decoder == "learned":
            decoder = LearnedDecoder.load(train_decoder(cfg, log, progress)["decoder_dir"])
    forget = tofu.split(forget_split)
    calib = [q for q in tofu.authors(range(20, cfg.data.retain_authors))] or tofu.split("retain_perturbed")
    evalsets = {"forget": forget, "retain": tofu.split("retain_perturbed"), "holdout": tofu.split("holdout10")}
    ml = cfg.models.max_len
    before = {k: mean_nll(model, tok, v, ml) for k, v in evalsets.items()}
    ctx = UnlearnContext(model, tok, cfg, forget, calib, tofu.idontknow(), decoder,
                         models.path("retain"), log, progress)
    t0 = time.perf_counter()
    result = impl.run(ctx)
    wall = time.perf_counter() - t0
    after = {k: mean_nll(result.model, tok, v, ml) for k, v in evalsets.items()}
    report = {
        "method": method, "forget_split": forget_split, "model": str(model_path), "eta": result.eta,
        "wall_s": round(wall, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "nll_before": before, "nll_after": after,
        "info": {k: v for k, v in result.info.items() if k != "trials"}, "eta_trials": result.info.get("trials", []),
        "forget_ids_sha256": _ids_digest([q.id for q in forget]),
    }
    if out:
        save_model(result.model, tok, out, {"unlearn": report})
        report["out"] = str(out)
    return report


def _ids_digest(ids: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def write_json(path: str | Path, obj) -> Path:
    """Write JSON atomically (temp + rename)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path
