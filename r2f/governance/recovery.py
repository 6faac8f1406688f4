"""Exactly-once requests and crash recovery, read from the registry before a pipeline run
(docs/reliability.md). Called by the flow under the pipeline lock, before any stage."""

from __future__ import annotations

from r2f.config import Config
from r2f.digest import weights_sha256
from r2f.governance.requests import read_request
from r2f.governance.stage_io import Log, PipelineError, read_json, request_info, stage_dir
from r2f.governance.tracking_setup import make_tracker


def recover(cfg: Config, log: Log) -> dict:
    """Before a full run of ``pipeline.request``, under the pipeline lock: what an earlier run of the
    same request left. Returns ``{"done": {...}}`` when the registry already holds its final
    decision (a version tagged with its request id and ``decision`` promoted | rejected): the request
    is not processed again unless ``pipeline.rerun`` is set. Otherwise tidies up after a killed run:
    its MLflow runs left RUNNING or finished without a registered model are marked KILLED
    (``tracking.close_stale_runs``); if it died inside ``promote`` (a version of this
    request without the final ``decision`` tag) and the stage outs on disk are that attempt's (same
    request, MLflow run and weights), returns ``{"stages": ["promote"]}``: only the promotion is
    finished, nothing is unlearned twice; else such a version is tagged ``decision=abandoned`` and
    ``{}`` says: run every stage."""
    tracker = make_tracker(cfg)
    if not tracker.active:
        return {}
    rid = read_request(cfg.pipeline.request).request_id
    name = cfg.tracking.target_model_name
    mv = tracker.final_version(name, rid)
    if mv is not None and not cfg.pipeline.rerun:
        log(f"request {rid}: already processed, version {mv.version} {mv.tags['decision']}; not processed again "
            "(set pipeline.rerun=true to run it again as a new candidate)")
        return {"done": {"request_id": rid, "version": int(mv.version), "decision": mv.tags["decision"],
                         "passed": mv.tags["decision"] == "promoted", "registered_model": name}}
    unfinished = [v for v in tracker.versions(name, request_id=rid) if "decision" not in v.tags]
    mv = unfinished[-1] if unfinished else None
    same = False
    try:
        if mv is not None:
            info, rep = request_info(cfg), read_json(stage_dir(cfg, "unlearn") / "report.json")
            read_json(stage_dir(cfg, "gate") / "decision.json")
            same = (info["request_id"] == rid and rep.get("mlflow_run_id") == mv.run_id
                    and weights_sha256(stage_dir(cfg, "unlearn") / "model") == mv.tags.get("weights_sha256"))
    except (PipelineError, OSError, KeyError):
        same = False
    killed = tracker.close_stale_runs(cfg.tracking.unlearning_experiment, {"request_id": rid},
                                      keep=mv.run_id if same else None)
    if killed:
        log(f"request {rid}: {len(killed)} MLflow run(s) of an earlier, killed attempt marked KILLED (abandoned)")
    if mv is None:
        return {}
    if same:
        log(f"request {rid}: the promotion of version {mv.version} was cut short; finishing it")
        return {"stages": ["promote"]}
    for v in unfinished:
        tracker.set_version_tag(name, v.version, "decision", "abandoned")
    log(f"request {rid}: unfinished version(s) {', '.join(v.version for v in unfinished)} marked abandoned; "
        "running every stage")
    return {}


def results_on_disk(cfg: Config) -> dict:
    """The results of prepare, unlearn and gate as their outs record them (for a resumed run)."""
    info = request_info(cfg)
    rep = read_json(stage_dir(cfg, "unlearn") / "report.json")
    return {"prepare": {k: info[k] for k in ("request_id", "n_rows", "rows_hmac", "eval_split")},
            "unlearn": {k: rep.get(k) for k in ("method", "eta", "wall_s", "mlflow_run_id")},
            "gate": read_json(stage_dir(cfg, "gate") / "decision.json")}
