"""Races of the real ``promote`` stage between two "hosts": processes with separate state folders that
share one tracking store and registry (a PostgreSQL server), an artifact store and a DVC remote
(tests/test_lease.py and bench/reliability.py)."""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time

from conftest import tiny_config


def host_cfg(root, pg, shared, lease=True):
    return tiny_config(root / "state", **{"tracking.tracking_uri": pg, "tracking.artifact_root": str(shared / "artifacts"),
                                          "versioning.remote_url": str(shared / "remote"), "pipeline.lease": lease})


def stage_outs(cfg, target, rid: str) -> None:
    """What ``promote`` reads, as the earlier stages of a request leave it: the request summary, the
    gate decision, the unlearning report (its MLflow run, the champion when it started) and models."""
    from r2f.governance.stage_io import stage_dir
    from r2f.governance.tracking_setup import make_tracker

    tr = make_tracker(cfg)
    name = cfg.tracking.target_model_name
    with tr.start_run(cfg.tracking.unlearning_experiment, rid, {"request_id": rid}) as run_id:
        tr.log_metrics({"forget_quality": 0.5})
    outs = {"prepare": {"request.json": {"request_id": rid, "n_rows": 1, "rows_hmac": "0" * 64}},
            "gate": {"decision.json": {"passed": True, "rules": [], "reasons": []}},
            "unlearn": {"report.json": {"mlflow_run_id": run_id, "champion_at_start": tr.alias_version(name, "champion")}}}
    for stage, files in outs.items():
        d = stage_dir(cfg, stage)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for f, obj in files.items():
            (d / f).write_text(json.dumps(obj))
    shutil.copytree(target, stage_dir(cfg, "unlearn") / "model")
    models = stage_dir(cfg, "train_models")
    if not (models / "target").is_dir():
        models.mkdir(parents=True, exist_ok=True)
        shutil.copytree(target, models / "target")


def promote_when(cfg, go, out) -> None:
    """One host's promote stage, started when ``go`` is set; puts its outcome on ``out``."""
    import os

    from r2f.governance.locks import LockBusy
    from r2f.governance.stages import promote

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    go.wait(60)
    try:
        res = promote(cfg, lambda _m: None)
        out.put(("promoted" if res["passed"] else "rejected", res.get("version")))
    except LockBusy as exc:
        out.put((type(exc).__name__, str(exc)[:200]))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out.put(("error", f"{type(exc).__name__}: {exc}"[:400]))


def race(cfgs, rid: str, target) -> list[tuple]:
    for i, cfg in enumerate(cfgs):
        stage_outs(cfg, target, f"{rid}-{i}")
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=promote_when, args=(cfg, go, out)) for cfg in cfgs]
    for p in procs:
        p.start()
    time.sleep(3)  # both processes imported and waiting
    go.set()
    res = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    return res


def champion_versions(cfg) -> list[int]:
    from r2f.governance.tracking_setup import make_tracker

    tr = make_tracker(cfg)
    return [int(v.version) for v in tr.versions(cfg.tracking.target_model_name, decision="promoted")]




def cross_host_races(pg: str, root, target, races: int = 5) -> dict:
    """``races`` races of two hosts with the lease, then one control race without it."""
    shared = root / "shared"
    hosts = [host_cfg(root / h, pg, shared) for h in ("host-a", "host-b")]
    out = []
    for j in range(races):
        before = len(champion_versions(hosts[0]))
        res = race(hosts, f"req-race-{j}", target)
        out.append({"race": j, "outcomes": sorted(r[0] for r in res),
                    "promotions": len(champion_versions(hosts[0])) - before})
    from r2f.governance.chain import read_chain

    chain = [e["seq"] for e in read_chain(hosts[0])]  # both hosts sealed into the one chain in the remote
    loose = [host_cfg(root / h, pg, shared, lease=False) for h in ("host-a", "host-b")]
    before = len(champion_versions(loose[0]))
    res = race(loose, "req-race-nolease", target)
    control = {"outcomes": sorted(r[0] for r in res), "promotions": len(champion_versions(loose[0])) - before}
    return {"races": out, "control_without_lease": control, "chain_seqs_after_races": chain, "hosts": hosts}
