"""The engine's entry points as pure functions of the configuration (the CLI, the pipeline stages of
:mod:`r2f.governance.pipeline` and the benches call these). Each returns a small JSON-able report and
writes its artifacts atomically."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from r2f.atomic import write_json
from r2f.config import Config
from r2f.engine.data import load_tofu
from r2f.engine.decoder import DecoderError, LearnedDecoder, check_family
from r2f.engine.evaluation import EvalError, add_gur, evaluate, summarize, to_json, write
from r2f.engine.fidelity import fit_decoder
from r2f.engine.grads import target_modules
from r2f.engine.models.io import ModelError, load_model, save_model
from r2f.engine.models.memory import peak_rss_mb, reset_peak_rss
from r2f.engine.models.nll import mean_nll
from r2f.engine.unlearn import UnlearnContext, get_method, method_config
from r2f.engine.unlearn.unused import unused_settings
from r2f.engine.used import decoder_used
from r2f.engine.zoo import ensure_models, models_dir

Log = Callable[[str], None]


def _noop(_msg: str) -> None:
    pass


def train_zoo(cfg: Config, log: Log = _noop, progress=None) -> dict:
    """Tokenizer, target, proxy and the retain model of ``data.forget_split`` (cached by config hash)."""
    models = ensure_models(cfg, log, progress, splits=(cfg.data.forget_split,))
    return {"models_dir": str(models.root), **models.report()}


def decoder_dir(cfg: Config) -> Path:
    # the decoder depends on the models (their cache key covers the data they learned), not on
    # which forget split a later request unlearns; the pipeline's train_decoder stage declares every
    # key read here (tests/test_pipeline.py checks)
    key = cfg.section_hash("lora", "paraphrase", "decoder")
    loss = "-key" if cfg.unlearn.key_only else ""
    return Path(cfg.state_dir) / "decoders" / f"{models_dir(cfg).name}-{key}-{cfg.unlearn.objective}{loss}"


def decoder_train_items(cfg: Config, tofu):
    """Proxy prompts for decoder training: retain authors only, never forget or evaluation items
    (the general-knowledge sets the models learn are evaluation sets too).

    Authors ``20..retain_authors-1`` first (not in retain_perturbed), then the rest if needed.
    """
    retain = tofu.authors(range(cfg.data.retain_authors))
    return retain[400:] + retain[:400]


def ensure_decoder(cfg: Config, log: Log = _noop, progress=None, force: bool = False) -> dict:
    """Fit the learned decoder on the embedded proxy (:func:`r2f.engine.fidelity.fit_decoder`); cached by
    configuration hash."""
    out = decoder_dir(cfg)
    if (out / "decoder.json").is_file() and not force:
        return {"decoder_dir": str(out), **LearnedDecoder.load(out).meta}
    models = ensure_models(cfg, log)
    model, tok = load_model(models.path("proxy"))
    try:
        target_modules(model, cfg.lora.target_modules)
    except ValueError as e:
        raise DecoderError(f"the proxy ({model.config.model_type}) has none of lora.target_modules "
                           f"{list(cfg.lora.target_modules)}, and the learned decoder (its token weighting) is fitted "
                           "on the proxy: for a target of another family use decoder.kind analytic (uniform "
                           "weighting), or a proxy of the target's family") from e
    items = decoder_train_items(cfg, load_tofu(cfg.data.tofu_dir))
    dec = fit_decoder(cfg, model, tok, items, log, progress)
    dec.meta["proxy"] = str(models.path("proxy"))
    dec.meta["model_type"] = model.config.model_type  # the family it may decode for (decoder.check_family)
    dec.save(out)
    return {"decoder_dir": str(out), **dec.meta}


def unlearn_model(cfg: Config, method: str | None = None, forget_split: str | None = None,
            model_path: str | Path | None = None, out: str | Path | None = None,
            log: Log = _noop, progress=None, forget_items: list | None = None, mapper=None,
            nll_report: bool = True, calib_items: list | None = None) -> dict:
    """Apply one unlearning method to the target (default: the embedded target) and report the
    mean answer-token NLL on forget, retain and holdout before and after (``nll_report`` False: not
    measured, None in the report; for callers that evaluate the model in full anyway, like the
    TOFU bench). ``forget_items``: the rows of a deletion request (default: the whole
    ``forget_split``, which must contain them).
    ``mapper``: where R2F's gradient shards run (:mod:`r2f.engine.parallel`; None: in this process).
    ``calib_items``: the retain items for calibration and retain terms (default: the retain authors
    outside retain_perturbed, :func:`calibration_items`); the development bench passes a subset so its
    dev request and neighbours stay out of every fit."""

    method = method or cfg.unlearn.method
    forget_split = forget_split or cfg.data.forget_split
    impl = get_method(method)
    unused = unused_settings(cfg, method)  # of the configuration as given (a named mode overrides some)
    cfg = method_config(cfg, method)  # r2f_paper: the paper's LoRA init and decoder
    tofu = load_tofu(cfg.data.tofu_dir)
    adapted = getattr(impl, "adapted_modules", False)
    if model_path:  # fail fast on a bad path or a model the method cannot adapt, before any training
        model, tok = load_model(model_path)
        if adapted:
            _check_target_modules(model, cfg.lora.target_modules, model_path, log)
    models = ensure_models(cfg, log, splits=(forget_split,))
    if not model_path:
        model_path = models.path("target")
        model, tok = load_model(model_path)
        if adapted:
            _check_target_modules(model, cfg.lora.target_modules, model_path, log)
    decoder = used = None
    if getattr(impl, "uses_decoder", False):
        decoder = cfg.decoder.kind
        if decoder == "learned":
            decoder = LearnedDecoder.load(ensure_decoder(cfg, log, progress)["decoder_dir"])
        used = decoder_used(cfg, decoder)
        if used["trained_weights"]:
            check_family(decoder, model)  # before any gradient work: trained weights decode one family only
        log(f"{method}: decoder {used['used']}" + (" (trained weights)" if used["trained_weights"] else
                                                   f" (configured: {used['configured']}; no trained weights)"))
    if unused:
        log(f"{method}: settings with no effect in this configuration: {', '.join(unused)}")
    forget = list(forget_items) if forget_items else tofu.split(forget_split)
    calib = list(calib_items) if calib_items is not None else calibration_items(cfg, tofu)
    # the report's before/after NLLs: the request, and the retain / holdout sets under the evaluation's
    # item cap (eval.max_items: a pretrained world scores 100 of each, not 400)
    cap = cfg.eval.max_items
    evalsets = {"forget": forget, "retain": tofu.split("retain_perturbed")[:cap], "holdout": tofu.split("holdout10")[:cap]}
    ml = cfg.models.max_len
    before = _scored(model, tok, evalsets, ml, progress, "answer NLL before") if nll_report else None
    ctx = UnlearnContext(model, tok, cfg, forget, calib, tofu.idontknow(), decoder,
                         models.path("retain", forget_split), log, progress, mapper,
                         unseen=unseen_items(cfg, tofu))
    log(f"{method}: unlearning {len(forget)} forget items")
    # the method's own peak: VmHWM restarts here (model and libraries loaded, included), so the before
    # scoring and the set-up do not count; the process's peak so far is kept beside it
    setup_peak = peak_rss_mb()
    fresh_peak = reset_peak_rss()
    t0 = time.perf_counter()
    result = impl.run(ctx)
    wall = time.perf_counter() - t0
    method_peak = peak_rss_mb()
    log(f"{method}: done in {wall:.1f} s (eta {result.eta})")
    after = _scored(result.model, tok, evalsets, ml, progress, "answer NLL after") if nll_report else None
    report = {
        "method": method, "forget_split": forget_split, "model": str(model_path), "eta": result.eta,
        "wall_s": round(wall, 2), "peak_rss_mb": method_peak, "peak_scope": "method" if fresh_peak else "process",
        "process_peak_rss_mb": max(setup_peak, method_peak),
        "nll_before": before, "nll_after": after,
        "nll_items": {k: len(v) for k, v in evalsets.items()} if nll_report else None,
        "info": {k: v for k, v in result.info.items() if k != "trials"}, "eta_trials": result.info.get("trials", []),
        "forget_ids_sha256": _ids_digest([q.id for q in forget]),
        "decoder": used, "unused_settings": unused,
    }
    if out:
        save_model(result.model, tok, out, {"unlearn": report})
        report["out"] = str(out)
    return report


def calibration_items(cfg: Config, tofu) -> list:
    """The retain items methods calibrate on: the world's retain authors outside retain_perturbed
    (authors 20..retain_authors-1; retain_perturbed itself when there are none)."""
    return tofu.authors(range(20, cfg.data.retain_authors)) or tofu.split("retain_perturbed")


def unseen_authors(cfg: Config) -> range:
    """TOFU authors no model of this world trained on and no evaluation set holds: after the retain
    authors, before the world's forget authors (30..179 for a forget10 or a forget05 world with 30
    retain authors; holdout and retain_perturbed are other authors)."""
    from r2f.engine.data import Tofu

    return range(cfg.data.retain_authors, Tofu.forget_authors("forget10").start)  # never "unseen"


def unseen_items(cfg: Config, tofu) -> list:
    """The first ``unlearn.r2f_pc.level_items`` QA of :func:`unseen_authors`: the reference of
    r2f_pc's forget level (answers the model never learned)."""
    n = cfg.unlearn.r2f_pc.level_items
    return tofu.authors(unseen_authors(cfg))[:n]


def _check_target_modules(model, kinds, source, log: Log) -> None:
    """Refuse a model none of whose linear layers is one of ``lora.target_modules`` (another family's
    names: GPT-NeoX's ``query_key_value``, Phi's ``fc1``), naming the layers it has, before any
    expensive work; log the kinds it lacks when some match."""
    import torch

    present = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}
    missing = [k for k in kinds if k not in present]
    family = getattr(model.config, "model_type", "?")
    if len(missing) == len(kinds):
        raise ModelError(f"{source}: none of lora.target_modules {list(kinds)} is a linear layer of this {family} "
                         f"model; its linear layers are {sorted(present)}: set lora.target_modules to those to adapt "
                         "(e.g. --set 'lora.target_modules=[...]')")
    if missing:
        log(f"lora.target_modules not in this {family} model (not adapted): {', '.join(missing)}")


def _scored(model, tok, evalsets: dict, max_len: int, progress, label: str) -> dict:
    """Mean answer NLL per set, with a progress tick per set."""
    tick = progress(label, len(evalsets)) if progress else (lambda: None)
    out = {}
    for k, v in evalsets.items():
        out[k] = mean_nll(model, tok, v, max_len)
        tick()
    return out


def _ids_digest(ids: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def eval_dir(cfg: Config, role: str, split: str) -> Path:
    """Cache folder of a reference evaluation (embedded ``target`` or ``retain`` model)."""
    # eval.precision is named in the folder when not fp32, and left out of the hash: the caches of
    # evaluations made before it existed (all fp32) stay valid
    key = (cfg.section_hash("eval", "paraphrase", exclude=("eval.precision",))
           + ("" if cfg.eval.precision == "fp32" else f"-{cfg.eval.precision}"))
    return Path(cfg.state_dir) / "evals" / models_dir(cfg).name / f"{role}-{split}-{key}-s{cfg.unlearn.seed}"


def reference_eval(cfg: Config, role: str, split: str, log: Log = _noop, progress=None, mapper=None) -> dict:
    """The ``TOFU_EVAL`` of the embedded retain (forget-quality/privleak reference) or target (GUR
    and drift reference) model, computed when missing and cached; never skipped."""
    path = eval_dir(cfg, role, split) / "TOFU_EVAL.json"
    if path.is_file():
        return json.loads(path.read_text())
    try:
        models = ensure_models(cfg, log, splits=(split,))
        retain = None if role == "retain" else reference_eval(cfg, "retain", split, log, progress, mapper)
        if path.is_file():  # the retain evaluation produced this one on its way (GUR needs it)
            return json.loads(path.read_text())
        log(f"evaluating the reference {role} model on {split} (cached afterwards)")
        model, tok = load_model(models.path(role, split))
        original = load_model(models.path("target"))[0] if role == "retain" else None
        res = evaluate(model, tok, cfg, split, retain_eval=retain, original=original, progress=progress,
                       mapper=mapper, model_path=models.path(role, split), original_path=models.path("target"))
        target = None
        if role == "retain":  # the target's evaluation needs this one first (forget quality, privleak)
            write(res, path.parent)
            target = reference_eval(cfg, "target", split, log, progress, mapper)
        add_gur(res, target)
    except (OSError, ValueError) as exc:
        raise EvalError(f"cannot produce the {role} model's reference evaluation for {split}: {exc}") from exc
    write(res, path.parent)
    return to_json(res)[0]


def evaluate_model(cfg: Config, model_path: str | Path | None = None, split: str | None = None,
                   out: str | Path | None = None, log: Log = _noop, progress=None,
                   forget_ids: list[str] | None = None, mapper=None) -> dict:
    """TOFU + paper metrics of a model (default: the embedded target) on a forget split; writes
    ``TOFU_EVAL.json`` and ``TOFU_SUMMARY.json`` to ``out`` and returns the summary, with where the
    evaluation's time went (``timing``: ``eval_s`` and the per-phase ``phase_s`` of ``_meta``).
    ``forget_ids``: the forget metrics on these rows of the split only (a deletion request's).
    ``mapper``: where the evaluation shards run (:mod:`r2f.engine.parallel`; None: in this process)."""
    split = split or cfg.data.forget_split
    if model_path is None:
        if forget_ids is not None:
            raise ValueError("forget_ids: evaluate a model path (the target's reference is the whole split)")
        model_path = ensure_models(cfg, log, splits=(split,)).path("target")
        full = reference_eval(cfg, "target", split, log, progress, mapper)
    else:
        model, tok = load_model(model_path)  # fail fast on a bad path
        retain = reference_eval(cfg, "retain", split, log, progress, mapper)
        target = reference_eval(cfg, "target", split, log, progress, mapper)
        original_path = ensure_models(cfg, log).path("target")
        original = load_model(original_path)[0]
        res = evaluate(model, tok, cfg, split, retain_eval=retain, original=original, progress=progress,
                       forget_ids=forget_ids, mapper=mapper, model_path=model_path, original_path=original_path)
        full = to_json(add_gur(res, target))[0]
    summary = summarize(full)
    if out:
        write_json(Path(out) / "TOFU_EVAL.json", full)
        write_json(Path(out) / "TOFU_SUMMARY.json", summary)
    extra = (full.get("_meta") or {}).get("extra") or {}
    return {"model": str(model_path), "split": split, "summary": summary, "out": str(out) if out else None,
            "timing": {"eval_s": extra.get("eval_s"), "phase_s": extra.get("phase_s")}}
