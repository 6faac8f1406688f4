"""Honest lineage of the decoder: what a decoded method really used, which settings had no effect,
and a decoder registered in MLflow only when it has trained weights (real sqlite store)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import tiny_config

from r2f.engine.decoder import LearnedDecoder
from r2f.engine.unlearn.unused import unused_settings
from r2f.engine.used import decoder_used


def _cfg(tmp_path, **over):
    return tiny_config(tmp_path / "state", **over)


def _learned(pairs=0, steps=0, weighting=(0.1, 1.0)) -> LearnedDecoder:
    dec = LearnedDecoder(16, 0)
    dec.meta = {"kind": "learned", "pairs": pairs, "steps": steps, "weighting": list(weighting) if weighting else None,
                "proxy_layers": 2, "proxy_hidden": 32, "model_type": "llama"}
    return dec


def test_activation_init_uses_the_projection_with_the_proxy_weighting(tmp_path):
    cfg = _cfg(tmp_path, **{"lora.init": "activation", "lora.weighting": "loss", "decoder.kind": "learned"})
    used = decoder_used(cfg, _learned())
    assert used["configured"] == "learned" and used["used"] == "analytic" and used["trained_weights"] is False
    assert used["pairs"] == 0 and used["steps"] == 0 and used["weighting"] == [0.1, 1.0]
    assert used["weighting_source"].startswith("fitted on the proxy")
    unused = unused_settings(cfg, "r2f")
    # the MLP is never trained with the activation basis; the weighting grid is used
    assert {"decoder.hidden", "decoder.pairs", "decoder.steps", "decoder.lr"} <= set(unused)
    assert not {"decoder.weight_alphas", "lora.weighting"} & set(unused)


def test_analytic_kind_makes_the_loss_weighting_unused(tmp_path):
    cfg = _cfg(tmp_path, **{"lora.init": "activation", "lora.weighting": "loss", "decoder.kind": "analytic"})
    used = decoder_used(cfg, "analytic")
    assert used["used"] == "analytic" and used["weighting"] is None and used["weighting_source"] == "uniform"
    unused = set(unused_settings(cfg, "r2f"))
    assert {"lora.weighting", "decoder.weight_alphas", "decoder.pairs"} <= unused


def test_peft_init_with_a_trained_decoder(tmp_path):
    cfg = _cfg(tmp_path, **{"lora.init": "peft", "decoder.kind": "learned"})
    used = decoder_used(cfg, _learned(pairs=64, steps=40))
    assert used["used"] == "learned" and used["trained_weights"] is True and (used["pairs"], used["steps"]) == (64, 40)
    assert used["weighting"] is None
    unused = set(unused_settings(cfg, "r2f"))
    assert "decoder.pairs" not in unused and "decoder.weight_gammas" in unused
    # an untrained learned decoder is never called trained
    assert decoder_used(cfg, _learned(pairs=0, steps=0))["trained_weights"] is False


def test_unused_settings_of_other_methods_and_r2f_pc(tmp_path):
    cfg = _cfg(tmp_path)
    assert unused_settings(cfg, "npo") == []
    pc = cfg.unlearn.r2f_pc
    assert pc.preconditioner == "kfac" and not pc.retain_projection
    unused = set(unused_settings(cfg, "r2f_pc"))
    assert {"unlearn.r2f_pc.energy", "unlearn.r2f_pc.projection_mu"} <= unused
    cfg = _cfg(tmp_path, **{"unlearn.r2f_pc.preconditioner": "nullspace", "unlearn.r2f_pc.retain_projection": 4})
    unused = set(unused_settings(cfg, "r2f_pc"))
    assert "unlearn.r2f_pc.damping" in unused and "unlearn.r2f_pc.energy" not in unused
    assert "unlearn.r2f_pc.projection_mu" not in unused


def test_a_named_mode_lists_what_it_overrides_and_is_judged_under_its_own_config(tmp_path):
    """r2f_paper sets lora.init, lora.weighting and decoder.kind itself (its configure): the file's
    values there are unused; the MLP training settings, used in its mode, are not."""
    cfg = _cfg(tmp_path, **{"lora.init": "activation", "lora.weighting": "loss", "decoder.kind": "learned"})
    unused = unused_settings(cfg, "r2f_paper")
    assert {"lora.init", "lora.weighting"} <= set(unused) and "decoder.kind" not in unused
    assert not {"decoder.steps", "decoder.pairs"} & set(unused)
    assert {"decoder.weight_alphas", "decoder.weight_gammas"} <= set(unused)  # no Gram with peft's random A
    assert len(unused) == len(set(unused))
    same = _cfg(tmp_path, **{"lora.init": "peft", "lora.weighting": "uniform", "decoder.kind": "learned"})
    assert not {"lora.init", "lora.weighting", "decoder.kind"} & set(unused_settings(same, "r2f_paper"))


def test_decoder_registered_only_with_trained_weights(tmp_path):
    from r2f.governance.lineage import log_decoder_run
    from r2f.governance.tracking_setup import make_tracker

    cfg = _cfg(tmp_path)
    tr = make_tracker(cfg)
    name = cfg.tracking.decoder_model_name
    for key, (pairs, steps) in {"untrained0001": (0, 0), "trained00002": (64, 40)}.items():
        dec = _learned(pairs, steps)
        dec.save(tmp_path / key)
        rep = {"decoder_dir": str(tmp_path / key), **dec.meta, "a_init": "peft"}
        log_decoder_run(tr, cfg, rep, tmp_path / key, lambda _m: None)
    untrained = tr.find_run(cfg.tracking.decoder_experiment, {"decoder_hash": "untrained0001"})
    trained = tr.find_run(cfg.tracking.decoder_experiment, {"decoder_hash": "trained00002"})
    assert untrained and trained
    assert tr.version_of_run(name, untrained) is None and tr.version_of_run(name, trained) == 1
    tags = tr.run(untrained).data.tags
    assert tags["registered"] == "false" and tags["trained_weights"] == "false"
    assert "No trained weights" in tags["mlflow.note.content"]
    assert tr.run(trained).data.tags["registered"] == "true"
    # the untrained run still keeps what was fitted (decoder.json) as an artifact
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tr.uri)
    arts = [a.path for a in client.list_artifacts(untrained, "decoder")]
    assert arts == ["decoder/decoder.json"]
    local = client.download_artifacts(untrained, "decoder/decoder.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text())["steps"] == 0
