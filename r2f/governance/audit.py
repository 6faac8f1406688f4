"""The lineage audit of one deletion request, reconstructed offline and verified.

``audit(cfg, request_id)`` finds the request's records (its inbox record and its MLflow run), then
follows the chain the pipeline recorded, one link at a time, re-computing every hash it can.
:data:`CHECKS` lists the links in order and is the one place that says what the audit verifies:
the request's MLflow run; the request file against the inbox record and the run; the selectors
re-resolved to the recorded forget rows; the git revision of the run; the DVC md5s the run
recorded; the forget set's DVC object (stored, intact, its rows hashing to the recorded digest);
the decoder (its DVC object, its MLflow run and registered version); the registered model's
weights against the sha256 recorded at registration; the gate decision against the registry tag
and the inbox state; the MLflow records against the lineage record sealed in the hash chain when the
request was decided (r2f.governance.chain); where ``champion`` points now. A request never unlearned (failed, or its data
rejected) is checked up to its request file only.

The forget set is AES-GCM ciphertext and its digests are HMACs under the request's key
(r2f.governance.privacy). Once retention has destroyed the key (crypto-shredding), the checks that
need the text or the key (the request file, the re-resolved rows, the forget set's rows) cannot run:
they are listed as not run, with the time of the shredding, and every other link is still verified.

Each check is ``{"check", "ok", "detail"}`` (``ok`` None: could not run, and why); the verdict is
VERIFIED when every check that ran passed, else the report names what does not match. The report
holds ids, versions and keyed digests only: never the subject's name or the forget-set text.
Rendering (markdown, json, html) is in r2f.governance.audit_report.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from r2f.config import Config
from r2f.digest import md5_file as _md5
from r2f.digest import sha256_file, weights_sha256
from r2f.engine.data import QA, load_tofu
from r2f.errors import R2FError
from r2f.governance.inbox import InboxError, Record, inbox
from r2f.governance.privacy import KeyShredded, PrivacyError, key_store, read_forget_set, rows_hmac
from r2f.governance.requests import DeletionRequest, RequestError, read_request, resolve
from r2f.governance.tracking import MlflowTracker, TrackingError
from r2f.governance.tracking_setup import make_tracker
from r2f.governance.versioning import cache_dir, find_root, remote_url


class AuditError(R2FError, RuntimeError):
    """The request cannot be audited at all (unknown id, no tracking store)."""


RUN_FOUND = "MLflow run of the request found"


@dataclass
class _Trail:
    """What the checks share: the request's records as found, what earlier links established, and
    the report they fill in (its sections in the order the links write them)."""

    cfg: Config
    tracker: MlflowTracker
    rec: Record | None  # the inbox record, None for a request run from a file
    run_id: str | None  # the request's run in the unlearning experiment
    tags: dict  # that run's tags
    report: dict
    checks: list[dict] = field(default_factory=list)
    req: DeletionRequest | None = None  # the request file, parsed (``_request_file``)
    md5s: dict = field(default_factory=dict)  # the DVC md5s the run recorded (``_dvc_md5s``)
    cache: Path | None = None  # the DVC cache and local remote they are looked up in
    remote: Path | None = None
    key: bytes | None = None  # the request's key; None once shredded (``shredded_at``) or never made
    shredded_at: str | None = None

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        return ok

    def not_run(self, name: str, why: str) -> None:
        """A check that cannot run any more (the key is destroyed): listed, not failed."""
        self.checks.append({"check": name, "ok": None, "detail": why})

    @property
    def shredded(self) -> str:
        return f"key destroyed: forget set shredded at {self.shredded_at}"

    @property
    def unlearned(self) -> bool:
        """False for a request that failed or whose data was rejected before any model was registered."""
        never = (self.rec and self.rec.state == "failed") or self.tags.get("status") == "rejected_data"
        return not never or bool(self.tags.get("registered_version"))


def _dvc_object(cache: Path, remote: Path | None, md5: str) -> Path | None:
    rel = Path("files/md5") / md5[:2] / md5[2:]
    for base in (cache, remote):
        if base is not None and (base / rel).is_file():
            return base / rel
    return None


def _verify_dvc(t: _Trail, label: str, md5: str) -> dict[str, Path]:
    """Check a DVC object (file or ``.dir``) is stored and hashes to its name; returns
    ``relpath -> stored file`` for a directory."""
    obj = _dvc_object(t.cache, t.remote, md5)
    if obj is None:
        t.check(f"{label}: DVC object {md5} stored", False, "not in the DVC cache or the remote")
        return {}
    got = _md5(obj)
    if not t.check(f"{label}: DVC object {md5} intact", got == md5.removesuffix(".dir"),
                   f"{obj}" if got == md5.removesuffix(".dir") else f"{obj} hashes to {got}"):
        return {}
    if not md5.endswith(".dir"):
        return {"": obj}
    files, bad = {}, []
    for entry in json.loads(obj.read_text()):
        f = _dvc_object(t.cache, t.remote, entry["md5"])
        if f is None or _md5(f) != entry["md5"]:
            bad.append(entry["relpath"])
        else:
            files[entry["relpath"]] = f
    t.check(f"{label}: every file of the DVC folder stored and intact", not bad,
            f"{len(files)} files" if not bad else f"missing or altered: {bad[:10]}")
    return files


def _rows_hmac_of(t: _Trail, path: Path) -> str:
    rows = read_forget_set(t.key, t.report["request_id"], path)
    return rows_hmac(t.key, [QA(r["id"], r["question"], r["answer"]) for r in rows])


# -- the links, in lineage order -----------------------------------------------------------------------
def _mlflow_run(t: _Trail) -> None:
    """The request's run in the unlearning experiment exists."""
    t.check(RUN_FOUND, t.run_id is not None, t.run_id or "none")


def _request_file(t: _Trail) -> None:
    """The request file (inbox copy, or the file the run was given) hashes to the sha256 in the inbox
    record and in the run, and parses."""
    src = inbox(t.cfg).path(t.report["request_id"]) if t.rec else Path(t.tags.get("request_source", ""))
    if t.shredded_at and not src.is_file():  # retention removed the plaintext request with the key
        t.not_run("request file matches its records", t.shredded)
        return
    if not src.is_file():
        t.check("request file present", False, f"{src} missing")
        return
    sha = sha256_file(src)
    t.report["request"] = {"file": str(src), "sha256": sha}
    if t.rec:
        t.check("request file matches the inbox record", sha == t.rec.source_sha256,
                f"{sha[:16]} vs recorded {t.rec.source_sha256[:16]}")
    if "request_sha256" in t.tags:
        t.check("request file matches the MLflow run", sha == t.tags["request_sha256"],
                f"{sha[:16]} vs recorded {t.tags['request_sha256'][:16]}")
    try:
        t.req = read_request(src)
        t.report["request"].update({"created_at": str(t.req.created_at),
                                    **(t.req.digests(t.key) if t.key else {})})
    except RequestError as exc:
        t.check("request file parses", False, str(exc))


def _forget_rows(t: _Trail) -> None:
    """The request's selectors, re-resolved against the packaged TOFU data, give the recorded
    ``forget_rows_hmac`` (keyed: runs only while the request's key exists)."""
    recorded = t.tags.get("forget_rows_hmac")
    rows = t.report["forget_rows"] = {"rows_hmac_recorded": recorded, "git_sha": t.tags.get("git_sha")}
    if t.key is None:
        t.not_run("selectors re-resolve to the recorded forget rows", t.shredded if t.shredded_at else "no key")
        return
    if t.req is None:
        return
    try:
        items = resolve(t.req, load_tofu(t.cfg.data.tofu_dir))
        rows.update(n_rows=len(items), item_ids=[q.id for q in items])
        got = rows_hmac(t.key, items)
        t.check("selectors re-resolve to the recorded forget rows", got == recorded,
                f"{got[:16]} vs recorded {str(recorded)[:16]}")
    except (RequestError, ValueError) as exc:
        t.check("selectors re-resolve", False, str(exc))


def _git_revision(t: _Trail) -> None:
    """The git revision the run ran at is a commit of this repository."""
    sha = t.tags.get("git_sha", "")
    if len(sha) == 40 and all(c in "0123456789abcdef" for c in sha):
        known = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], capture_output=True,
                               check=False).returncode == 0
        t.check("git revision of the run exists in this repository", known, sha[:12])


def _dvc_md5s(t: _Trail) -> None:
    """The run recorded the DVC md5 of every stage out (``dvc/md5s.json``); finds the DVC cache and
    local remote to look them up in."""
    md5s = t.tracker.load_json_artifact(t.run_id, "dvc/md5s.json") if t.run_id else None
    root = find_root(Path(t.cfg.pipeline.request).resolve().parent) or find_root()
    if md5s is None:
        t.check("DVC md5s recorded in the MLflow run", False, "dvc/md5s.json missing")
        md5s = {}
    t.md5s = md5s
    t.cache = cache_dir(root) if root else None
    t.remote = Path(remote_url(t.cfg, root)) if root and "://" not in remote_url(t.cfg, root) else None


def _forget_set(t: _Trail) -> None:
    """The forget set's DVC object is stored and intact (the ciphertext: this runs after shredding too),
    and, while the key exists, it decrypts to rows whose keyed digest is the recorded one."""
    rows = t.report["forget_rows"]
    key = next((k for k in t.md5s if k.startswith("prepare:") and k.endswith("/request")), None)
    if key and t.cache:
        files = _verify_dvc(t, "forget set", t.md5s[key])
        name = "versioned forget set decrypts to the recorded rows"
        if "forget.jsonl.enc" in files and t.key is None:
            t.not_run(name, t.shredded if t.shredded_at else "no key")
        elif "forget.jsonl.enc" in files:
            recorded = rows["rows_hmac_recorded"]
            try:
                got = _rows_hmac_of(t, files["forget.jsonl.enc"])
            except PrivacyError as exc:
                got = f"unreadable ({exc})"
            t.check(name, got == recorded, f"{got[:16]} vs recorded {str(recorded)[:16]}")
        elif files:
            t.check("versioned forget set is encrypted", False, f"no forget.jsonl.enc in {sorted(files)[:5]}")
        rows["dvc_md5"] = t.md5s[key]
    elif not key:
        t.check("forget set's DVC md5 recorded", False, "no prepare:…/request entry")


def _decoder(t: _Trail) -> None:
    """The decoder's DVC object is stored and intact; its MLflow run (by decoder hash) exists, with
    the proxy architecture it was fitted on and its registered version."""
    dkey = next((k for k in t.md5s if k.startswith("train_decoder:") and k.endswith("/decoder")), None)
    dec: dict = {"dvc_md5": t.md5s.get(dkey) if dkey else None}
    if dkey and t.cache:
        files = _verify_dvc(t, "decoder", t.md5s[dkey])
        meta = json.loads(files["decoder.json"].read_text()) if "decoder.json" in files else {}
        dec["decoder_hash"] = meta.get("key") or t.tags.get("decoder_hash")
    dhash = t.tags.get("decoder_hash") or dec.get("decoder_hash")
    tracking = t.cfg.tracking
    drun = t.tracker.find_run(tracking.decoder_experiment, {"decoder_hash": dhash}) if dhash else None
    if drun:
        params = t.tracker.run(drun).data.params
        dec.update(mlflow_run_id=drun, proxy={k.removeprefix("proxy."): v for k, v in params.items()
                                              if k.startswith("proxy.")},
                   version=t.tracker.version_of_run(tracking.decoder_model_name, drun))
    t.check("decoder's MLflow run found", drun is not None, f"decoder_hash {str(dhash)[:24]}")
    dec.update(used=t.tags.get("decoder_used"), trained_weights=t.tags.get("decoder_trained_weights"))
    t.report["decoder"] = dec


def _model_weights(t: _Trail) -> None:
    """The model before and after; the registered version's weights, downloaded from the registry,
    hash to the ``weights_sha256`` recorded at registration."""
    name, after = t.cfg.tracking.target_model_name, t.tags.get("registered_version")
    models = t.report["models"] = {"registered_model": name, "before": t.tags.get("start_model_version"),
                                   "before_source": t.tags.get("start_model_source"), "after": after}
    if not after:
        return
    mv = t.tracker.model_version(name, after)
    models["after_gate_tag"] = mv.tags.get("gate.passed")
    recorded = mv.tags.get("weights_sha256")
    if not recorded:
        t.check("weights hash recorded on the registered version", False, f"version {after} has no weights_sha256")
        return
    with tempfile.TemporaryDirectory(dir=Path(t.cfg.state_dir)) as tmp:
        try:
            got = weights_sha256(t.tracker.download_model(name, int(after), tmp))
        except TrackingError as exc:
            got = f"missing ({exc})"
    t.check("registered model weights match the hash recorded at registration", got == recorded,
            f"{got[:16]} vs recorded {recorded[:16]}")


def _gate(t: _Trail) -> None:
    """The gate's decision (``gate/decision.json``: every rule) agrees with the registered version's
    ``gate.passed`` tag and with the inbox state."""
    decision = t.tracker.load_json_artifact(t.run_id, "gate/decision.json") if t.run_id else None
    if not decision:
        t.check("gate decision recorded", False, "gate/decision.json missing from the run")
        return
    t.report["gate"] = {"passed": decision["passed"], "decided_at": decision.get("decided_at"),
                        "rules": decision["rules"], "champion_model_utility": decision.get("champion_model_utility"),
                        "base_model_utility": decision.get("base_model_utility")}
    tag = t.report["models"].get("after_gate_tag")
    if t.tags.get("registered_version"):
        t.check("registry tag agrees with the gate decision", tag == str(bool(decision["passed"])).lower(),
                f"tag {tag} vs decision {decision['passed']}")
    if t.rec and t.rec.state in ("promoted", "rejected"):
        t.check("inbox state agrees with the gate decision",
                (t.rec.state == "promoted") == bool(decision["passed"]), t.rec.state)


def _lineage_chain(t: _Trail) -> None:
    """The request's MLflow records (tags, params, metrics, gate decision, registry version tags) equal
    the lineage record sealed when it was decided; the chain links hold and end at the head stored in
    the DVC remote (r2f.governance.chain)."""
    from r2f.governance.chain import ChainError, verify

    if not t.run_id:
        return
    try:
        results = verify(t.cfg, t.tracker, t.run_id)
    except ChainError as exc:
        t.check("lineage chain readable", False, str(exc))
        return
    for name, ok, detail in results:
        if ok is None:
            t.not_run(name, detail)
        else:
            t.check(name, ok, detail)


def _champion(t: _Trail) -> None:
    """Where the ``champion`` alias points now (recorded, nothing to re-compute)."""
    t.report["models"]["champion_now"] = t.tracker.alias_version(t.cfg.tracking.target_model_name, "champion")


# What the audit verifies, link by link in lineage order: (check, also run for a request never
# unlearned). docs/requests.md ("Audit") describes the same list.
CHECKS: tuple[tuple[Callable[[_Trail], None], bool], ...] = (
    (_mlflow_run, True),
    (_request_file, True),
    (_forget_rows, False),
    (_git_revision, False),
    (_dvc_md5s, False),
    (_forget_set, False),
    (_decoder, False),
    (_model_weights, False),
    (_gate, False),
    (_lineage_chain, False),
    (_champion, False),
)


def _trail(cfg: Config, request_id: str) -> _Trail:
    """The request's inbox record and MLflow run; ``AuditError`` when there is neither."""
    tracker = make_tracker(cfg)
    if not tracker.active:
        raise AuditError("tracking is disabled (tracking.enabled: false): there is no record to audit")
    try:
        rec = inbox(cfg).get(request_id)
    except InboxError:
        rec = None
    run_id = tracker.find_run(cfg.tracking.unlearning_experiment, {"request_id": request_id})
    if rec is None and run_id is None:
        raise AuditError(f"request {request_id}: not in the inbox and no MLflow run in "
                         f"{cfg.tracking.unlearning_experiment}")
    tags = dict(tracker.run(run_id).data.tags) if run_id else {}
    report = {"request_id": request_id, "states": rec.history if rec else [],
              "state": rec.state if rec else tags.get("status")}
    key, shredded_at = None, None
    try:
        key = key_store(cfg).get(request_id)
    except KeyShredded as exc:
        shredded_at = report["forget_set_shredded_at"] = exc.at
    except PrivacyError:
        pass
    return _Trail(cfg, tracker, rec, run_id, tags, report, key=key, shredded_at=shredded_at)


def audit(cfg: Config, request_id: str) -> dict:
    """The lineage report of ``request_id``: every link of :data:`CHECKS` in turn (see the module
    doc); raises ``AuditError`` when there is nothing to audit."""
    t = _trail(cfg, request_id)
    for check, for_every_request in CHECKS:
        if for_every_request or t.unlearned:
            check(t)
    rep, failed = t.report, [c["check"] for c in t.checks if c["ok"] is False]
    rep["checks"] = t.checks
    rep["not_run"] = [c["check"] for c in t.checks if c["ok"] is None]
    if t.unlearned:
        rep["verified"] = not failed
        rep["verdict"] = "VERIFIED" if not failed else "MISMATCH: " + "; ".join(failed)
        return rep
    # never unlearned: nothing downstream to verify; the reason is in the state history
    rep["verified"] = all(c != RUN_FOUND for c in failed)
    reason = next((h.get("reason") for h in reversed(rep["states"]) if h.get("reason")), t.tags.get("status"))
    rep["verdict"] = ("VERIFIED (not processed: " + str(reason)[:300] + ")" if rep["verified"]
                      else "MISMATCH: " + "; ".join(failed))
    return rep
