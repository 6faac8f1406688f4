"""The bad-input corpus runner and the state probes (issue #8), used by tests/test_bad_inputs.py and
bench/reliability.py. Every case goes through the real entry points (the inbox's submit, the
pipeline's prepare/validate stages, params loading, TOFU loading, model loading) and the probes read
the real stores (MLflow registry and runs, DVC lock and cache, inbox, stage outs)."""

from __future__ import annotations

import hashlib
import json
import shutil
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
    from r2f.engine.data import DataError
    from r2f.engine.models.io import ModelError
    from r2f.governance.inbox import InboxError
    from r2f.governance.requests import RequestError
    from r2f.governance.stage_io import PipelineError
    from r2f.governance.validation import ValidationError

    return (ConfigError, DataError, InboxError, ModelError, PipelineError, RequestError, ValidationError)


def _request(case, project: Path, work: Path):
    from r2f.config import load_config
    from r2f.engine.data import load_tofu
    from r2f.governance.inbox import inbox
    from r2f.governance.locks import pipeline_lock
    from r2f.governance.pipeline import run_stage

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
    from r2f.engine.data import Tofu
    from r2f.governance.locks import pipeline_lock
    from r2f.governance.pipeline import run_stage

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
    from r2f.engine.api import unlearn_model
    from r2f.engine.models.io import load_model

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
            unlearn_model(cfg, model_path=folder, out=out)
        finally:
            if out.exists():  # a partial output would be a state change: record it, then fail
                raise AssertionError(f"{out} was written")
    return [lambda: load_model(folder), run_unlearn]


ENTRY = {"request": _request, "params": _params, "tofu": _tofu, "model": _model}
