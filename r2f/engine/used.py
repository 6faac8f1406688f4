"""What an unlearning run really used: the decoder that turned its LoRA gradients into full-weight
directions (configured and used, trained weights or not, where its token weighting came from), and
the settings that had no effect in its configuration. The unlearning report, MLflow and the registry
name these, so that nobody who audits a deletion is told that a part played a role it did not play.
"""

from __future__ import annotations

from r2f.engine.decoder import gram_weighting

# r2f_paper, the paper's configuration (r2f.engine.unlearn.r2f_paper): section -> the settings it sets
PAPER = {"lora": {"init": "peft", "weighting": "uniform"}, "decoder": {"kind": "learned"}}

_TRAINING = ("hidden", "pairs", "steps", "lr", "cosine_weight", "seed")  # the learned decoder's MLP training
_WEIGHT_FIT = ("weight_alphas", "weight_gammas", "weight_fit_prompts")  # the Gram token-weighting fit


def paper_config(cfg):
    """``cfg`` with the paper's LoRA init and decoder (:data:`PAPER`); everything else unchanged."""
    return cfg.model_copy(update={sec: getattr(cfg, sec).model_copy(update=vals) for sec, vals in PAPER.items()})


def effective_decoder(cfg, decoder):
    """The decoder R2F actually runs: with ``lora.init`` activation (A = the Gram's top eigenvectors)
    the prior and learned decoders decode exactly to the projection (docs/method.md), so the analytic
    decoder is used directly and an eigendecomposition per module and item is skipped."""
    if cfg.lora.init == "activation" and (decoder == "prior" or not isinstance(decoder, str)):
        return "analytic"
    return decoder


def has_trained_weights(meta: dict) -> bool:
    """Whether a decoder's metadata (decoder.json, or api.ensure_decoder's report) says its weights
    were trained: training pairs and steps both > 0."""
    return bool(meta.get("pairs")) and bool(meta.get("steps"))


def decoder_used(cfg, decoder) -> dict:
    """The decoder a decoded method runs with ``decoder`` (what :func:`r2f.engine.api.unlearn_model`
    loaded: a name, or a LearnedDecoder). ``used`` is the name of the decode really applied:
    with ``lora.init: activation`` a learned or prior decoder decodes exactly to the rank-r projection,
    so ``analytic`` runs (:func:`effective_decoder`). ``trained_weights`` is true only
    when a learned decoder with trained weights (pairs and steps > 0) decodes."""
    eff = effective_decoder(cfg, decoder)
    meta = getattr(decoder, "meta", None) or {}
    name = eff if isinstance(eff, str) else "learned"
    trained = name == "learned" and has_trained_weights(meta)
    weighting = gram_weighting(cfg, decoder) if cfg.lora.init == "activation" else None
    if cfg.lora.init != "activation":
        source = "none (peft's random A: no activation Gram)"
    elif weighting:
        source = (f"fitted on the proxy ({meta.get('proxy_layers')} layers x {meta.get('proxy_hidden')}, "
                  f"{cfg.decoder.weight_fit_prompts} prompts)")
    else:
        source = "uniform"
    return {"configured": cfg.decoder.kind, "used": name, "trained_weights": trained,
            "pairs": int(meta.get("pairs") or 0) if trained else 0,
            "steps": int(meta.get("steps") or 0) if trained else 0,
            "lora_init": cfg.lora.init, "weighting": list(weighting) if weighting else None,
            "weighting_source": source}
