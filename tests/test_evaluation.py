"""TOFU + paper evaluation on the tiny real models, through the stage functions the CLI uses."""

import json

import pytest

from r2f.engine.api import eval_dir, evaluate_model, reference_eval

REQUIRED = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
            "privleak", "extraction_strength", "exact_memorization", "mia_min_k", "usr", "gur", "rap", "drift_kl")


@pytest.fixture(scope="module")
def retain_eval(tiny_cfg, tiny_models):
    return reference_eval(tiny_cfg, "retain", "forget01")


def test_retain_reference_is_its_own_forget_quality_reference(tiny_cfg, retain_eval):
    assert retain_eval["forget_quality"]["value"] == pytest.approx(1.0)
    assert retain_eval["privleak"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert (eval_dir(tiny_cfg, "retain", "forget01") / "TOFU_EVAL.json").is_file()
    per_item = retain_eval["forget_truth_ratio"]["per_item"]
    assert len(per_item) == 40 and all(k.startswith("tofu-") for k in per_item)


def test_target_eval_summary_and_files(tiny_cfg, tiny_models, retain_eval, tmp_path):
    rep = evaluate_model(tiny_cfg, None, "forget01", tmp_path / "ev")
    s = rep["summary"]
    for k in REQUIRED:
        assert k in s and s[k] is not None, k
    # the target learned the forget authors, the retain model did not
    assert s["forget_Q_A_Prob"] > retain_eval["forget_Q_A_Prob"]["value"]
    assert s["forget_quality"] < 1.0 and s["gur"] == pytest.approx(1.0) and s["drift_kl"] == 0.0
    assert 0 <= s["usr"] <= 1 and 0 <= s["model_utility"] <= 1  # the tiny model barely learned
    saved = json.loads((tmp_path / "ev" / "TOFU_SUMMARY.json").read_text())
    assert saved == s
    full = (tmp_path / "ev" / "TOFU_EVAL.json").read_text()
    from r2f.engine.data import load_tofu

    q = tiny_models and load_tofu(tiny_cfg.data.tofu_dir).split("forget01")[0]
    assert q.question not in full and q.answer not in full  # ids and numbers only


def test_unlearned_model_eval_has_drift_and_gur(tiny_cfg, tiny_models, retain_eval, tmp_path):
    from r2f.engine.api import unlearn_model

    unlearn_model(tiny_cfg, "fullgrad", out=tmp_path / "m")
    s = evaluate_model(tiny_cfg, tmp_path / "m", "forget01")["summary"]
    assert s["drift_kl"] > 0
    assert s["gur"] > 0


def test_eval_bad_model_path_writes_nothing(tiny_cfg, tmp_path):
    from r2f.engine.models.io import ModelError

    with pytest.raises(ModelError, match="does not exist"):
        evaluate_model(tiny_cfg, tmp_path / "nope", "forget01", tmp_path / "out")
    assert not (tmp_path / "out").exists()
