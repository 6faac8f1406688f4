"""Tamper evidence for the tracking records: every decided request's lineage record, sealed in a hash
chain whose head is kept outside the MLflow store.

The audit re-computes hashes of files (the request, DVC objects, registered weights), but the
records that tie them together (run tags, params, metrics, the gate decision, the registry's
version tags) live in the MLflow database, and whoever can rewrite that database could rewrite them
consistently. So when a request is decided, :func:`seal` reads its records back from MLflow
(:func:`record_of`) and appends ``{seq, request_id, run_id, sealed_at, record, prev, hash}`` to the
chain ``r2f-lineage/chain.jsonl`` in the DVC remote, with ``hash = sha256(prev + canonical JSON of the
rest)``, and writes the chain's head (``seq``, ``hash``) beside it (``r2f-lineage/HEAD.json``). The
remote is a store that the tracking server's writers need not be able to write, and the one store
that hosts sharing a registry also share; ``promote`` seals inside the promotion lease
(r2f.governance.lease), so appends from several hosts never interleave.

:func:`verify` (the audit's last check) re-reads the request's records from MLflow now, and checks
that they equal the sealed record, that every link of the chain holds, and that the chain ends at
the head stored in the remote. A rewritten MLflow row, a rewritten chain file, or a chain cut short
then fails the audit (exit 4).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from r2f.config import Config
from r2f.errors import R2FError

# the run tags that make up the lineage (not mlflow.* system tags, nor tags added later by design,
# such as retention's forget_set_shredded_at or the run's status)
RUN_TAGS = ("request_id", "method", "git_sha", "config_hash", "forget_rows_hmac", "decoder_hash",
            "registered_version", "start_model_version", "start_model_source", "request_sha256", "gate.passed")
VERSION_TAGS = ("request_id", "forget_rows_hmac", "weights_sha256", "gate.passed", "decision")
ARTIFACTS = ("gate/decision.json", "dvc/md5s.json")
GENESIS = "0" * 64


class ChainError(R2FError, RuntimeError):
    """The lineage chain cannot be written or read (the remote is unreachable, the file is damaged)."""


def _canon(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def lineage_url(cfg: Config, name: str) -> str:
    """``r2f-lineage/<name>`` in the project's DVC remote (``versioning.remote_url``, default the local
    remote under the state folder)."""
    from r2f.governance.versioning import find_root, remote_url

    root = find_root(Path(cfg.pipeline.request).resolve().parent) or find_root() or Path.cwd()
    return remote_url(cfg, root).rstrip("/") + f"/r2f-lineage/{name}"


def _read(cfg: Config, name: str) -> bytes | None:
    url = lineage_url(cfg, name)
    fs, path = _fs(cfg, url)
    try:
        return fs.cat_file(path) if fs.exists(path) else None
    except OSError as exc:
        raise ChainError(f"{url}: cannot be read: {exc}") from exc


def _write(cfg: Config, name: str, data: bytes) -> None:
    url = lineage_url(cfg, name)
    fs, path = _fs(cfg, url)
    try:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, data)
    except OSError as exc:
        raise ChainError(f"{url}: cannot be written: {exc}") from exc


def _fs(cfg: Config, url: str):
    import fsspec

    opts = {}
    if url.startswith("s3://"):
        o = cfg.versioning.remote_options
        if "endpointurl" in o:
            opts["endpoint_url"] = o["endpointurl"]
        if "region" in o:
            opts["client_kwargs"] = {"region_name": o["region"]}
    return fsspec.core.url_to_fs(url, **opts)


def read_head(cfg: Config) -> dict | None:
    raw = _read(cfg, "HEAD.json")
    try:
        return None if raw is None else json.loads(raw)
    except ValueError as exc:
        raise ChainError(f"{lineage_url(cfg, 'HEAD.json')}: not a lineage head: {exc}") from exc


def read_chain(cfg: Config) -> list[dict]:
    raw = _read(cfg, "chain.jsonl")
    try:
        return [json.loads(ln) for ln in (raw or b"").decode().splitlines() if ln.strip()]
    except ValueError as exc:
        raise ChainError(f"{lineage_url(cfg, 'chain.jsonl')}: not a lineage chain: {exc}") from exc


def write_chain(cfg: Config, chain: list[dict]) -> None:
    _write(cfg, "chain.jsonl", "".join(json.dumps(e, sort_keys=True) + "\n" for e in chain).encode())


def link_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(entry["prev"].encode() + _canon(body)).hexdigest()


def record_of(tracker, cfg: Config, run_id: str) -> dict:
    """The request's lineage as MLflow holds it now: the lineage tags, every param and metric of its
    run, the sha256 of its gate decision and DVC md5 artifacts, and its registered version's tags."""
    run = tracker.run(run_id)
    tags = run.data.tags
    rec = {"run_tags": {k: tags[k] for k in RUN_TAGS if k in tags}, "params": dict(run.data.params),
           "metrics": {k: float(v) for k, v in run.data.metrics.items()}, "artifacts": {}}
    for a in ARTIFACTS:
        obj = tracker.load_json_artifact(run_id, a)
        rec["artifacts"][a] = hashlib.sha256(_canon(obj)).hexdigest() if obj is not None else None
    version = tags.get("registered_version")
    if version:
        mv = tracker.model_version(cfg.tracking.target_model_name, version)
        rec["version_tags"] = {k: mv.tags[k] for k in VERSION_TAGS if k in mv.tags}
    return rec


def seal(cfg: Config, tracker, run_id: str, request_id: str) -> dict:
    """Append the request's record to the chain and move the head in the remote; returns the entry.
    Sealing the same run again (a rerun after a crash) appends nothing when its record is unchanged."""
    chain = read_chain(cfg)
    record = record_of(tracker, cfg, run_id)
    mine = [e for e in chain if e["run_id"] == run_id]
    if mine and mine[-1]["record"] == record:
        return mine[-1]
    prev = chain[-1]["hash"] if chain else GENESIS
    entry = {"seq": len(chain), "request_id": request_id, "run_id": run_id,
             "sealed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "record": record, "prev": prev}
    entry["hash"] = link_hash(entry)
    write_chain(cfg, [*chain, entry])
    _write(cfg, "HEAD.json", _canon({"seq": entry["seq"], "hash": entry["hash"]}))
    tracker.set_run_tag(run_id, "lineage_seq", str(entry["seq"]))
    return entry


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


def verify(cfg: Config, tracker, run_id: str) -> list[tuple[str, bool | None, str]]:
    """The audit's checks for one request: (name, ok or None for not run, detail)."""
    chain = read_chain(cfg)
    mine = [e for e in chain if e["run_id"] == run_id]
    sealed_tag = tracker.run(run_id).data.tags.get("lineage_seq")
    if not mine:
        if sealed_tag is None:
            return [("lineage record sealed", None, "the request was decided before lineage sealing existed, "
                                                    "or never decided")]
        return [("lineage record sealed", False, f"the run says seq {sealed_tag}; the chain has no record of it")]
    out = []
    broken = [e["seq"] for i, e in enumerate(chain)
              if e.get("seq") != i or e["prev"] != (chain[i - 1]["hash"] if i else GENESIS) or link_hash(e) != e["hash"]]
    out.append(("lineage chain links hold", not broken, f"{len(chain)} records" if not broken
                else f"broken at seq {broken[:5]}"))
    head = read_head(cfg)
    ok = head is not None and head.get("hash") == chain[-1]["hash"] and head.get("seq") == len(chain) - 1
    out.append(("lineage chain ends at the head stored in the DVC remote", ok,
                f"head seq {head and head.get('seq')} vs chain {len(chain) - 1}"))
    diff = _diff(mine[-1]["record"], record_of(tracker, cfg, run_id))
    out.append(("MLflow records match the sealed lineage record", not diff,
                f"sealed at {mine[-1]['sealed_at']} (seq {mine[-1]['seq']})" if not diff
                else "changed since sealing: " + ", ".join(diff[:10])))
    return out
