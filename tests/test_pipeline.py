"""One pipeline definition, two runners: dvc.yaml, the stage list, the gate, deletion requests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from r2f.config import GateConfig

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_is_generated_from_the_stage_list():
    from r2f.governance.pipeline import FUNCS, NAMES, STAGES, dvc_yaml

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
    """The Prefect flow iterates r2f.governance.pipeline.NAMES and calls run_stage (no stage of its own)."""
    import flows.unlearning as fl

    src = Path(fl.__file__).read_text()
    assert "run_stage(" in src and "NAMES" in src
    from r2f.governance.pipeline import run_stage

    assert fl.unlearning_flow.fn.__name__ == "unlearning_flow"
    assert callable(run_stage)


def test_gate_rules_are_independent_and_missing_values_fail():
    from r2f.governance.gate import decide

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


H = "subject: s\nrequester: r\nlegal_basis: x\ncreated_at: 2026-01-01\n"


def test_request_parsing_and_resolution(tmp_path, tofu):
    from r2f.governance.requests import RequestError, eval_split, read_request, resolve, rows_digest

    req = read_request(ROOT / "requests/forget01-authors.yaml")
    items = resolve(req, tofu)
    assert [q.id for q in items] == [q.id for q in tofu.split("forget01")]
    assert eval_split(items) == "forget01"
    assert len(rows_digest(items)) == 64
    one = tmp_path / "one.yaml"
    one.write_text("request_id: r1\n" + H + "selectors: {question_ids: [tofu-3990]}\n")
    assert eval_split(resolve(read_request(one), tofu)) == "forget01"
    wide = tmp_path / "wide.yaml"
    wide.write_text("request_id: r2\n" + H + "selectors: {authors: [185, Nikolai Abilov]}\n")
    assert eval_split(resolve(read_request(wide), tofu)) == "forget10"
    good = "request_id: r\n" + H
    bad_id = good.replace("request_id: r", "request_id: 'bad id'")
    for text, field in [(bad_id + "selectors: {authors: [1]}\n", "request_id"),
                        (good + "selectors: {}\n", "selectors"),
                        (good + "selectors: {authors: [1]}\nextra: 1\n", "extra"),
                        (good + "selectors: {authors: [1], names: [x]}\n", "selectors.names"),
                        (good.replace("requester: r\n", "") + "selectors: {authors: [1]}\n", "requester"),
                        (good.replace("2026-01-01", "yesterday") + "selectors: {authors: [1]}\n", "created_at")]:
        p = tmp_path / "bad.yaml"
        p.write_text(text)
        with pytest.raises(RequestError, match=field) as ei:
            read_request(p)
        assert str(p) in str(ei.value)
    retain = tmp_path / "retain.yaml"
    retain.write_text("request_id: r3\n" + H + "selectors: {authors: [3]}\n")
    with pytest.raises(RequestError, match="forget10"):
        eval_split(resolve(read_request(retain), tofu))
    # a name that matches nothing: the error names the selector's position, not the name
    nobody = tmp_path / "nobody.yaml"
    nobody.write_text("request_id: r4\n" + H + "selectors: {authors: [Nikolai Abilov, Jane Nobody]}\n")
    with pytest.raises(RequestError, match=r"selectors.authors\[1\]: matches no TOFU author") as ei:
        resolve(read_request(nobody), tofu)
    assert "Nobody" not in str(ei.value)


def test_author_names_are_derived_from_the_data(tofu):
    names = tofu.author_names()
    assert names[198] == "Basil Mahfouz Al-Kuwaiti" and names[199] == "Nikolai Abilov"
    assert names[0] == "Jaime Vasquez" and 88 not in names  # 88 is never named in TOFU
    assert len(names) == 199 and len(set(names.values())) == 199
    full = tofu.split("full")
    for a, n in names.items():  # each name is in at least 5 of its own author's rows
        assert sum(n in q.question + q.answer for q in full[a * 20:(a + 1) * 20]) >= 5, (a, n)
    assert tofu.authors_named("  nikolai   ABILOV ") == [199] and tofu.authors_named("Nobody") == []


def test_reference_cut_to_the_request_rows():
    from r2f.engine.evaluation import reference_on
    from r2f.engine.metrics import auc

    ids = ["tofu-3960", "tofu-3961", "tofu-3962", "tofu-3963"]
    ref = {"forget_truth_ratio": {"per_item": dict(zip(ids, [0.1, 0.2, 0.3, 0.4]))},
           "mia_min_k": {"value": 0.9, "extra": {"forget_scores": [1.0, 5.0, 2.0, 6.0],
                                                 "holdout_scores": [3.0, 4.0, 7.0]}}}
    assert reference_on(ref, ids) == ([0.1, 0.2, 0.3, 0.4], 0.9)  # the whole split: as recorded
    tr, a = reference_on(ref, ["tofu-3963", "tofu-3961"])
    assert tr == [0.4, 0.2] and a == auc([6.0, 5.0], [3.0, 4.0, 7.0], "mia_min_k")
    with pytest.raises(Exception, match="tofu-9999"):
        reference_on(ref, ["tofu-9999"])
