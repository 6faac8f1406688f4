"""The cost bench's models: the shapes it measures and how each is built or converted (bench/cost.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real import REAL  # noqa: E402  bench/real.py's settings on SmolLM2 (eta grid, key-word loss, NPO lr)

MODELS = ("tiny", "smollm2-135m", "random-360m", "random-1.7b", "random-270m-262k")
# SmolLM2-360M's and -1.7B's published shapes (config.json of HuggingFaceTB/SmolLM2-360M / -1.7B) with
# random weights: cost depends on the shapes, not on what the weights know. No calibration on them
# (a fixed eta): their forward passes would cost minutes and their eta means nothing.
SHAPES = {
    "random-360m": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                    "num_attention_heads": 15, "num_key_value_heads": 5},
    "random-1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                    "num_attention_heads": 32, "num_key_value_heads": 32},
    # another family's shape (Gemma-3-270M's widths: 270 M parameters, 168 M of them the tied 262 k x 640
    # embedding) in SmolLM2's llama layout: the vocabulary, not the body, sets its memory (issue #21 item 4)
    "random-270m-262k": {"hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
                         "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                         "vocab_size": 262144, "tie_word_embeddings": True},
}
# shapes whose deletion is measured whole, calibration included (the memory of scoring and calibration
# is what grows with the vocabulary), on a forget01-sized request, against the model's own logits as
# the same-run baseline (own_logits: the path before r2f.engine.models.head, kept as its fallback)
CALIBRATED = {"random-270m-262k"}
CALIBRATED_ITEMS = 40
FIXED_ETA = 1e-4


def model_path(cfg, key: str) -> Path:
    """The model folder for ``key`` (built or converted once, cached under the state dir)."""
    if key == "tiny":
        from r2f.engine.zoo import ensure_models

        return ensure_models(cfg, log=lambda _m: None).path("target")
    from r2f.engine.pretrained import materialize

    smol = materialize(cfg.state_dir, "smollm2-135m-instruct")
    if key == "smollm2-135m":
        return smol
    if key not in SHAPES:
        raise ValueError(f"unknown model '{key}'; expected one of {MODELS}")
    out = Path(cfg.state_dir) / "bench-cost" / key
    if not (out / "r2f_model.json").exists():
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from r2f.engine.models.io import load_model, save_model

        _, tok = load_model(smol)
        conf = AutoConfig.from_pretrained(smol, local_files_only=True)
        for k, v in SHAPES[key].items():
            setattr(conf, k, v)
        if "head_dim" not in SHAPES[key]:
            conf.head_dim = conf.hidden_size // conf.num_attention_heads
        torch.manual_seed(0)
        save_model(AutoModelForCausalLM.from_config(conf), tok, out,
                   {"role": f"cost benchmark only: random weights in the shape of {key}", **SHAPES[key]})
    return out


def extra_for(key: str, views: int, eta: float | None, micro_batch: int | None = None) -> dict:
    extra = {"paraphrase.views": views, "unlearn.eta.calibration_items": 16}
    if micro_batch:
        extra["unlearn.micro_batch"] = micro_batch
    if key != "tiny":
        extra.update(REAL)
    if key in SHAPES and key not in CALIBRATED:
        eta = FIXED_ETA
    if eta is not None:
        extra["unlearn.eta.value"] = eta
    return extra
