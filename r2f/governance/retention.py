"""Retention: once a request is final and ``privacy.retention_days`` have passed, its forget set is
crypto-shredded.

``enforce`` (``r2f retention enforce``, and the end of every scheduled tick) shreds each due inbox
request; ``shred`` does it for one request (``r2f retention shred ID``, any final request, also one run
from a file with ``r2f run``). Shredding:

1. destroys the request's key (r2f.governance.privacy): the encrypted forget set in the run folder,
   the DVC cache and the DVC remote can no longer be read, and the keyed digests in MLflow and the
   inbox can no longer be linked to the text;
2. removes the plaintext request file from the inbox (its record keeps ids, states and hashes), and
   a plaintext ``forget.jsonl`` that a run before encryption left in the run folder (the run folder
   otherwise holds only the ciphertext, ids and keyed digests);
3. records it: ``shredded_at`` in the inbox record, the tag ``forget_set_shredded_at`` on the request's
   MLflow run (the audit then reports "forget set shredded at T" and which checks can no longer run).

Nothing else is deleted: the models, the evaluation and the lineage stay auditable.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

from r2f.config import Config
from r2f.errors import R2FError
from r2f.governance.inbox import FINAL, InboxError, Record, inbox
from r2f.governance.privacy import key_store
from r2f.governance.tracking_setup import make_tracker

Log = Callable[[str], None]


class RetentionError(R2FError, RuntimeError):
    """A request cannot be shredded (unknown, or not final yet); the message says which and why."""


def _parse(at: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(at)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def final_at(rec: Record) -> dt.datetime | None:
    """When the request reached its final state (None while it is not final)."""
    at = rec.at(rec.state) if rec.state in FINAL else None
    return _parse(at) if at else None


def due(cfg: Config, now: dt.datetime | None = None) -> list[Record]:
    """Inbox requests that are final, not shredded yet, and past their retention window."""
    now = now or dt.datetime.now(dt.UTC)
    window = dt.timedelta(days=cfg.privacy.retention_days)
    out = []
    for rec in inbox(cfg).records():
        t = final_at(rec)
        if t is not None and rec.shredded_at is None and t + window <= now:
            out.append(rec)
    return out


def _run_folder_plaintext(cfg: Config, request_id: str) -> list[Path]:
    """Plaintext of ``request_id`` in the run folder: the ``forget.jsonl`` of a run made before forget
    sets were encrypted, when the prepare stage's outs are this request's."""
    from r2f.governance.stage_io import stage_dir

    prep = stage_dir(cfg, "prepare")
    info = prep / "request.json"
    legacy = prep / "forget.jsonl"
    if legacy.is_file() and info.is_file() and json.loads(info.read_text()).get("request_id") == request_id:
        return [legacy]
    return []


def shred(cfg: Config, request_id: str, log: Log = print, force: bool = False) -> dict:
    """Crypto-shred one request (see the module doc). A request that is not final is refused unless
    ``force`` (a request withdrawn by hand). Idempotent: a shredded request reports its first time."""
    ib = inbox(cfg)
    try:
        rec = ib.get(request_id)
    except InboxError:
        rec = None
    tracker = make_tracker(cfg)
    run_id = tracker.find_run(cfg.tracking.unlearning_experiment, {"request_id": request_id}) if tracker.active else None
    if rec is None and run_id is None:
        raise RetentionError(f"request {request_id}: not in the inbox and no MLflow run; nothing to shred")
    decided = rec.state in FINAL if rec else bool(tracker.run(run_id).data.tags.get("registered_version")
                                                  or tracker.final_version(cfg.tracking.target_model_name, request_id))
    if not decided and not force:
        state = rec.state if rec else "running"
        raise RetentionError(f"request {request_id}: {state}, not final; it is shredded once decided "
                             "(or with --force)")
    at = key_store(cfg).destroy(request_id)
    removed = []
    if rec is not None:
        if ib.path(request_id).is_file():
            removed.append(str(ib.path(request_id)))
        ib.mark_shredded(request_id, rec.shredded_at or at)
    for f in _run_folder_plaintext(cfg, request_id):
        f.unlink()
        removed.append(str(f))
    removed += _shred_batches(cfg, ib.root, log)
    if run_id:
        tracker.set_run_tag(run_id, "forget_set_shredded_at", at)
    log(f"request {request_id}: forget set shredded at {at} (key destroyed; removed {len(removed)} plaintext "
        "path(s))")
    return {"request_id": request_id, "shredded_at": at, "removed": removed, "mlflow_run_id": run_id}


def _shred_batches(cfg: Config, root: Path, log: Log) -> list[str]:
    """A batch request (schedule.mode: batch) is shredded once all its member requests are."""
    removed = []
    ib = inbox(cfg)
    for meta in sorted((root / ".batches").glob("*.json")) if (root / ".batches").is_dir() else []:
        batch = json.loads(meta.read_text())
        members = []
        for rid in batch["members"]:
            try:
                members.append(ib.get(rid))
            except InboxError:
                continue
        if members and all(m.shredded_at for m in members):
            key_store(cfg).destroy(batch["request_id"])
            for f in (meta.with_suffix(".yaml"), meta):
                f.unlink(missing_ok=True)
                removed.append(str(f))
            for f in _run_folder_plaintext(cfg, batch["request_id"]):
                f.unlink()
                removed.append(str(f))
            log(f"batch {batch['request_id']}: all {len(members)} members shredded; its key destroyed")
    return removed


def enforce(cfg: Config, now: dt.datetime | None = None, log: Log = print) -> list[dict]:
    """Shred every due request (:func:`due`); returns one result per request shredded."""
    todo = due(cfg, now)
    if not todo:
        log(f"retention: nothing due (window {cfg.privacy.retention_days:g} days after a final decision)")
    return [shred(cfg, rec.request_id, log) for rec in todo]
