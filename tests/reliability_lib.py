"""Projects and real processes for the reliability tests and bench (issue #8): a fresh tiny project,
`r2f` subprocesses (run to the end, or SIGKILLed at a log line), registry and run probes, the
forget-text search and a promotion cut short. The bad-input corpus runner is bad_input_lib.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


# -- project ------------------------------------------------------------------------
def make_project(root: Path, overrides: dict, params_file: Path | None = None) -> Path:
    """A fresh project folder: git + dvc.yaml + params.yaml (``params_file``, default the project's
    params.yaml, with ``overrides``) + requests + data."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(ROOT / "requests", root / "requests")
    (root / "data").mkdir()
    (root / "data/tofu").symlink_to(ROOT / "data/tofu")
    from r2f.config import read_params

    params = read_params(params_file or ROOT / "params.yaml")  # extends: merged, one self-contained file
    for dotted, v in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = v
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text(".r2f/\n")
    return root


# -- real processes: kills and concurrent runs -------------------------------------------------------
FAST_EVAL = {"eval.max_items": 12, "eval.max_new_tokens": 12, "eval.rap_steps": 2, "eval.batch_size": 32}
EASY_GATE = {"gate.min_forget_quality": 0.0, "gate.min_utility_ratio": 0.0, "gate.min_utility_vs_base": 0.0,
        "gate.max_abs_privleak": 1000.0,
             "gate.min_usr": 0.0}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true",
           "TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (closed again before it is returned)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(project: Path) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING", "PYTEST"))}
    return {**env, **OFFLINE, "PREFECT_HOME": str(project / ".r2f/prefect"),
            "DVC_SITE_CACHE_DIR": str(project / ".r2f/dvc-site-cache")}


def write_request(project: Path, rid: str, question_ids: list[str]) -> str:
    body = {"request_id": rid, "subject": f"subject of {rid}", "selectors": {"question_ids": question_ids},
            "requester": "reliability@example.org", "legal_basis": "GDPR art. 17", "created_at": "2026-11-29"}
    path = project / "requests" / f"{rid}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return str(path.relative_to(project))


def r2f(project: Path, *args: str):
    """``r2f <args>`` in ``project`` as its own process group (a kill takes its Prefect server too)."""
    import sys

    exe = Path(sys.executable).with_name("r2f")
    return subprocess.Popen([str(exe), *args], cwd=project, env=env_for(project), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_to_end(project: Path, *args: str, timeout: float = 900) -> tuple[int, str]:
    p = r2f(project, *args)
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


def run_and_kill(project: Path, marker: str, *args: str, timeout: float = 900) -> tuple[bool, str]:
    """Start ``r2f run``; SIGKILL its whole process group as soon as a line matches the regular
    expression ``marker``. Returns (killed, output); killed False when it ended before the marker."""
    import os
    import re
    import signal
    import threading

    p = r2f(project, "run", *args)
    timer = threading.Timer(timeout, lambda: os.killpg(p.pid, signal.SIGKILL))
    timer.start()
    lines, killed = [], False
    try:
        for line in p.stdout:
            lines.append(line)
            if re.search(marker, line):
                os.killpg(p.pid, signal.SIGKILL)
                killed = True
                break
    finally:
        timer.cancel()
        p.wait()
        p.stdout.close()
    return killed, "".join(lines)


def registry(project: Path, name: str = "r2f-target") -> list[dict]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / '.r2f/mlflow/mlflow.db'}"
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:  # search results carry no aliases: read each version
        mvs = [c.get_model_version(name, m.version) for m in c.search_model_versions(f"name='{name}'")]
    except Exception:  # noqa: BLE001 - no registry yet
        return []
    return sorted(({"version": int(m.version), "aliases": sorted(m.aliases), "request_id": m.tags.get("request_id"),
                    "decision": m.tags.get("decision"), "run_id": m.run_id} for m in mvs), key=lambda d: d["version"])


def running_runs(project: Path, rid: str) -> list[str]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / '.r2f/mlflow/mlflow.db'}"
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    return [r.info.run_id for r in c.search_runs(exps, f"tags.request_id = '{rid}' and attributes.status = 'RUNNING'")]


def champion_loads(project: Path) -> bool:
    """The champion alias resolves to a complete model folder that loads."""
    import tempfile

    from r2f.engine.models.io import load_model
    from r2f.governance.tracking import MlflowTracker

    t = MlflowTracker(f"sqlite:///{project / '.r2f/mlflow/mlflow.db'}", str(project / ".r2f/mlflow/artifacts"))
    with tempfile.TemporaryDirectory() as tmp:
        champ = t.champion_model("r2f-target", tmp)
        if champ is None:
            return False
        model, _ = load_model(champ["path"])
        return sum(p.numel() for p in model.parameters()) > 0


def check_request(project: Path, rid: str) -> dict:
    """After a request's run (killed or not, then rerun): its versions, the decision count, runs left
    RUNNING, and whether the champion loads."""
    mine = [v for v in registry(project) if v["request_id"] == rid]
    final = [v for v in mine if v["decision"] in ("promoted", "rejected")]
    return {"versions": mine, "final_decisions": len(final), "running_runs": len(running_runs(project, rid)),
            "champion_loads": champion_loads(project)}


def forget_texts(project: Path, request_file: str) -> list[str]:
    """What a request must never leave a new copy of: its rows' questions and answers (each also as
    a 40-character prefix, to catch truncated copies) and its subject."""
    import contextlib

    from r2f.engine.data import load_tofu
    from r2f.governance.requests import read_request, resolve

    with contextlib.chdir(project):
        req = read_request(request_file)
        rows = resolve(req, load_tofu("data/tofu"))
    texts = {req.subject}
    for q in rows:
        for t in (q.question, q.answer):
            texts.update({t, t[:40]})
    return sorted(texts)


def forget_text_hits(project: Path, texts: list[str], logs: dict[str, str]) -> list[dict]:
    """Occurrences of ``texts`` in the MLflow database and artifact store, Prefect's state (its
    database and persisted task results), the flow log files (``.r2f/logs``), the inbox, the audit
    reports and ``logs`` (name -> text). The forget set itself (pipeline/request/forget.jsonl.enc and
    its DVC cache/remote copies) is ciphertext; :func:`state_text_hits` searches everything."""
    import json as _json

    st = project / ".r2f"
    blobs: dict[str, bytes] = {f"log:{k}": v.encode() for k, v in logs.items()}
    for base in (st / "mlflow", st / "prefect", st / "logs", st / "inbox", st / "pipeline/validation",
                 st / "pipeline/eval", st / "pipeline/gate", st / "pipeline/promotion"):
        if base.exists():
            for p in base.rglob("*"):
                if p.is_file() and p.stat().st_size < 200 * 2**20 and p.suffix not in (".safetensors", ".gguf"):
                    blobs[str(p.relative_to(project))] = p.read_bytes()
    hits = []
    for t in texts:
        forms = {t.encode(), _json.dumps(t)[1:-1].encode(), _json.dumps(t, ensure_ascii=False)[1:-1].encode()}
        for where, blob in blobs.items():
            if any(f in blob for f in forms):
                hits.append({"where": where, "text_sha256": hashlib.sha256(t.encode()).hexdigest()[:12]})
    return hits


def state_text_hits(state: Path, texts: list[str]) -> list[dict]:
    """Occurrences of ``texts`` (as UTF-8, JSON-escaped or JSON with non-ASCII kept) in every file
    under the state folder ``state``: DVC cache and remote, MLflow store, Prefect database, logs,
    inbox, keys, run folders, models. Files over 200 MiB are read in overlapping blocks."""
    import json as _json

    forms = {t: {t.encode(), _json.dumps(t)[1:-1].encode(), _json.dumps(t, ensure_ascii=False)[1:-1].encode()}
             for t in texts}
    longest = max((len(f) for fs in forms.values() for f in fs), default=0)
    hits = []
    for p in sorted(state.rglob("*")):
        if not p.is_file() or p.is_symlink():
            continue
        with p.open("rb") as fh:
            tail = b""
            while block := fh.read(64 * 2**20):
                buf = tail + block
                for t, fs in forms.items():
                    if any(f in buf for f in fs):
                        hits.append({"where": str(p.relative_to(state)),
                                     "text_sha256": hashlib.sha256(t.encode()).hexdigest()[:12]})
                tail = buf[-longest:]
    return [dict(x) for x in {(h["where"], h["text_sha256"]): h for h in hits}.values()]


def cut_promotion(project: Path, rid: str, question_ids: list[str]) -> dict:
    """A promotion cut short: every stage up to the gate (``r2f stage``), then the candidate version
    registered with its tags as ``promote`` does first, and nothing after (no gate tags, no alias, no
    final decision): what a kill inside ``promote`` leaves. Then ``r2f run``. Returns the version
    registered, the registry before and after, the run's exit code and output."""
    import contextlib

    from r2f.config import load_config
    from r2f.digest import weights_sha256
    from r2f.governance.tracking_setup import make_tracker

    req = write_request(project, rid, question_ids)
    for name in ("prepare", "validate", "train_models", "train_decoder", "unlearn", "evaluate", "gate"):
        rc, out = run_to_end(project, "stage", name, "--set", f"pipeline.request={req}")
        if rc != 0:
            raise RuntimeError(f"stage {name}: exit {rc}\n{out[-3000:]}")
    with contextlib.chdir(project):
        cfg = load_config("params.yaml", {"pipeline.request": req})
        rep = json.loads((project / ".r2f/pipeline/unlearned/report.json").read_text())
        model = project / ".r2f/pipeline/unlearned/model"
        tr = make_tracker(cfg)
        with tr.start_run(None, run_id=rep["mlflow_run_id"]):
            _, version = tr.log_model_dir(str(model), "model", registered_name="r2f-target",
                                          tags={"request_id": rid, "weights_sha256": weights_sha256(model)})
    before = registry(project)
    rc, out = run_to_end(project, "run", "--set", f"pipeline.request={req}")
    return {"version": version, "before": before, "after": registry(project), "rc": rc, "output": out}


def shredding_check(project: Path, request_file: str = "requests/forget01-authors.yaml") -> dict:
    """Issue #22's crypto-shredding scenario on ``project``: submit the request, one scheduled tick
    (``r2f serve --once``), then search every file under the state folder and the project's DVC cache
    for the forget set's questions, answers and 40-character prefixes (before); a control that writes
    the decrypted forget set under the state folder and must be found; ``r2f retention enforce`` at a
    time past the window; the same search (after, the subject included); ``r2f audit``."""
    import datetime as dt
    import json as _json

    from r2f.config import load_config
    from r2f.governance.inbox import inbox
    from r2f.governance.privacy import FileKeyStore, read_forget_set

    out: dict = {}
    rc, log = run_to_end(project, "request", "submit", request_file)
    rid = read_request_id(project / request_file)
    rc2, log2 = run_to_end(project, "serve", "--once")
    out["tick_rc"], out["tick_log_tail"] = rc2, log2[-2000:]
    cfg = load_config(project / "params.yaml", {"state_dir": str(project / ".r2f")})
    rec = inbox(cfg).get(rid)
    out["state"] = rec.state
    texts = forget_texts(project, request_file)
    subject = read_request_subject(project / request_file)
    qa = [t for t in texts if t != subject]
    places = (project / ".r2f", project / ".dvc/cache")
    out["searched_strings"] = len(qa)
    out["before"] = [h for p in places if p.exists() for h in state_text_hits(p, qa)]
    # control: the decrypted forget set written under the state folder is found
    prep = project / ".r2f/pipeline/request"
    rows = read_forget_set(FileKeyStore(project / ".r2f/keys").get(rid), rid, prep / "forget.jsonl.enc")
    ctl = project / ".r2f/control-plaintext.jsonl"
    ctl.write_text("\n".join(_json.dumps(r, ensure_ascii=False) for r in rows))
    out["control_hits"] = len(state_text_hits(project / ".r2f", qa))
    ctl.unlink()
    final = dt.datetime.fromisoformat(rec.at(rec.state))
    later = (final + dt.timedelta(days=cfg.privacy.retention_days, minutes=1)).isoformat()
    rc3, log3 = run_to_end(project, "retention", "enforce", "--now", later)
    out["enforce_rc"], out["enforce_log"] = rc3, log3[-1000:]
    out["shredded"] = sum(1 for r in inbox(cfg).records() if r.shredded_at)
    out["after"] = [h for p in places if p.exists() for h in state_text_hits(p, [*qa, subject])]
    rc4, rep = run_to_end(project, "audit", rid, "--format", "json")
    out["audit_rc"] = rc4
    try:
        audit = _json.loads(rep)
    except ValueError:
        audit = {"verdict": rep[-500:]}
    out["audit_verdict"] = audit.get("verdict")
    out["audit_not_run"] = audit.get("not_run")
    out["audit_shredded_at"] = audit.get("forget_set_shredded_at")
    out["key_file_left"] = (project / ".r2f/keys" / f"{rid}.key").exists()
    return out


def read_request_id(path: Path) -> str:
    return yaml.safe_load(path.read_text())["request_id"]


def read_request_subject(path: Path) -> str:
    return yaml.safe_load(path.read_text())["subject"]


def tamper_check(project: Path, rid: str) -> dict:
    """Issue #22's tampering scenario: ``rid``'s forget-quality metric rewritten straight in the
    tracking database (sqlite), then ``r2f audit`` (goal: exit 4 naming the sealed lineage record);
    the row restored, the audit again (goal: exit 0)."""
    import sqlite3

    from r2f.config import load_config
    from r2f.governance.tracking_setup import make_tracker

    cfg = load_config(project / "params.yaml", {"state_dir": str(project / ".r2f")})
    run_id = make_tracker(cfg).find_run(cfg.tracking.unlearning_experiment, {"request_id": rid})
    where = "WHERE run_uuid = ? AND key LIKE '%forget_quality%'"
    db = sqlite3.connect(project / ".r2f/mlflow/mlflow.db")
    try:
        saved = {t: db.execute(f"SELECT rowid, value FROM {t} {where}", (run_id,)).fetchall()  # noqa: S608
                 for t in ("metrics", "latest_metrics")}
        for t in saved:
            db.execute(f"UPDATE {t} SET value = value + 0.5 {where}", (run_id,))  # noqa: S608
        db.commit()
        edited = len(saved["metrics"])
        rc, out = run_to_end(project, "audit", rid)
        for t, rows in saved.items():  # the original values back, bit for bit
            db.executemany(f"UPDATE {t} SET value = ? WHERE rowid = ?", [(v, r) for r, v in rows])  # noqa: S608
        db.commit()
    finally:
        db.close()
    rc_restored, _ = run_to_end(project, "audit", rid)
    return {"rows_edited": edited, "audit_rc": rc, "names_seal": "sealed lineage record" in out,
            "audit_rc_restored": rc_restored}
