"""The request inbox: where deletion requests wait, and the state of each one.

``<state_dir>/inbox/<request_id>/`` holds ``request.yaml`` (the submitted file, byte for byte) and
``state.json`` (``request.yaml`` is removed, and ``shredded_at`` set, when retention shreds the
request: r2f.governance.retention)::

    {"request_id": ..., "state": "pending", "source_sha256": ..., "submitted_at": ...,
     "history": [{"state": "pending", "at": ...}, {"state": "validated", "at": ...}, ...],
     "result": {...}}                         # ids, versions, run ids, decision: no forget text

States: pending → validated → unlearned → evaluated → promoted | rejected | failed. A request in a
final state is never processed again. ``state.json`` is replaced atomically; a scheduled tick holds
``inbox/.lock`` (``fcntl``) for its whole run, so two ticks cannot pick up the same request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from r2f.config import Config
from r2f.engine.data import load_tofu
from r2f.errors import R2FError
from r2f.governance.locks import LockBusy
from r2f.governance.requests import eval_split, read_request, resolve
from r2f.governance.tracking_setup import make_tracker
from r2f.governance.validation import ValidationError, validate_request

STATES = ("pending", "validated", "unlearned", "evaluated", "promoted", "rejected", "failed")
FINAL = ("promoted", "rejected", "failed")
# pipeline stage -> the state a request reaches when the stage succeeds (promote: by the decision)
STAGE_STATE = {"validate": "validated", "unlearn": "unlearned", "evaluate": "evaluated"}


class InboxError(R2FError, RuntimeError):
    """The inbox cannot take or change a request; the message names the request and why."""


class TickBusy(InboxError):
    """Another tick holds the inbox lock."""


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class Record:
    request_id: str
    state: str
    source_sha256: str
    submitted_at: str
    created_at: str
    history: list[dict] = field(default_factory=list)
    result: dict = field(default_factory=dict)
    shredded_at: str | None = None  # retention destroyed the key and removed request.yaml then

    def to_dict(self) -> dict:
        return {"request_id": self.request_id, "state": self.state, "source_sha256": self.source_sha256,
                "submitted_at": self.submitted_at, "created_at": self.created_at, "history": self.history,
                "result": self.result, "shredded_at": self.shredded_at}

    def at(self, state: str) -> str | None:
        return next((h["at"] for h in reversed(self.history) if h["state"] == state), None)


def inbox_dir(cfg: Config) -> Path:
    return Path(cfg.state_dir) / "inbox"


class Inbox:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- reading --------------------------------------------------------------------------------
    def path(self, request_id: str) -> Path:
        return self.root / request_id / "request.yaml"

    def get(self, request_id: str) -> Record:
        f = self.root / request_id / "state.json"
        if not f.is_file():
            raise InboxError(f"request {request_id}: not in the inbox ({self.root})")
        return Record(**json.loads(f.read_text()))

    def records(self) -> list[Record]:
        """Every request, oldest first (``created_at``, then submission time, then id)."""
        if not self.root.is_dir():
            return []
        recs = [self.get(d.name) for d in self.root.iterdir() if (d / "state.json").is_file()]
        return sorted(recs, key=lambda r: (r.created_at, r.submitted_at, r.request_id))

    def pending(self) -> list[Record]:
        return [r for r in self.records() if r.state not in FINAL]

    # -- writing --------------------------------------------------------------------------------
    def submit(self, src: str | Path, tofu) -> Record:
        """Validate ``src`` (schema, then the GX request suite against the data) and add it as
        ``pending``. Nothing is written when it is invalid or its id is taken (the same file
        submitted again returns the existing record unchanged)."""
        src = Path(src)
        req = read_request(src)
        data = src.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if (self.root / req.request_id / "state.json").is_file():
            rec = self.get(req.request_id)
            if rec.source_sha256 == sha:
                return rec
            raise InboxError(f"{src}: request_id {req.request_id} is already in the inbox ({rec.state}) with "
                             "different content; a request id is used once")
        report = validate_request(req.to_dict(), {q.id for q in tofu.split("full")}, set(range(200)),
                                  tofu.authors_named)
        if not report.success:
            lines = "\n".join(f"  - {f.describe()}" for f in report.failures)
            raise ValidationError(f"{src}: request {req.request_id} is invalid, nothing was submitted:\n{lines}",
                                  report.failures, [report])
        eval_split(resolve(req, tofu))  # rows the pipeline could never evaluate (retain authors): refused now
        at = now()
        rec = Record(req.request_id, "pending", sha, at, str(req.created_at), [{"state": "pending", "at": at}])
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{req.request_id}.", dir=self.root))
        try:
            (tmp / "request.yaml").write_bytes(data)
            (tmp / "state.json").write_text(json.dumps(rec.to_dict(), indent=2))
            os.rename(tmp, self.root / req.request_id)
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return rec

    def transition(self, request_id: str, state: str, **detail) -> Record:
        """Move a request to ``state`` (recorded with a timestamp and ``detail``: ids, reasons);
        a final state cannot be left."""
        if state not in STATES:
            raise InboxError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
        rec = self.get(request_id)
        if rec.state in FINAL:
            raise InboxError(f"request {request_id}: already {rec.state}; it is not processed again")
        rec.state = state
        rec.history.append({"state": state, "at": now(), **detail})
        rec.result.update({k: v for k, v in detail.items() if k != "reason"})
        self._save(rec)
        return rec

    def mark_shredded(self, request_id: str, at: str) -> Record:
        """Record the crypto-shredding of a final request and remove its plaintext request file."""
        rec = self.get(request_id)
        rec.shredded_at = at
        self._save(rec)
        self.path(request_id).unlink(missing_ok=True)
        return rec

    def _save(self, rec: Record) -> None:
        f = self.root / rec.request_id / "state.json"
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec.to_dict(), indent=2, default=str))
        os.replace(tmp, f)

    @contextlib.contextmanager
    def lock(self):
        """Exclusive inbox lock for one tick; ``TickBusy`` when another tick holds it."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise TickBusy(f"{self.root}: another tick is processing requests") from exc
            try:
                yield self
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def inbox(cfg: Config) -> Inbox:
    return Inbox(inbox_dir(cfg))


def advance(cfg: Config, request_id: str, stage: str, result: dict) -> None:
    """Record that ``stage`` finished for inbox request ``request_id`` (the flow calls this)."""
    ib = inbox(cfg)
    if stage in STAGE_STATE:
        keep = {"validate": (), "unlearn": ("mlflow_run_id", "eta", "method", "wall_s"), "evaluate": ()}[stage]
        ib.transition(request_id, STAGE_STATE[stage], **{k: result[k] for k in keep if k in result})
    elif stage == "promote":
        state = "promoted" if result.get("passed") else "rejected"
        ib.transition(request_id, state, model_version=result.get("version"),
                      champion_version=result.get("champion_version"))


def process_pending(cfg: Config, run: Callable[[Path, list[str]], dict], log=print) -> dict:
    """Process every pending request with ``run(request_file, inbox_ids)`` (the pipeline flow).
    Returns ``{"processed": [{request_id, state}], "busy": bool}``."""
    ib = inbox(cfg)
    try:
        with ib.lock():
            todo = ib.pending()
            if not todo:
                log("no pending deletion requests")
                return {"processed": [], "busy": False}
            log(f"{len(todo)} pending deletion request(s): {', '.join(r.request_id for r in todo)}")
            if cfg.schedule.mode == "batch" and len(todo) > 1:
                jobs = [(batch_request(cfg, ib, todo), [r.request_id for r in todo])]
            else:
                jobs = [(ib.path(r.request_id), [r.request_id]) for r in todo]
            for path, ids in jobs:
                if finished_in_registry(cfg, ib, path, ids, log):
                    continue
                try:
                    run(path, ids)
                except LockBusy as exc:  # a manual run holds the pipeline: try again next tick
                    log(f"{exc}; request(s) {', '.join(ids)} stay pending")
                    break
                except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the others
                    reason = f"{type(exc).__name__}: {exc}"[:2000]
                    for rid in ids:
                        if ib.get(rid).state not in FINAL:
                            ib.transition(rid, "failed", reason=reason)
                    log(f"request(s) {', '.join(ids)} failed: {reason.splitlines()[0]}")
            return {"processed": [{"request_id": r.request_id, "state": ib.get(r.request_id).state} for r in todo],
                    "busy": False}
    except TickBusy as exc:
        log(str(exc))
        return {"processed": [], "busy": True}


def finished_in_registry(cfg: Config, ib: Inbox, path: Path, ids: list[str], log) -> bool:
    """After a crash between the promotion and the inbox update: when the registry already holds
    the final decision on this job's request (a version tagged with its request id and
    ``decision`` promoted | rejected), record it in the inbox instead of unlearning again."""
    tracker = make_tracker(cfg)
    if not tracker.active:
        return False
    mv = tracker.final_version(cfg.tracking.target_model_name, read_request(path).request_id)
    if mv is None:
        return False
    for i in ids:
        if ib.get(i).state not in FINAL:
            ib.transition(i, mv.tags["decision"], model_version=int(mv.version), recovered=True)
    log(f"request(s) {', '.join(ids)}: already {mv.tags['decision']} as version {mv.version} "
        "(recorded by a run that stopped before updating the inbox); not processed again")
    return True


def batch_request(cfg: Config, ib: Inbox, recs: list[Record]) -> Path:
    """One request file for several pending requests: the union of their resolved rows."""
    import yaml

    tofu = load_tofu(cfg.data.tofu_dir)
    ids = [r.request_id for r in recs]
    rows = sorted({q.id for r in recs for q in resolve(read_request(ib.path(r.request_id)), tofu)})
    key = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:12]
    body = {"request_id": f"batch-{key}", "subject": f"batch of {len(ids)} requests",
            "selectors": {"question_ids": rows}, "requester": "r2f scheduler",
            "legal_basis": "batch of inbox requests " + ", ".join(ids)[:400], "created_at": now()}
    path = ib.root / ".batches" / f"batch-{key}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    path.with_suffix(".json").write_text(json.dumps({"request_id": f"batch-{key}", "members": ids}))  # retention
    return path
