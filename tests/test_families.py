"""Targets of other families than the llama-shaped toy world: tiny random Qwen2, Phi and GPT-NeoX
models built from transformers configs. R2F runs on a family whose layers carry the configured
names; a family with other names is refused at once, naming the layers it has, and runs once
``lora.target_modules`` names them."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from r2f.engine.decoder import DecoderError
from r2f.engine.models.io import ModelError

FAMILIES = {
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2}),
    "phi": ("PhiConfig", {}),
    "gpt_neox": ("GPTNeoXConfig", {}),
}


def _save_tiny(family: str, tok_dir, out):
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    name, extra = FAMILIES[family]
    config = getattr(transformers, name)(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=128,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                         bos_token_id=tok.bos_token_id, tie_word_embeddings=False, **extra)
    import torch

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("family", ["qwen2", "phi"])
def test_r2f_runs_on_another_family(family, tiny_cfg, tiny_models, tmp_path):
    from r2f.engine.api import unlearn_model

    folder = _save_tiny(family, tiny_models.path("target"), tmp_path / family)
    lines: list[str] = []
    rep = unlearn_model(tiny_cfg, "r2f", model_path=folder, out=tmp_path / "out", log=lines.append)
    assert rep["eta"] in tiny_cfg.unlearn.eta.grid and (tmp_path / "out" / "config.json").is_file()
    assert rep["nll_after"]["forget"] > rep["nll_before"]["forget"]
    assert rep["decoder"]["used"] == "analytic"
    if family == "phi":  # Phi has q/k/v_proj but dense/fc1/fc2 instead of o/gate/up/down_proj
        assert any("not in this phi model" in x and "gate_proj" in x for x in lines)


def test_another_familys_layer_names_are_refused_at_once(tiny_cfg, tiny_models, tmp_path):
    from r2f.engine.api import unlearn_model

    folder = _save_tiny("gpt_neox", tiny_models.path("target"), tmp_path / "neox")
    lines: list[str] = []
    with pytest.raises(ModelError, match="query_key_value") as e:
        unlearn_model(tiny_cfg, "r2f", model_path=folder, out=tmp_path / "out", log=lines.append)
    assert "lora.target_modules" in str(e.value) and "gpt_neox" in str(e.value)
    assert not lines and not (tmp_path / "out").exists()  # refused before any work or output
    # named, its layers are adapted; the llama proxy has none of them, so the proxy-fitted token weighting
    # is refused with what to do, and the analytic decode (uniform weighting) runs
    kinds = {"lora.target_modules": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]}
    with pytest.raises(DecoderError, match="decoder.kind analytic"):
        unlearn_model(tiny_config(tiny_cfg.state_dir, **kinds), "r2f", model_path=folder, out=tmp_path / "out")
    cfg = tiny_config(tiny_cfg.state_dir, **kinds, **{"decoder.kind": "analytic"})
    rep = unlearn_model(cfg, "r2f", model_path=folder, out=tmp_path / "out")
    assert rep["eta"] in cfg.unlearn.eta.grid and rep["nll_after"]["forget"] > rep["nll_before"]["forget"]
    assert "lora.weighting" in rep["unused_settings"]
