"""The bad-input corpus runner and the state probes shared by tests/test_bad_inputs.py and
bench/reliability.py (issue #8). Every case goes through the real entry points (the inbox's submit,
the pipeline's prepare/validate stages, params loading, TOFU loading, model loading) and the probes
read the real stores (MLflow registry and runs, DVC lock and cache, inbox, stage outs)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests/data/bad_inputs"


def cases() -> list[dict]:
    out = yaml.safe_load((CORPUS / "cases.yaml").read_text())
    for c in out:
        c.setdefault("name", Path(c.get("file", c.get("name", "?"))).stem)
        c["id"] = f"{c['kind']}/{c['name']}"
    return out


# -- project + state probes ------------------------------------------------------------------------
def make_project(root: Path, overrides: dict) -> Path:
    """A fresh project folder: git + dvc.yaml + params.yaml (with ``overrides``) + requests + data."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(ROOT / "requests", root / "requests")
    (root / "data").mkdir()
    (root / "data/tofu").symlink_to(ROOT / "data/tofu")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, v in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = v
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text(".r2f/\n")
    return root


def _tree(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and not p.name.endswith(".lock")
            and "prefect" not in p.relative_to(path).parts[:1]}


def state(project: Path) -> dict:
    """What a bad input must not change: registry versions and aliases, MLflow runs other than the
    records of rejections, DVC's lock file and cache, the inbox, and the model-bearing stage outs."""
    st = project / ".r2f"
    out = {"dvc_lock": (project / "dvc.lock").read_text() if (project / "dvc.lock").exists() else None,
           "dvc_cache": sorted(_tree(project / ".dvc/cache")), "inbox": _tree(st / "inbox"),
           "outs": {k: _tree(st / "pipeline" / k) for k in ("unlearned", "eval", "gate", "promotion", "models")},
           "registry": [], "runs": []}
    db = st / "mlflow/mlflow.db"
    if db.exists():
        from mlflow import MlflowClient

        uri = f"sqlite:///{db}"
        c = MlflowClient(tracking_uri=uri, registry_uri=uri)
        for rm in c.search_registered_models():
            for mv in [c.get_model_version(rm.name, m.version) for m in c.search_model_versions(f"name='{rm.name}'")]:
                out["registry"].append((rm.name, mv.version, sorted(mv.aliases), mv.tags.get("decision")))
        exps = [e.experiment_id for e in c.search_experiments()]
        out["runs"] = sorted((r.info.run_id, r.info.status, r.data.tags.get("status"))
                             for r in c.search_runs(exps) if r.data.tags.get("status") != "rejected_data")
    return out


def changes(before: dict, after: dict) -> list[str]:
    return [k for k in before if before[k] != after[k]]


# -- running one case --------------------------------------------------------------------------------
def run_case(case: dict, project: Path, work: Path) -> dict:
    """Feed ``case`` to its entry points in ``project``; returns ``{id, rejected, messages,
    message_ok, state_changes}``. ``rejected``: every entry point raised one of R2F's errors."""
    import contextlib

    kind = case["kind"]
    before = state(project)
    msgs, rejected = [], True
    with contextlib.chdir(project):  # relative paths in params.yaml (state_dir) are the project's
        for attempt in ENTRY[kind](case, project, work):
            try:
                attempt()
                rejected = False
                msgs.append("ACCEPTED")
            except _errors() as exc:
                msgs.append(str(exc))
    after = state(project)
    return {"id": case["id"], "why": case["why"], "rejected": rejected, "messages": msgs,
            "message_ok": all(case["expect"] in m for m in msgs), "state_changes": changes(before, after)}


def _errors():
    from r2f.config import ConfigError
    from r2f.data import DataError
    from r2f.inbox import InboxError
    from r2f.models import ModelError
    from r2f.pipeline import PipelineError
    from r2f.requests import RequestError
    from r2f.validation import ValidationError

    return (ConfigError, DataError, InboxError, ModelError, PipelineError, RequestError, ValidationError)


def _request(case, project: Path, work: Path):
    from r2f.config import load_config
    from r2f.data import load_tofu
    from r2f.inbox import inbox
    from r2f.locks import pipeline_lock
    from r2f.pipeline import run_stage

    dest = project / "requests/bad" / Path(case["file"]).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(CORPUS / case["file"], dest)
    cfg = load_config(project / "params.yaml", {"pipeline.request": str(dest)})

    def submit():
        inbox(cfg).submit(dest, load_tofu(cfg.data.tofu_dir))

    def pipeline():
        with pipeline_lock(cfg.state_dir):
            for name in ("prepare", "validate"):
                run_stage(cfg, name, log=lambda _m: None)
    return [submit, pipeline]


def _params(case, project: Path, work: Path):
    from r2f.config import load_config

    edit = yaml.safe_load((CORPUS / case["file"]).read_text())
    proj = work / case["name"]
    shutil.copytree(project, proj, symlinks=True, ignore=shutil.ignore_patterns(".r2f", ".dvc", ".git"))
    text = (proj / "params.yaml").read_text()
    if "append" in edit:
        text += edit["append"]
    params = yaml.safe_load(text) if "set" in edit else None
    for dotted, v in (edit.get("set") or {}).items():
        node = params
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = v
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False) if params is not None else text)
    return [lambda: load_config(proj / "params.yaml")]


def _tofu(case, project: Path, work: Path):
    from r2f.config import load_config
    from r2f.data import Tofu
    from r2f.locks import pipeline_lock
    from r2f.pipeline import run_stage

    edit = yaml.safe_load((CORPUS / case["file"]).read_text())
    data = project / "data" / f"bad-{case['name']}"  # inside the project: an allowed root
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(ROOT / "data/tofu", data)
    f = data / edit["file"]
    lines = f.read_bytes().split(b"\n")
    i = edit["line"] - 1
    if "json" in edit:
        lines[i] = json.dumps(edit["json"]).encode()
    elif "text" in edit:
        lines[i] = edit["text"].encode()
    elif "bytes_hex" in edit:
        lines[i] = bytes.fromhex(edit["bytes_hex"])
    elif "copy_line" in edit:
        lines[i] = lines[edit["copy_line"] - 1]
    elif "copy_from" in edit:
        src, n = edit["copy_from"]
        lines[i] = (data / src).read_bytes().split(b"\n")[n - 1]
    f.write_bytes(b"\n".join(lines))
    if not edit.get("keep_manifest"):
        man = data / "MANIFEST.sha256"
        rows = [ln.split(maxsplit=1) for ln in man.read_text().splitlines()]
        man.write_text("".join(f"{hashlib.sha256((data / n.strip()).read_bytes()).hexdigest()}  {n.strip()}\n"
                               for _, n in rows))
    cfg = load_config(project / "params.yaml", {"data.tofu_dir": str(data)})

    def pipeline():
        with pipeline_lock(cfg.state_dir):
            run_stage(cfg, "prepare", log=lambda _m: None)
    return [lambda: Tofu(data), pipeline]


def _model(case, project: Path, work: Path):
    from r2f.config import load_config
    from r2f.models import load_model
    from r2f.stages import unlearn

    folder = work / "models" / case["name"]
    shutil.rmtree(folder, ignore_errors=True)
    if case.get("files") is not None:
        folder.mkdir(parents=True)
        for name, text in case["files"].items():
            (folder / name).write_text(text)
    cfg = load_config(project / "params.yaml")
    out = work / "out" / case["name"]

    def run_unlearn():
        try:
            unlearn(cfg, model_path=folder, out=out)
        finally:
            if out.exists():  # a partial output would be a state change: record it, then fail
                raise AssertionError(f"{out} was written")
    return [lambda: load_model(folder), run_unlearn]


ENTRY = {"request": _request, "params": _params, "tofu": _tofu, "model": _model}


# -- real processes: kills and concurrent runs -------------------------------------------------------
FAST_EVAL = {"eval.max_items": 12, "eval.max_new_tokens": 12, "eval.rap_steps": 2, "eval.batch_size": 32}
EASY_GATE = {"gate.min_forget_quality": 0.0, "gate.min_utility_ratio": 0.0, "gate.max_abs_privleak": 1000.0,
             "gate.min_usr": 0.0}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true",
           "TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}


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

    from r2f.models import load_model
    from r2f.tracking import MlflowTracker

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

    from r2f.data import load_tofu
    from r2f.requests import read_request, resolve

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
    database and persisted task results), the inbox, the audit reports and ``logs`` (name -> text).
    The forget set itself (pipeline/request/forget.jsonl and its DVC cache/remote copies) is the
    versioned input, not a log, and is not searched."""
    import json as _json

    st = project / ".r2f"
    blobs: dict[str, bytes] = {f"log:{k}": v.encode() for k, v in logs.items()}
    for base in (st / "mlflow", st / "prefect", st / "inbox", st / "pipeline/validation", st / "pipeline/eval",
                 st / "pipeline/gate", st / "pipeline/promotion"):
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


def cut_promotion(project: Path, rid: str, question_ids: list[str]) -> dict:
    """A promotion cut short: every stage up to the gate (``r2f stage``), then the candidate version
    registered with its tags as ``promote`` does first, and nothing after (no gate tags, no alias, no
    final decision): what a kill inside ``promote`` leaves. Then ``r2f run``. Returns the version
    registered, the registry before and after, the run's exit code and output."""
    import contextlib

    from r2f.audit import weights_sha256
    from r2f.config import load_config
    from r2f.tracking import make_tracker

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
