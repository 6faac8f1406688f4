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
    ev = evaluate_model(tiny_cfg, tmp_path / "m", "forget01")
    s = ev["summary"]
    assert s["drift_kl"] > 0
    assert s["gur"] > 0
    # where the time went comes back with the summary (bench/tofu.py keeps it per row)
    assert ev["timing"]["eval_s"] > 0 and {"usr", "rap", "drift", "forget_generation"} <= set(ev["timing"]["phase_s"])


def test_eval_bad_model_path_writes_nothing(tiny_cfg, tmp_path):
    from r2f.engine.models.io import ModelError

    with pytest.raises(ModelError, match="does not exist"):
        evaluate_model(tiny_cfg, tmp_path / "nope", "forget01", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gate_sanity_judges_the_retain_and_target_models(tiny_cfg, tiny_models, retain_eval):
    """gate.sanity: the retain and target models of a split, each judged as a candidate against the
    target (champion and base) with the configured gate. On the tiny models only the rules whose
    outcome does not depend on training quality are asserted: the retain model is its own forget-quality
    and privleak reference (1 and 0), and the target's utility is exactly its own threshold / ratio."""
    from r2f.governance.gate import RULES, sanity

    rows = {r["candidate"]: r for r in sanity(tiny_cfg, "forget01")}
    assert set(rows) == {"retain", "target"}
    for r in rows.values():
        assert {rule.name for rule in RULES} <= set(r) and all(f"{rule.name}_threshold" in r for rule in RULES)
        assert r["passed"] == (not r["failed"])
    retain, target = rows["retain"], rows["target"]
    assert retain["forget_quality"] == 1.0 and retain["privleak"] == 0.0
    assert "forget_quality" not in retain["failed"] and "privleak" not in retain["failed"]
    mu = reference_eval(tiny_cfg, "target", "forget01")["model_utility"]["value"]
    assert target["model_utility"] == mu
    assert target["model_utility_threshold"] == pytest.approx(tiny_cfg.gate.min_utility_ratio * mu)
    assert target["model_utility_vs_base_threshold"] == pytest.approx(tiny_cfg.gate.min_utility_vs_base * mu)
