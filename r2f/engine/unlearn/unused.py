"""The settings of a method's configuration that change nothing in a run (``unused_settings``), named
in the unlearning report, MLflow and the registry beside the decoder really used
(:mod:`r2f.engine.used`). Here, beside the method registry, because it asks each method what it
decodes with and what configuration it runs under."""

from __future__ import annotations

from r2f.engine.unlearn.base import get_method, method_config
from r2f.engine.used import _TRAINING, _WEIGHT_FIT


def _changed(before: dict, after: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose value differs between two nested dicts (of the same schema)."""
    out = []
    for k, v in before.items():
        w = after.get(k)
        if isinstance(v, dict) and isinstance(w, dict):
            out += _changed(v, w, f"{prefix}{k}.")
        elif v != w:
            out.append(f"{prefix}{k}")
    return list(dict.fromkeys(out))


def unused_settings(cfg, method: str) -> list[str]:
    """Settings of ``method``'s configuration that change nothing in this run, as dotted keys.
    Sections of other methods are not listed (each method reads only its own section); what is listed
    is a setting one would expect to matter here and that does not.

    A method with a ``configure`` (a named mode such as ``r2f_paper``) runs under a configuration of
    its own: every setting it overrides is listed (what the file says there changes nothing), and the
    rest is judged under the configuration it runs under."""
    if not getattr(get_method(method), "uses_decoder", False):
        return []
    run = method_config(cfg, method)
    out = _changed(cfg.model_dump(), run.model_dump())
    cfg = run
    dc, lc = cfg.decoder, cfg.lora
    fits = dc.kind == "learned"  # only a learned decoder is fitted on the proxy (api.ensure_decoder)
    trains = fits and lc.init != "activation"  # the MLP is trained only with peft's random A
    weight_fit = fits and lc.init == "activation" and lc.weighting == "loss"
    out += [f"decoder.{k}" for k in _TRAINING if not trains]
    out += [f"decoder.{k}" for k in _WEIGHT_FIT if not weight_fit]
    if lc.weighting == "loss" and not weight_fit:
        out.append("lora.weighting")  # nothing fits the weighting: the Gram is uniform
    if method == "r2f_pc":
        pc = cfg.unlearn.r2f_pc
        if pc.preconditioner != "nullspace":
            out.append("unlearn.r2f_pc.energy")
        elif pc.basis != "contrast":
            out.append("unlearn.r2f_pc.damping")
        if not pc.retain_projection:
            out.append("unlearn.r2f_pc.projection_mu")
        if pc.calibration_items is not None:  # r2f_pc sizes its steps on its own count
            out.append("unlearn.eta.calibration_items")
        if cfg.unlearn.eta.value is not None:  # a fixed step: no calibration, so no level to stop at
            out += ["unlearn.r2f_pc.forget_level", "unlearn.r2f_pc.retain_prob_drop"]
        if pc.forget_level is None or cfg.unlearn.eta.value is not None:
            out += ["unlearn.r2f_pc.level_scale", "unlearn.r2f_pc.level_items"]
    return list(dict.fromkeys(out))
