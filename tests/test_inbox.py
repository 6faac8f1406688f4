"""The request inbox on its own: submission, states, the tick's ordering, failure isolation,
batch mode and the lock (the pipeline itself runs in test_schedule_audit.py)."""

from __future__ import annotations

import pytest
from conftest import tiny_config

HEAD = "subject: s\nrequester: r\nlegal_basis: GDPR art. 17\ncreated_at: 2026-11-2{d}\n"


def _req(tmp_path, rid, selectors, day=1):
    p = tmp_path / f"{rid}.yaml"
    p.write_text(f"request_id: {rid}\n" + HEAD.format(d=day) + f"selectors: {selectors}\n")
    return p


@pytest.fixture
def cfg(tmp_path):
    return tiny_config(tmp_path / "state", **{"schedule.mode": "sequential"})


def test_submit_states_and_refusals(tmp_path, cfg, tofu):
    from r2f.governance.inbox import InboxError, inbox
    from r2f.governance.requests import RequestError
    from r2f.governance.validation import ValidationError

    ib = inbox(cfg)
    with pytest.raises(ValidationError, match="unknown question id"):
        ib.submit(_req(tmp_path, "bad", "{question_ids: [tofu-9999]}"), tofu)
    with pytest.raises(RequestError, match="requester"):
        p = tmp_path / "x.yaml"
        p.write_text("request_id: x\nsubject: s\nlegal_basis: b\ncreated_at: 2026-01-01\nselectors: {authors: [1]}\n")
        ib.submit(p, tofu)
    assert ib.records() == [] and not any((tmp_path / "state").rglob("state.json"))
    rec = ib.submit(_req(tmp_path, "a", "{authors: [199]}"), tofu)
    assert rec.state == "pending" and (ib.root / "a/request.yaml").read_bytes() == (tmp_path / "a.yaml").read_bytes()
    assert ib.submit(tmp_path / "a.yaml", tofu).submitted_at == rec.submitted_at  # idempotent
    with pytest.raises(InboxError, match="already in the inbox"):
        ib.submit(_req(tmp_path, "a", "{authors: [198]}"), tofu)
    ib.transition("a", "validated")
    ib.transition("a", "rejected", model_version=3)
    with pytest.raises(InboxError, match="already rejected"):
        ib.transition("a", "pending")
    assert [h["state"] for h in ib.get("a").history] == ["pending", "validated", "rejected"]
    assert ib.get("a").result == {"model_version": 3} and ib.pending() == []


def test_tick_order_failure_isolation_and_lock(tmp_path, cfg, tofu):
    from r2f.governance.inbox import TickBusy, advance, inbox, process_pending

    ib = inbox(cfg)
    ib.submit(_req(tmp_path, "late", "{authors: [199]}", day=3), tofu)
    ib.submit(_req(tmp_path, "early", "{authors: [198]}", day=1), tofu)
    ib.submit(_req(tmp_path, "mid", "{question_ids: [tofu-3900]}", day=2), tofu)
    calls = []

    def run(path, ids):  # stands in for the pipeline flow: it records and advances the states
        calls.append(ids)
        if ids == ["mid"]:
            raise RuntimeError("stage evaluate failed: boom")
        for stage in ("validate", "unlearn", "evaluate"):
            advance(cfg, ids[0], stage, {})
        advance(cfg, ids[0], "promote", {"passed": ids[0] == "early", "version": 2})

    res = process_pending(cfg, run, log=lambda _m: None)
    assert calls == [["early"], ["mid"], ["late"]]  # oldest created_at first, one at a time
    assert [p["state"] for p in res["processed"]] == ["promoted", "failed", "rejected"]
    assert "boom" in ib.get("mid").history[-1]["reason"]
    assert process_pending(cfg, run, log=lambda _m: None)["processed"] == [] and len(calls) == 3
    ib.submit(_req(tmp_path, "next", "{authors: [197]}"), tofu)
    with ib.lock():
        with pytest.raises(TickBusy), ib.lock():
            pass
        assert process_pending(cfg, run, log=lambda _m: None) == {"processed": [], "busy": True}
    assert ib.get("next").state == "pending"


def test_batch_mode_runs_the_union_once(tmp_path, tofu):
    from r2f.governance.inbox import advance, inbox, process_pending
    from r2f.governance.requests import read_request, resolve

    cfg = tiny_config(tmp_path / "state", **{"schedule.mode": "batch"})
    ib = inbox(cfg)
    ib.submit(_req(tmp_path, "one", "{authors: [199]}"), tofu)
    ib.submit(_req(tmp_path, "two", "{question_ids: [tofu-3960, tofu-3990]}", day=2), tofu)
    seen = []

    def run(path, ids):
        seen.append((path, ids))
        for rid in ids:
            advance(cfg, rid, "promote", {"passed": True, "version": 2})

    process_pending(cfg, run, log=lambda _m: None)
    (path, ids), = seen
    assert ids == ["one", "two"]
    rows = {q.id for q in resolve(read_request(path), tofu)}
    assert rows == {q.id for q in tofu.authors([199])} | {"tofu-3960"}
    assert {r.state for r in ib.records()} == {"promoted"}


def test_serve_builds_a_cron_deployment_of_the_tick():
    from flows.unlearning import tick_deployment, tick_flow

    dep = tick_deployment("params.yaml", {"schedule.mode": "batch"}, "*/30 * * * *")
    assert dep.name == "r2f-deletion-requests" and dep.flow_name == tick_flow.name
    assert dep.schedules[0].schedule.cron == "*/30 * * * *"
    assert dep.parameters == {"params": "params.yaml", "overrides": {"schedule.mode": "batch"}}
