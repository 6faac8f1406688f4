"""The lineage audit of one deletion request, reconstructed offline and verified.

``audit(cfg, request_id)`` follows the chain the pipeline recorded and re-computes every hash it can:

1. the request file (inbox copy, or the file the main job ran) and its sha256 — against the inbox
   record and the MLflow run's ``request_sha256`` tag;
2. the resolved forget rows: the selectors re-resolved against the packaged TOFU data must give the
   ``forget_rows_sha256`` the run recorded; the forget set's DVC object (md5 from the run's
   ``dvc/md5s.json``) must be in the DVC cache or remote, hash to its name, and its rows must hash
   to the same ``forget_rows_sha256``; the git revision the run ran at;
3. the decoder: its MLflow run in the decoder experiment (by decoder hash), its registered
   version, the proxy architecture it was fitted on, the DVC md5 of the decoder folder;
4. the model before (the version the request was unlearned from) and after (the registered
   candidate), the weights' sha256 recorded at registration re-computed from the registry's copy,
   and where ``champion`` points now;
5. every gate rule with its value and threshold, and the decision;
6. who asked and when, and each state change.

Each check is ``{"check", "ok", "detail"}``; the verdict is VERIFIED when every check passed, else
the report names what does not match. The report holds ids, versions and hashes only: never the
subject's name or the forget-set text (the subject appears as its sha256).
"""

from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path

from r2f.config import Config
from r2f.digest import sha256_file
from r2f.errors import R2FError


class AuditError(R2FError, RuntimeError):
    """The request cannot be audited at all (unknown id, no tracking store)."""


def _md5(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 - DVC's content address, not a security hash
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 over a model folder's weight files (name + content), recorded at registration."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
    for p in files:
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()


class _Checks:
    def __init__(self):
        self.items: list[dict] = []

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.items.append({"check": name, "ok": bool(ok), "detail": detail})
        return ok


def _dvc_object(cache: Path, remote: Path | None, md5: str) -> Path | None:
    rel = Path("files/md5") / md5[:2] / md5[2:]
    for base in (cache, remote):
        if base is not None and (base / rel).is_file():
            return base / rel
    return None


def _verify_dvc(ck: _Checks, label: str, md5: str, cache: Path, remote: Path | None) -> dict[str, Path]:
    """Check a DVC object (file or ``.dir``) is stored and hashes to its name; returns
    ``relpath -> stored file`` for a directory."""
    obj = _dvc_object(cache, remote, md5)
    if obj is None:
        ck.add(f"{label}: DVC object {md5} stored", False, "not in the DVC cache or the remote")
        return {}
    got = _md5(obj)
    if not ck.add(f"{label}: DVC object {md5} intact", got == md5.removesuffix(".dir"),
                  f"{obj}" if got == md5.removesuffix(".dir") else f"{obj} hashes to {got}"):
        return {}
    if not md5.endswith(".dir"):
        return {"": obj}
    files, bad = {}, []
    for entry in json.loads(obj.read_text()):
        f = _dvc_object(cache, remote, entry["md5"])
        if f is None or _md5(f) != entry["md5"]:
            bad.append(entry["relpath"])
        else:
            files[entry["relpath"]] = f
    ck.add(f"{label}: every file of the DVC folder stored and intact", not bad,
           f"{len(files)} files" if not bad else f"missing or altered: {bad[:10]}")
    return files


def audit(cfg: Config, request_id: str) -> dict:
    """The lineage report of ``request_id`` (see the module doc); raises ``AuditError`` when there
    is nothing to audit."""
    from r2f.engine.data import load_tofu
    from r2f.governance.inbox import InboxError, inbox
    from r2f.governance.requests import RequestError, read_request, resolve, rows_digest
    from r2f.governance.tracking import TrackingError, make_tracker
    from r2f.governance.versioning import cache_dir, find_root, remote_url

    tracker = make_tracker(cfg)
    if not tracker.active:
        raise AuditError("tracking is disabled (tracking.enabled: false): there is no record to audit")
    ck = _Checks()
    rep: dict = {"request_id": request_id}

    # 0. the records: inbox state and the MLflow run of the request
    try:
        rec = inbox(cfg).get(request_id)
    except InboxError:
        rec = None
    run_id = tracker.find_run(cfg.tracking.unlearning_experiment, {"request_id": request_id})
    if rec is None and run_id is None:
        raise AuditError(f"request {request_id}: not in the inbox and no MLflow run in "
                         f"{cfg.tracking.unlearning_experiment}")
    client = tracker.client
    run = client.get_run(run_id) if run_id else None
    tags = dict(run.data.tags) if run else {}
    rep["states"] = rec.history if rec else []
    rep["state"] = rec.state if rec else tags.get("status")
    ck.add("MLflow run of the request found", run is not None, run_id or "none")

    # 1. the request file
    src = inbox(cfg).path(request_id) if rec else Path(tags.get("request_source", ""))
    req = None
    if src.is_file():
        sha = sha256_file(src)
        rep["request"] = {"file": str(src), "sha256": sha}
        if rec:
            ck.add("request file matches the inbox record", sha == rec.source_sha256,
                   f"{sha[:16]} vs recorded {rec.source_sha256[:16]}")
        if "request_sha256" in tags:
            ck.add("request file matches the MLflow run", sha == tags["request_sha256"],
                   f"{sha[:16]} vs recorded {tags['request_sha256'][:16]}")
        try:
            req = read_request(src)
            rep["request"].update({"created_at": str(req.created_at), "requester": req.requester,
                                   **req.digests()})
        except RequestError as exc:
            ck.add("request file parses", False, str(exc))
    else:
        ck.add("request file present", False, f"{src} missing")

    if (rec and rec.state == "failed" or tags.get("status") == "rejected_data") and not tags.get("registered_version"):
        # never unlearned: nothing downstream to verify; the reason is in the state history
        rep["checks"] = ck.items
        rep["verified"] = all(c["ok"] for c in ck.items if c["check"] != "MLflow run of the request found")
        reason = next((h.get("reason") for h in reversed(rep["states"]) if h.get("reason")), tags.get("status"))
        rep["verdict"] = ("VERIFIED (not processed: " + str(reason)[:300] + ")" if rep["verified"]
                          else "MISMATCH: " + "; ".join(c["check"] for c in ck.items if not c["ok"]))
        return rep

    # 2. the forget rows: re-resolved from the data, and as versioned by DVC
    recorded = tags.get("forget_rows_sha256")
    rows: dict = {"rows_sha256_recorded": recorded, "git_sha": tags.get("git_sha")}
    if req is not None:
        try:
            items = resolve(req, load_tofu(cfg.data.tofu_dir))
            rows.update(n_rows=len(items), item_ids=[q.id for q in items])
            ck.add("selectors re-resolve to the recorded forget rows", rows_digest(items) == recorded,
                   f"{rows_digest(items)[:16]} vs recorded {str(recorded)[:16]}")
        except (RequestError, ValueError) as exc:
            ck.add("selectors re-resolve", False, str(exc))
    sha = tags.get("git_sha", "")
    if len(sha) == 40 and all(c in "0123456789abcdef" for c in sha):
        import subprocess

        known = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], capture_output=True,
                               check=False).returncode == 0
        ck.add("git revision of the run exists in this repository", known, sha[:12])
    md5s = tracker.load_json_artifact(run_id, "dvc/md5s.json") if run_id else None
    root = find_root(Path(cfg.pipeline.request).resolve().parent) or find_root()
    if md5s is None:
        ck.add("DVC md5s recorded in the MLflow run", False, "dvc/md5s.json missing")
        md5s = {}
    cache = cache_dir(root) if root else None
    remote = Path(remote_url(cfg, root)) if root and "://" not in remote_url(cfg, root) else None
    key = next((k for k in md5s if k.startswith("prepare:") and k.endswith("/request")), None)
    if key and cache:
        files = _verify_dvc(ck, "forget set", md5s[key], cache, remote)
        if "forget.jsonl" in files:
            got = _rows_digest_of(files["forget.jsonl"])
            ck.add("versioned forget set hashes to the recorded rows digest", got == recorded,
                   f"{got[:16]} vs recorded {str(recorded)[:16]}")
        rows["dvc_md5"] = md5s[key]
    elif not key:
        ck.add("forget set's DVC md5 recorded", False, "no prepare:…/request entry")
    rep["forget_rows"] = rows

    # 3. the decoder
    dkey = next((k for k in md5s if k.startswith("train_decoder:") and k.endswith("/decoder")), None)
    dec: dict = {"dvc_md5": md5s.get(dkey) if dkey else None}
    if dkey and cache:
        files = _verify_dvc(ck, "decoder", md5s[dkey], cache, remote)
        meta = json.loads(files["decoder.json"].read_text()) if "decoder.json" in files else {}
        dec["decoder_hash"] = meta.get("key") or tags.get("decoder_hash")
    dhash = tags.get("decoder_hash") or dec.get("decoder_hash")
    drun = tracker.find_run(cfg.tracking.decoder_experiment, {"decoder_hash": dhash}) if dhash else None
    if drun:
        d = client.get_run(drun)
        dec.update(mlflow_run_id=drun, proxy={k.removeprefix("proxy."): v for k, v in d.data.params.items()
                                              if k.startswith("proxy.")},
                   version=_version_of_run(client, cfg.tracking.decoder_model_name, drun))
    ck.add("decoder's MLflow run found", drun is not None, f"decoder_hash {str(dhash)[:24]}")
    rep["decoder"] = dec

    # 4. the models before and after
    name = cfg.tracking.target_model_name
    after = tags.get("registered_version")
    models = {"registered_model": name, "before": tags.get("start_model_version"),
              "before_source": tags.get("start_model_source"), "after": after}
    if after:
        mv = client.get_model_version(name, after)
        models["after_gate_tag"] = mv.tags.get("gate.passed")
        recorded_w = mv.tags.get("weights_sha256")
        if recorded_w:
            import tempfile

            with tempfile.TemporaryDirectory(dir=Path(cfg.state_dir)) as tmp:
                try:
                    got = weights_sha256(tracker.download_model(name, int(after), tmp))
                except TrackingError as exc:
                    got = f"missing ({exc})"
            ck.add("registered model weights match the hash recorded at registration", got == recorded_w,
                   f"{got[:16]} vs recorded {recorded_w[:16]}")
        else:
            ck.add("weights hash recorded on the registered version", False, f"version {after} has no weights_sha256")
    from r2f.governance.registry import get_alias_version

    models["champion_now"] = get_alias_version(client, name, "champion")
    rep["models"] = models

    # 5. gate
    decision = tracker.load_json_artifact(run_id, "gate/decision.json") if run_id else None
    if decision:
        rep["gate"] = {"passed": decision["passed"], "decided_at": decision.get("decided_at"),
                       "rules": decision["rules"], "champion_model_utility": decision.get("champion_model_utility")}
        if after:
            ck.add("registry tag agrees with the gate decision",
                   models.get("after_gate_tag") == str(bool(decision["passed"])).lower(),
                   f"tag {models.get('after_gate_tag')} vs decision {decision['passed']}")
        if rec and rec.state in ("promoted", "rejected"):
            ck.add("inbox state agrees with the gate decision",
                   (rec.state == "promoted") == bool(decision["passed"]), rec.state)
    else:
        ck.add("gate decision recorded", False, "gate/decision.json missing from the run")

    rep["checks"] = ck.items
    rep["verified"] = all(c["ok"] for c in ck.items)
    rep["verdict"] = "VERIFIED" if rep["verified"] else "MISMATCH: " + "; ".join(
        c["check"] for c in ck.items if not c["ok"])
    return rep


def _rows_digest_of(path: Path) -> str:
    from r2f.engine.data import QA
    from r2f.governance.requests import rows_digest

    rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return rows_digest([QA(r["id"], r["question"], r["answer"]) for r in rows])


def _version_of_run(client, name: str, run_id: str) -> int | None:
    try:
        vs = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except Exception:  # noqa: BLE001
        return None
    return int(vs[0].version) if vs else None


# -- rendering ----------------------------------------------------------------------------------------
def to_markdown(rep: dict) -> str:
    lines = [f"# Audit of deletion request {rep['request_id']}", "", f"**{rep['verdict']}**", "",
             f"State: {rep.get('state')}", ""]
    r = rep.get("request") or {}
    lines += ["## Request", "", f"- file: `{r.get('file')}` sha256 `{r.get('sha256')}`",
              f"- created_at: {r.get('created_at')}; requester: {r.get('requester')}",
              f"- subject sha256: `{r.get('subject_sha256')}`; legal basis sha256: `{r.get('legal_basis_sha256')}`", ""]
    f = rep.get("forget_rows") or {}
    ids = f.get("item_ids") or []
    lines += ["## Forget rows", "", f"- {f.get('n_rows')} rows: {', '.join(ids[:8])}{' …' if len(ids) > 8 else ''}",
              f"- rows sha256 `{f.get('rows_sha256_recorded')}`; DVC md5 `{f.get('dvc_md5')}`; git `{f.get('git_sha')}`", ""]
    d = rep.get("decoder") or {}
    lines += ["## Decoder", "", f"- hash `{d.get('decoder_hash')}`, MLflow run `{d.get('mlflow_run_id')}`, "
              f"registered version {d.get('version')}; DVC md5 `{d.get('dvc_md5')}`",
              f"- proxy: {json.dumps(d.get('proxy') or {}, sort_keys=True)}", ""]
    m = rep.get("models") or {}
    before = (f"version {m['before']} (the champion then)" if m.get("before_source") == "champion"
              else "the untouched target" + (f" (version {m['before']})" if m.get("before") not in (None, "None") else ""))
    lines += ["## Model", "", f"- {m.get('registered_model')}: {before} → version {m.get('after')}; "
              f"champion now: version {m.get('champion_now')}", ""]
    g = rep.get("gate")
    if g:
        lines += ["## Gate", "", f"Decision: {'PASSED' if g['passed'] else 'FAILED'} at {g.get('decided_at')}", "",
                  "| rule | value | threshold | passed |", "|---|---|---|---|"]
        lines += [f"| {x['name']} | {x.get('value')} | {x.get('threshold')} | {x.get('passed')} |" for x in g["rules"]]
        lines.append("")
    lines += ["## State history", ""] + [f"- {h['at']}: {h['state']}"
                                         + (f" ({h['reason'][:200]})" if h.get("reason") else "")
                                          for h in rep.get("states") or []]
    lines += ["", "## Checks", "", "| check | ok | detail |", "|---|---|---|"]
    lines += [f"| {c['check']} | {'yes' if c['ok'] else '**NO**'} | {c['detail']} |" for c in rep["checks"]]
    return "\n".join(lines) + "\n"


def render(rep: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rep, indent=2, default=str)
    md = to_markdown(rep)
    if fmt == "md":
        return md
    if fmt == "html":
        body = html.escape(md)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>Audit {html.escape(rep['request_id'])}"
                f"</title></head><body><pre>{body}</pre></body></html>\n")
    raise ValueError(f"format {fmt!r}: expected md, json or html")
