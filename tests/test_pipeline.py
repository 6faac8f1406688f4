"""One pipeline definition, two runners: dvc.yaml, the stage list, the gate, deletion requests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from r2f.config import GateConfig

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_is_generated_from_the_stage_list():
    from r2f.pipeline import FUNCS, NAMES, STAGES, dvc_yaml

    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == dvc_yaml(), "dvc.yaml is stale: run `r2f stage --dvc-yaml > dvc.yaml`"
    stages = yaml.safe_load(committed)["stages"]
    assert list(stages) == list(NAMES) == list(FUNCS)
    for s in STAGES:
        assert stages[s.name]["cmd"] == f"r2f stage {s.name}"
        assert stages[s.name]["outs"] == list(s.outs)
    # every dep is either data, the request file, or an out of an earlier stage (a DAG in order)
    seen = set()
    for s in STAGES:
        for d in s.deps:
            assert d in seen or not d.startswith("${state_dir}"), f"{s.name} depends on {d} before it is made"
        seen.update(s.outs)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for s in STAGES:
        for p in s.params:
            assert p in params, f"stage {s.name} reads params section {p} missing from params.yaml"


def test_flow_runs_the_same_stage_functions():
    """The Prefect flow iterates r2f.pipeline.NAMES and calls run_stage (no stage of its own)."""
    import flows.unlearning as fl

    src = Path(fl.__file__).read_text()
    assert "run_stage(" in src and "NAMES" in src
    from r2f.pipeline import run_stage

    assert fl.unlearning_flow.fn.__name__ == "unlearning_flow"
    assert callable(run_stage)


def test_gate_rules_are_independent_and_missing_values_fail():
    from r2f.gate import decide

    cfg = GateConfig(min_forget_quality=0.05, min_utility_ratio=0.95, max_abs_privleak=50, min_usr=0.5)
    good = {"forget_quality": 0.2, "model_utility": 0.5, "privleak": -10.0, "usr": 0.9}
    d = decide(good, 0.5, cfg)
    assert d.passed and not d.reasons and [r.name for r in d.rules] == ["forget_quality", "model_utility", "privleak", "usr"]
    bad = decide({**good, "forget_quality": 1e-5, "privleak": -80.0}, 0.5, cfg)
    assert not bad.passed
    assert {r.name for r in bad.rules if not r.passed} == {"forget_quality", "privleak"}
    assert any("forget_quality" in r for r in bad.reasons)
    # utility ratio against the champion; unknown champion utility fails, never passes silently
    assert not decide({**good, "model_utility": 0.4}, 0.5, cfg).passed
    missing = decide({**good, "usr": None}, None, cfg)
    assert {r.name for r in missing.rules if not r.passed} == {"usr", "model_utility"}
    # a champion with utility 0 cannot be undercut: the rule passes (no division)
    assert decide(good, 0.0, cfg).passed
    assert decide({**good, "forget_quality": float("nan")}, 0.5, cfg).passed is False


def test_request_parsing_and_resolution(tmp_path, tofu):
    from r2f.requests import RequestError, eval_split, read_request, resolve, rows_digest

    req = read_request(ROOT / "requests/forget01-authors.yaml")
    items = resolve(req, tofu)
    assert [q.id for q in items] == [q.id for q in tofu.split("forget01")]
    assert eval_split(items) == "forget01"
    assert len(rows_digest(items)) == 64
    one = tmp_path / "one.yaml"
    one.write_text("request_id: r1\nbasis: test\nrequested_at: 2026-01-01\nitem_ids: [tofu-3990]\n")
    assert eval_split(resolve(read_request(one), tofu)) == "forget01"
    wide = tmp_path / "wide.yaml"
    wide.write_text("request_id: r2\nbasis: test\nrequested_at: 2026-01-01\nauthors: [185, 199]\n")
    assert eval_split(resolve(read_request(wide), tofu)) == "forget10"
    for text, field in [("request_id: 'bad id'\nbasis: x\nrequested_at: 2026-01-01\nauthors: [1]\n", "request_id"),
                        ("request_id: r\nbasis: x\nrequested_at: 2026-01-01\n", "authors"),
                        ("request_id: r\nbasis: x\nrequested_at: 2026-01-01\nauthors: [1]\nextra: 1\n", "extra"),
                        ("request_id: r\nbasis: x\nrequested_at: yesterday\nauthors: [1]\n", "requested_at")]:
        p = tmp_path / "bad.yaml"
        p.write_text(text)
        with pytest.raises(RequestError, match=field) as ei:
            read_request(p)
        assert str(p) in str(ei.value)
    retain = tmp_path / "retain.yaml"
    retain.write_text("request_id: r3\nbasis: x\nrequested_at: 2026-01-01\nauthors: [3]\n")
    with pytest.raises(RequestError, match="forget10"):
        eval_split(resolve(read_request(retain), tofu))
