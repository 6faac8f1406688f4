"""Tamper evidence (issue #22 item 5): a request's MLflow records sealed in a hash chain whose head
lives in the DVC remote. A real sqlite MLflow store; no models (the pipeline-level check, a rewritten
row in the tracking database of a decided request, is in test_schedule_audit.py)."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config


@pytest.fixture
def sealed(tmp_path):
    from r2f.governance.chain import seal
    from r2f.governance.tracking_setup import make_tracker

    cfg = tiny_config(tmp_path / "st")
    tr = make_tracker(cfg)
    runs = []
    for i in range(3):
        with tr.start_run(cfg.tracking.unlearning_experiment, f"r{i}", {"request_id": f"req-{i}"}) as rid:
            tr.set_tags({"git_sha": "a" * 40, "forget_rows_hmac": f"{i:064d}", "status": "gated"})
            tr.log_metrics({"forget_quality": 0.5 + i, "model_utility": 0.8})
            tr.log_dict({"passed": True, "rules": []}, "gate/decision.json")
        runs.append(rid)
        seal(cfg, tr, rid, f"req-{i}")
    return cfg, tr, runs


def _ok(cfg, tr, rid):
    from r2f.governance.chain import verify

    return {name: ok for name, ok, _ in verify(cfg, tr, rid)}


def test_sealed_records_verify_and_sealing_again_is_idempotent(sealed):
    from r2f.governance.chain import read_chain, read_head, seal

    cfg, tr, runs = sealed
    chain = read_chain(cfg)
    assert [e["seq"] for e in chain] == [0, 1, 2] and chain[1]["prev"] == chain[0]["hash"]
    assert read_head(cfg) == {"seq": 2, "hash": chain[-1]["hash"]}
    assert all(all(_ok(cfg, tr, r).values()) for r in runs)
    assert seal(cfg, tr, runs[1], "req-1")["seq"] == 1 and len(read_chain(cfg)) == 3  # unchanged: nothing appended
    tr.set_run_tag(runs[1], "forget_set_shredded_at", "2027-01-01T00:00:00+00:00")  # added by design later
    tr.set_run_tag(runs[1], "status", "promoted")
    assert all(_ok(cfg, tr, runs[1]).values())


@pytest.mark.parametrize("edit", ["metric", "tag", "artifact"])
def test_an_edited_mlflow_record_breaks_the_seal(sealed, edit):
    cfg, tr, runs = sealed
    if edit == "metric":
        tr._client.log_metric(runs[0], "forget_quality", 0.99)
    elif edit == "tag":
        tr.set_run_tag(runs[0], "git_sha", "b" * 40)
    else:
        with tr.start_run(None, run_id=runs[0]):
            tr.log_dict({"passed": False, "rules": []}, "gate/decision.json")
    ok = _ok(cfg, tr, runs[0])
    assert ok["MLflow records match the sealed lineage record"] is False
    assert ok["lineage chain links hold"] and all(_ok(cfg, tr, runs[2]).values())  # the others still verify


def test_a_rewritten_or_cut_chain_is_detected(sealed):
    from r2f.governance.chain import link_hash, read_chain, write_chain

    cfg, tr, runs = sealed
    chain = read_chain(cfg)
    e = json.loads(json.dumps(chain[1]))
    e["record"]["metrics"]["forget_quality"] = 9.0  # rewritten without re-hashing
    write_chain(cfg, [chain[0], e, chain[2]])
    assert _ok(cfg, tr, runs[2])["lineage chain links hold"] is False
    e["hash"] = link_hash(e)  # re-hashed, so the next link breaks; cut after it, so the head differs
    write_chain(cfg, [chain[0], e])
    ok = _ok(cfg, tr, runs[1])
    assert ok["lineage chain links hold"] and ok["lineage chain ends at the head stored in the DVC remote"] is False
    write_chain(cfg, chain)
    assert all(_ok(cfg, tr, runs[1]).values())


def test_an_unsealed_request_is_not_run_and_a_dropped_record_fails(sealed):
    from r2f.governance.chain import read_chain, verify, write_chain

    cfg, tr, runs = sealed
    with tr.start_run(cfg.tracking.unlearning_experiment, "old", {"request_id": "req-old"}) as old:
        pass
    assert verify(cfg, tr, old)[0][1] is None  # decided before sealing existed: listed, not failed
    write_chain(cfg, read_chain(cfg)[:2])
    assert verify(cfg, tr, runs[2])[0][1] is False  # the run says it was sealed: the missing record fails
