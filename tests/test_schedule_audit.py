"""Deletion requests through the inbox and the scheduled tick, sequential deletions from the
champion, and the lineage audit, with the real tools (Prefect harness, sqlite MLflow, DVC, GX)."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
from test_pipeline_flow import _alias, _registry, harness, make_project  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

EASY = {"gate.min_forget_quality": 0.0, "gate.min_utility_ratio": 0.0, "gate.min_utility_vs_base": 0.0,
        "gate.max_abs_privleak": 1000.0,
        "gate.min_usr": 0.0}
HEAD = "subject: {s}\nrequester: dpo@example.org\nlegal_basis: GDPR art. 17\ncreated_at: 2026-11-2{d}T10:00:00Z\n"


def _write(root, name, rid, selectors, day=1, subject="a fictitious author"):
    p = root / f"{name}.yaml"
    p.write_text(f"request_id: {rid}\n" + HEAD.format(s=subject, d=day) + f"selectors: {selectors}\n")
    return p


def audit_run_id(cfg, rid):
    from r2f.governance.tracking_setup import make_tracker

    return make_tracker(cfg).find_run(cfg.tracking.unlearning_experiment, {"request_id": rid})


def _place(ib, src):
    """Put a request into the inbox as ``submit`` would, without its checks."""
    import hashlib
    import shutil

    from r2f.governance.inbox import Record, now
    from r2f.governance.requests import read_request

    req = read_request(src)
    d = ib.root / req.request_id
    d.mkdir(parents=True)
    shutil.copy(src, d / "request.yaml")
    at = now()
    rec = Record(req.request_id, "pending", hashlib.sha256(src.read_bytes()).hexdigest(), at, str(req.created_at),
                 [{"state": "pending", "at": at}])
    (d / "state.json").write_text(json.dumps(rec.to_dict()))


def test_inbox_tick_sequential_and_audit(tmp_path, harness, monkeypatch):  # noqa: F811
    from flows.unlearning import tick_flow
    from r2f.config import load_config
    from r2f.engine.data import load_tofu
    from r2f.governance.audit import audit
    from r2f.governance.inbox import inbox
    from r2f.governance.requests import RequestError
    from r2f.governance.validation import ValidationError

    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = str(project / "params.yaml")
    cfg = load_config(params)
    ib, tofu = inbox(cfg), load_tofu(cfg.data.tofu_dir)

    # a bad request is refused with a clear message and nothing is written
    bad = _write(project, "bad", "req-bad", "{authors: [Jane Nobody]}")
    with pytest.raises(ValidationError, match=r"selectors.authors\[0\]"):
        ib.submit(bad, tofu)
    assert ib.records() == [] and not (project / ".r2f/mlflow").exists()

    # submit -> tick -> promoted, with every state recorded
    a = _write(project, "a", "req-a", "{authors: [Nikolai Abilov]}", subject="Nikolai Abilov")
    assert ib.submit(a, tofu).state == "pending"
    assert ib.submit(a, tofu).state == "pending"  # the same file again: no change
    res = tick_flow(params, EASY)
    assert res["processed"] == [{"request_id": "req-a", "state": "promoted"}]
    rec = ib.get("req-a")
    assert [h["state"] for h in rec.history] == ["pending", "validated", "unlearned", "evaluated", "promoted"]
    client = _registry(project)
    assert rec.result["model_version"] == 2 and _alias(client, "champion") == 2

    # a second tick has nothing to do
    assert tick_flow(params, EASY)["processed"] == []

    # next tick: a failing request does not block the next one, which starts from the champion
    # rows of a retain author overlap the retain set: submit refuses them at once
    c = _write(project, "c", "req-c-retain", "{authors: [3]}", day=2)
    with pytest.raises(RequestError, match="retain"):
        ib.submit(c, tofu)
    assert all(r.request_id != "req-c-retain" for r in ib.records())
    _place(ib, c)  # in the inbox by other means (an older version accepted it): the data check fails
    ib.submit(_write(project, "d", "req-d", "{question_ids: [tofu-3960, tofu-3961]}", day=3), tofu)
    res = tick_flow(params, EASY)
    assert res["processed"] == [{"request_id": "req-c-retain", "state": "failed"},
                                {"request_id": "req-d", "state": "promoted"}]
    assert "retain" in ib.get("req-c-retain").history[-1]["reason"]
    d_run = client.get_run(ib.get("req-d").result["mlflow_run_id"])
    assert d_run.data.tags["start_model_version"] == "2" and d_run.data.tags["start_model_source"] == "champion"
    assert _alias(client, "champion") == 3

    # audit: VERIFIED, no subject name or forget text in the report
    rep = audit(cfg, "req-a")
    assert rep["verdict"] == "VERIFIED", [c for c in rep["checks"] if not c["ok"]]
    assert rep["models"]["before"] in ("1", "None") and rep["models"]["after"] == "2"
    assert rep["forget_rows"]["n_rows"] == 20 and len(rep["checks"]) >= 10
    # one check per link, in the order of audit.CHECKS (no git check: the project has no commit)
    assert [re.sub(r"[0-9a-f]{32}\.dir", "<md5>", c["check"]) for c in rep["checks"]] == [
        "MLflow run of the request found", "request file matches the inbox record",
        "request file matches the MLflow run", "selectors re-resolve to the recorded forget rows",
        "forget set: DVC object <md5> intact", "forget set: every file of the DVC folder stored and intact",
        "versioned forget set decrypts to the recorded rows", "decoder: DVC object <md5> intact",
        "decoder: every file of the DVC folder stored and intact", "decoder's MLflow run found",
        "registered model weights match the hash recorded at registration",
        "registry tag agrees with the gate decision", "inbox state agrees with the gate decision",
        "lineage chain links hold", "lineage chain ends at the head stored in the DVC remote",
        "MLflow records match the sealed lineage record"]
    text = json.dumps(rep, default=str)
    assert "Nikolai" not in text and tofu.split("full")[3990].answer not in text
    from typer.testing import CliRunner

    from r2f.cli import app

    cli = CliRunner()
    md = cli.invoke(app, ["audit", "req-a", "--params", params])
    assert md.exit_code == 0 and "**VERIFIED**" in md.output and "| forget_quality |" in md.output
    html = cli.invoke(app, ["audit", "req-a", "--format", "html", "--params", params])
    assert html.exit_code == 0 and html.output.startswith("<!doctype html>")
    listing = cli.invoke(app, ["request", "list", "--json", "--params", params])
    assert [r["state"] for r in json.loads(listing.output)] == ["promoted", "failed", "promoted"]
    hist = cli.invoke(app, ["history", "--params", params])
    assert hist.exit_code == 0 and hist.output.count("req-") == 3

    failed = audit(cfg, "req-c-retain")  # never unlearned: the file checks and the reason, nothing more
    assert failed["verified"] and failed["verdict"].startswith("VERIFIED (not processed") and "retain" in failed["verdict"]

    # a rewritten MLflow row (req-a's forget quality, straight in the tracking database): the records
    # no longer match the lineage record sealed when req-a was decided (issue #22 item 5)
    import sqlite3

    run_id = audit_run_id(cfg, "req-a")
    db = sqlite3.connect(project / ".r2f/mlflow/mlflow.db")
    where = "WHERE run_uuid = ? AND key LIKE '%forget_quality%'"
    saved = {t: db.execute(f"SELECT rowid, value FROM {t} {where}", (run_id,)).fetchall()
             for t in ("metrics", "latest_metrics")}
    for t in saved:
        db.execute(f"UPDATE {t} SET value = value + 0.5 {where}", (run_id,))
    db.commit()
    assert saved["metrics"]
    tampered = audit(cfg, "req-a")
    assert not tampered["verified"] and "MLflow records match the sealed lineage record" in tampered["verdict"]
    assert "forget_quality" in next(c["detail"] for c in tampered["checks"]
                                    if c["check"] == "MLflow records match the sealed lineage record")
    assert cli.invoke(app, ["audit", "req-a", "--params", params]).exit_code == 4
    for t, rows in saved.items():  # the original values back, bit for bit
        db.executemany(f"UPDATE {t} SET value = ? WHERE rowid = ?", [(v, r) for r, v in rows])
    db.commit()
    db.close()
    assert audit(cfg, "req-a")["verified"]  # restored: the seal matches again
    # the chain rewritten consistently with a forged record (and cut after it) still fails: its head differs
    from r2f.governance.chain import link_hash, read_chain, write_chain

    chain = read_chain(cfg)
    i = next(i for i, e in enumerate(chain) if e["run_id"] == run_id)
    forged = json.loads(json.dumps(chain[i]))
    forged["record"]["metrics"] = {k: v + 1 for k, v in forged["record"]["metrics"].items()}
    forged["hash"] = link_hash(forged)  # a consistent chain up to req-a's forged record; the rest dropped
    write_chain(cfg, [*chain[:i], forged])
    cut = audit(cfg, "req-a")
    assert not cut["verified"] and "head stored in the DVC remote" in cut["verdict"], cut["verdict"]
    write_chain(cfg, chain)
    assert audit(cfg, "req-a")["verified"]

    # tamper with the forget set's DVC object of req-a: the audit names the mismatch
    from r2f.governance.versioning import cache_dir as _cache_dir

    md5 = rep["forget_rows"]["dvc_md5"]
    manifest = _cache_dir(project) / "files/md5" / md5[:2] / md5[2:]
    entry = next(e for e in json.loads(manifest.read_text()) if e["relpath"] == "forget.jsonl.enc")
    obj = _cache_dir(project) / "files/md5" / entry["md5"][:2] / entry["md5"][2:]
    os.chmod(obj, stat.S_IWUSR | stat.S_IRUSR)
    blob = bytearray(obj.read_bytes())
    blob[-20] ^= 1  # one bit of the ciphertext
    obj.write_bytes(bytes(blob))
    rep = audit(cfg, "req-a")
    assert not rep["verified"] and "forget set" in rep["verdict"]
    assert cli.invoke(app, ["audit", "req-a", "--params", params]).exit_code == 4
