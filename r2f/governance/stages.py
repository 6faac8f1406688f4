"""The bodies of the pipeline's stages: pure functions ``(cfg, log, progress[, mapper]) -> dict``.

Each reads the outs of earlier stages (:mod:`r2f.governance.stage_io`) and writes its own out
atomically. Which stage runs which body, with which params, deps and retries, is declared once in
:data:`r2f.governance.pipeline.STAGES`.

prepare → validate → train_models → train_decoder → unlearn → evaluate → gate → promote
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from r2f.atomic import atomic_dir, write_json
from r2f.config import Config
from r2f.engine.api import decoder_dir, ensure_decoder, evaluate_model, unlearn_model
from r2f.engine.data import N_AUTHORS, load_tofu
from r2f.engine.unlearn import method_config
from r2f.engine.zoo import ensure_models
from r2f.governance.gate import decide
from r2f.governance.lineage import (
    base_utility,
    champion_utility,
    log_decoder_run,
    log_evaluation,
    log_gate,
    register_and_promote,
    run_note,
    start_unlearning_run,
)
from r2f.governance.privacy import KeyShredded, key_store, rows_hmac, write_forget_set
from r2f.governance.requests import (
    RequestError,
    author_indices,
    eval_split,
    read_request,
    resolve,
)
from r2f.governance.stage_io import (
    Log,
    PipelineError,
    forget_items,
    link_tree,
    read_json,
    request_info,
    request_rows,
    stage_dir,
)
from r2f.governance.tracking_setup import make_tracker
from r2f.governance.validation import ValidationError, check, validate_pipeline_data, validate_request


def prepare(cfg: Config, log: Log, progress=None) -> dict:
    import hashlib

    src = Path(cfg.pipeline.request)
    req = read_request(src)
    tofu = load_tofu(cfg.data.tofu_dir)
    known = {q.id for q in tofu.split("full")}
    qids = req.selectors.question_ids
    unknown = sorted(set(qids) - known)
    # selectors that match nothing are left out here and reported by the GX request suite (validate)
    authors = [a for a in req.selectors.authors
               if isinstance(a, int) and 0 <= a < N_AUTHORS or isinstance(a, str) and len(tofu.authors_named(a)) == 1]
    sel = req.selectors.model_copy(update={"question_ids": tuple(i for i in qids if i in known),
                                           "authors": tuple(authors)})
    resolved = req.model_copy(update={"selectors": sel})
    items = resolve(resolved, tofu) if sel.authors or sel.question_ids else []
    try:
        split = eval_split(items) if items else None
    except RequestError:
        split = None
    try:  # the request's key (r2f.governance.privacy): created when the request first enters the system
        key = key_store(cfg).ensure(req.request_id)
    except KeyShredded as exc:
        raise PipelineError(f"{src}: {exc}; a shredded request is not processed again") from None
    info = {"request_id": req.request_id, "created_at": str(req.created_at), **req.digests(key),
            "authors": author_indices(resolved, tofu), "requested_question_ids": list(qids),
            "unknown_question_ids": unknown, "item_ids": [q.id for q in items], "n_rows": len(items),
            "rows_hmac": rows_hmac(key, items), "eval_split": split, "source": str(src),
            "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    with atomic_dir(stage_dir(cfg, "prepare")) as tmp:
        write_forget_set(key, req.request_id, items, tmp / "forget.jsonl.enc")  # AES-GCM: no plaintext at rest
        write_json(tmp / "request.json", info)
    log(f"request {req.request_id}: {len(items)} rows (hmac {info['rows_hmac'][:12]}), "
        f"evaluated on {split}")
    return {k: info[k] for k in ("request_id", "n_rows", "rows_hmac", "eval_split")}


def validate(cfg: Config, log: Log, progress=None) -> dict:
    """GX suites; on failure the reports are kept (``validation/``, ``passed: false``), a rejected
    MLflow run records them, and ``ValidationError`` stops the pipeline before any model is touched."""
    info = request_info(cfg)
    tofu = load_tofu(cfg.data.tofu_dir)
    out = stage_dir(cfg, "validate")
    req = read_request(cfg.pipeline.request).to_dict()
    full = tofu.split("full")
    reports = [validate_request(req, {q.id for q in full}, set(range(200)), tofu.authors_named)]
    items = forget_items(cfg)
    failed = None
    with atomic_dir(out) as tmp:  # the outs (reports + result.json) replace the old ones in one rename
        try:
            if items:  # an empty forget set is already a failure of the request suite
                try:
                    reports += validate_pipeline_data(tofu, items, cfg.validation)
                except ValidationError as exc:
                    reports += exc.reports
            check(reports, tmp)
        except ValidationError as exc:
            failed = ValidationError(str(exc).replace(str(tmp), str(out)), exc.failures, exc.reports)
        write_json(tmp / "result.json", {"passed": failed is None, "request_id": info["request_id"],
                                     "suites": {r.suite: r.success for r in reports}})
    if failed is not None:
        _track_rejected(cfg, info, out)
        raise ValidationError(f"request {info['request_id']}: data validation failed, nothing was changed "
                              f"(GX results in {out}):\n{failed}", failed.failures, reports) from None
    log(f"validation passed: {len(reports)} suites")
    return read_json(out / "result.json")


def _track_rejected(cfg: Config, info: dict, out: Path) -> None:
    tr = make_tracker(cfg)
    with tr.start_run(cfg.tracking.unlearning_experiment, f"{info['request_id']}-rejected",
                      {"request_id": info["request_id"], "status": "rejected_data"}):
        for f in sorted(out.glob("*.json")):
            tr.log_artifact(str(f), "validation")


def train_models(cfg: Config, log: Log, progress=None) -> dict:
    split = request_info(cfg)["eval_split"]
    models = ensure_models(cfg, log, progress, splits=(split,))
    with atomic_dir(stage_dir(cfg, "train_models")) as tmp:
        for name in ("tokenizer", "target", "proxy", f"retain-{split}"):
            if name == "tokenizer" and not (models.root / name).is_dir():
                continue  # a pretrained world's tokenizer ships inside each model folder
            link_tree(models.root / name, tmp / name)
        write_json(tmp / "models.json", {"config_hash": models.root.name, "eval_split": split})
    return {"config_hash": models.root.name, "eval_split": split}


def train_decoder(cfg: Config, log: Log, progress=None) -> dict:
    # the decoder the configured method uses: a named mode (r2f_paper) sets its own LoRA init and decoder
    cfg = method_config(cfg)
    rep = ensure_decoder(cfg, log, progress)
    with atomic_dir(stage_dir(cfg, "train_decoder")) as tmp:
        for f in Path(rep["decoder_dir"]).iterdir():
            shutil.copy2(f, tmp / f.name)
    _track_decoder(cfg, rep, log)
    return {k: v for k, v in rep.items() if not isinstance(v, (list, dict))}


def _track_decoder(cfg: Config, rep: dict, log: Log) -> None:
    """One run per decoder (config hash) in the decoder experiment, the decoder registered."""
    log_decoder_run(make_tracker(cfg), cfg, rep, stage_dir(cfg, "train_decoder"), log)


def unlearn(cfg: Config, log: Log, progress=None, mapper=None) -> dict:
    info = request_info(cfg)
    if not read_json(stage_dir(cfg, "validate") / "result.json").get("passed"):
        raise PipelineError(f"request {info['request_id']}: validation did not pass; nothing unlearned")

    out = stage_dir(cfg, "unlearn")
    tracker = make_tracker(cfg)
    # model + report replace the old outs in one rename: a run killed midway leaves the old ones
    with atomic_dir(out) as new, tempfile.TemporaryDirectory(dir=Path(cfg.state_dir)) as tmp:
        start = start_model(cfg, tracker, Path(tmp), log)
        rep = unlearn_model(cfg, forget_split=info["eval_split"], model_path=start["path"],
                  out=new / "model", log=log, progress=progress, forget_items=forget_items(cfg), mapper=mapper)
        rep["request_id"] = info["request_id"]
        rep["decoder_hash"] = decoder_dir(method_config(cfg)).name  # the decoder the method ran with
        rep["start_model"] = {k: v for k, v in start.items() if k != "path"}
        # promote refuses to move champion if it moved since now (another host's deletion)
        rep["champion_at_start"] = tracker.alias_version(cfg.tracking.target_model_name, "champion")
        rep["mlflow_run_id"] = start_unlearning_run(tracker, cfg, info, rep)
        write_json(new / "report.json", rep)
    return {k: rep[k] for k in ("method", "eta", "wall_s", "mlflow_run_id")}


def start_model(cfg: Config, tracker, tmp: Path, log: Log) -> dict:
    """The model a request is unlearned from: the registry's champion (``pipeline.start_from:
    champion``, once one exists that is not the untouched target) or the embedded target."""
    target = {"path": stage_dir(cfg, "train_models") / "target", "version": None, "role": "base_target",
              "source": "target"}
    if cfg.pipeline.start_from != "champion":
        return target
    champ = tracker.champion_model(cfg.tracking.target_model_name, tmp, skip_roles=("base_target",))
    if champ is None or champ["role"] == "base_target":
        return {**target, "version": champ and champ["version"]}
    log(f"unlearning from the champion, {cfg.tracking.target_model_name} version {champ['version']}")
    return {**champ, "source": "champion"}


def evaluate(cfg: Config, log: Log, progress=None, mapper=None) -> dict:
    info = request_info(cfg)
    rep = read_json(stage_dir(cfg, "unlearn") / "report.json")
    with atomic_dir(stage_dir(cfg, "evaluate")) as tmp:
        res = evaluate_model(cfg, stage_dir(cfg, "unlearn") / "model", info["eval_split"], out=tmp,
                             log=log, progress=progress, forget_ids=request_rows(cfg, info), mapper=mapper)
    log_evaluation(make_tracker(cfg), cfg, rep.get("mlflow_run_id"), stage_dir(cfg, "evaluate"))
    return res["summary"]


def gate(cfg: Config, log: Log, progress=None) -> dict:
    info = request_info(cfg)
    summary = read_json(stage_dir(cfg, "evaluate") / "TOFU_SUMMARY.json")
    champ, base = champion_utility(cfg, info["eval_split"]), base_utility(cfg, info["eval_split"])
    decision = decide(summary, champ, cfg.gate, base).to_dict()
    decision["champion_model_utility"] = champ
    decision["base_model_utility"] = base
    with atomic_dir(stage_dir(cfg, "gate")) as tmp:
        write_json(tmp / "decision.json", decision)
    rep = read_json(stage_dir(cfg, "unlearn") / "report.json")
    log_gate(make_tracker(cfg), rep.get("mlflow_run_id"), decision, run_note(info, rep))
    log(f"gate {'PASSED' if decision['passed'] else 'FAILED'}" +
        ("" if decision["passed"] else ": " + "; ".join(decision["reasons"])))
    return decision


def promote(cfg: Config, log: Log, progress=None) -> dict:
    info = request_info(cfg)
    decision = read_json(stage_dir(cfg, "gate") / "decision.json")
    rep = read_json(stage_dir(cfg, "unlearn") / "report.json")
    tracker = make_tracker(cfg)
    with _promotion_lease(cfg, tracker) as fence:
        if fence is not None and "champion_at_start" in rep:
            now = tracker.alias_version(cfg.tracking.target_model_name, "champion")
            if now != rep["champion_at_start"]:
                from r2f.governance.lease import ChampionMoved

                raise ChampionMoved(f"request {info['request_id']}: champion moved from version "
                                    f"{rep['champion_at_start']} to {now} since its unlearning started (another "
                                    "run promoted); nothing promoted: run it again from the new champion")
        res = register_and_promote(tracker, cfg, stage_dir(cfg, "train_models") / "target",
                                   stage_dir(cfg, "unlearn") / "model", rep.get("mlflow_run_id"), decision, info,
                                   fence=fence)
        if tracker.active and rep.get("mlflow_run_id"):  # tamper evidence: the decided lineage, chained
            from r2f.governance.chain import seal

            res["lineage_seq"] = seal(cfg, tracker, rep["mlflow_run_id"], info["request_id"])["seq"]
    with atomic_dir(stage_dir(cfg, "promote")) as tmp:
        write_json(tmp / "promotion.json", res)
    return res


@contextmanager
def _promotion_lease(cfg: Config, tracker):
    """The cross-host promotion lease (r2f.governance.lease) while the candidate is registered and the
    aliases move; yields its fence (None without tracking or with ``pipeline.lease: false``)."""
    from r2f.governance.lease import PromotionLease, lease_uri

    uri = lease_uri(cfg, tracker.uri) if tracker.active else None
    if uri is None:
        yield None
        return
    lease = PromotionLease(uri, cfg.tracking.target_model_name, cfg.pipeline.lease_ttl_s)
    with lease.hold() as token:
        yield lambda: lease.check(token)
