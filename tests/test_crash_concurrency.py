"""Crash safety and concurrency with real processes (issue #8): `r2f run` killed with SIGKILL (its
whole process group, Prefect server included) at a stage boundary, then run again, finishes the
request exactly once with a loadable champion; a promotion cut short is finished, not redone; two
runs started at once promote once. bench/reliability.py runs every stage boundary."""

from __future__ import annotations

import pytest
from conftest import TINY
from reliability_lib import (
    EASY_GATE,
    FAST_EVAL,
    check_request,
    make_project,
    r2f,
    registry,
    run_and_kill,
    run_to_end,
    write_request,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    proj = make_project(tmp_path_factory.mktemp("crash"), {**TINY, **FAST_EVAL, **EASY_GATE})
    rc, out = run_to_end(proj, "run")  # trains and caches the models and decoder, registers the base
    assert rc == 0, out[-4000:]
    return proj


@pytest.mark.parametrize("stage", ["unlearn", "gate"])
def test_killed_at_a_stage_boundary_then_rerun_finishes_once(project, stage):
    rid = f"req-kill-{stage}"
    req = write_request(project, rid, ["tofu-3995", "tofu-3996"])
    killed, out = run_and_kill(project, f"stage {stage} finished", "--set", f"pipeline.request={req}")
    assert killed, out[-3000:]
    versions = registry(project)  # the warm-up run's versions at least: the check below is not vacuous
    assert versions and all(v["request_id"] != rid for v in versions)  # killed before promote: nothing registered
    rc, out = run_to_end(project, "run", "--set", f"pipeline.request={req}")
    assert rc == 0, out[-4000:]
    res = check_request(project, rid)
    assert res["final_decisions"] == 1 and res["running_runs"] == 0 and res["champion_loads"], res
    # exactly once: the same request again does nothing
    rc, out = run_to_end(project, "run", "--set", f"pipeline.request={req}")
    assert rc == 0 and "already processed" in out, out[-3000:]
    assert check_request(project, rid)["versions"] == res["versions"]


def test_a_promotion_cut_short_is_finished_not_redone(project):
    """The version is registered (tags from its creation) but the process dies before the gate
    tags, the alias and the final decision tag: the next run finishes that promotion only."""
    from reliability_lib import cut_promotion

    rid = "req-cut-promote"
    res = cut_promotion(project, rid, ["tofu-3997"])
    assert res["rc"] == 0 and "cut short" in res["output"], res["output"][-4000:]
    assert len(res["after"]) == len(res["before"])  # no second version, no second unlearning
    mine = [v for v in res["after"] if v["request_id"] == rid]
    assert len(mine) == 1 and mine[0]["version"] == res["version"] and mine[0]["decision"] == "promoted"
    assert "champion" in mine[0]["aliases"]


def test_two_runs_started_at_once_promote_once(project):
    a = write_request(project, "req-race-a", ["tofu-3998"])
    b = write_request(project, "req-race-b", ["tofu-3999"])
    before = registry(project)
    procs = [r2f(project, "run", "--set", f"pipeline.request={r}") for r in (a, b)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    rcs = sorted(p.returncode for p in procs)
    assert rcs == [0, 2], [o[-2000:] for o in outs]
    loser = outs[[p.returncode for p in procs].index(2)]
    assert "another process holds" in loser and "pipeline/.lock" in loser
    new = [v for v in registry(project) if v not in before and v["request_id"] in ("req-race-a", "req-race-b")]
    assert len(new) == 1 and new[0]["decision"] == "promoted"


def test_no_forget_text_in_tracking_state_logs_or_audit(project):
    """After the runs above: the forgotten questions, answers and the subject's name appear nowhere
    in the MLflow database or artifacts, Prefect's state, the run logs or the audit report."""
    from reliability_lib import forget_text_hits, forget_texts

    req = "requests/forget01-authors.yaml"  # the warm-up run's request: names in its subject
    texts = forget_texts(project, req)
    assert len(texts) > 40
    rc, run_log = run_to_end(project, "run", "--set", "pipeline.rerun=true")
    assert rc == 0, run_log[-3000:]
    # the console shows R2F's stage lines; Prefect's engine lines go to the run's log file
    assert "stage unlearn finished" in run_log and "Finished in state" not in run_log
    files = sorted((project / ".r2f/logs").glob("run-*.log"))
    assert files and "Finished in state" in files[-1].read_text()
    logs = {"run": run_log}
    for fmt in ("md", "json", "html"):
        rc, logs[f"audit-{fmt}"] = run_to_end(project, "audit", "req-0001-forget01", "--format", fmt)
        assert rc == 0, logs[f"audit-{fmt}"][-3000:]
    hits = forget_text_hits(project, texts, logs)
    assert hits == [], hits[:10]
    # the versioned forget set is ciphertext: no forget text in it either
    import json

    from test_pipeline_flow import forget_rows

    raw = (project / ".r2f/pipeline/request/forget.jsonl.enc").read_bytes()
    assert forget_text_hits(project, texts, {"ciphertext": raw.decode("latin-1")}) == []
    # control: the probe finds the text where it legitimately is (the forget set, decrypted)
    assert forget_text_hits(project, texts, {"forget_set": json.dumps(forget_rows(project), ensure_ascii=False)})
