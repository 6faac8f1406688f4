"""train -> decode -> unlearn on the tiny configuration, through the engine functions the CLI uses."""

import json

from r2f.engine.api import decoder_dir, ensure_decoder, unlearn_model


def test_train_decode_unlearn(tiny_cfg, tiny_models, tmp_path):
    rep_models = tiny_models.report()
    assert set(rep_models["roles"]) == {"target", "proxy", "retain-forget01"}
    # the retain model never saw the forget authors: it must be worse on them than the target
    roles = rep_models["roles"]
    assert roles["retain-forget01"]["forget_nll"]["forget01"] > roles["target"]["forget_nll"]["forget01"]
    dec = ensure_decoder(tiny_cfg)
    assert (decoder_dir(tiny_cfg) / "decoder.safetensors").is_file()
    scores = dec["weighting_scores"]
    chosen = "uniform" if dec["weighting"] is None else "alpha={},gamma={}".format(*dec["weighting"])
    assert scores[chosen] == max(scores.values())
    # with the activation basis nothing is trained (pairs = steps = 0) and the decode is the rank-r
    # projection: its held-out proxy cosine must be well above a random direction's (~0)
    assert tiny_cfg.lora.init == "activation" and dec["pairs"] == 0 and dec["steps"] == 0
    assert 0.3 < dec["val_analytic"]["cosine_mean"] <= 1
    rep = unlearn_model(tiny_cfg, "r2f", out=tmp_path / "unlearned")
    assert rep["nll_after"]["forget"] > rep["nll_before"]["forget"]
    assert rep["eta"] in tiny_cfg.unlearn.eta.grid
    # the method's own peak (counted from its start on Linux), never above the process's
    assert rep["peak_scope"] == "method" and 0 < rep["peak_rss_mb"] <= rep["process_peak_rss_mb"]
    meta = json.loads((tmp_path / "unlearned" / "r2f_model.json").read_text())
    assert meta["unlearn"]["method"] == "r2f"
    # the report names the decode really applied, not the configured kind, and the settings with no effect
    assert rep["decoder"]["configured"] == "learned" and rep["decoder"]["used"] == "analytic"
    assert rep["decoder"]["trained_weights"] is False and rep["info"]["decoder"]["used"] == "analytic"
    assert "decoder.steps" in rep["unused_settings"]
    # no forget text in the report: only ids' digest
    text = json.dumps(rep)
    assert "Question" not in text and rep["forget_ids_sha256"]
