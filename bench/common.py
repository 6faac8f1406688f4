"""Shared by the bench scripts: argument parsing, environment, and JSON + markdown output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from provenance import ENGINE, PIPELINE, Recorder  # noqa: F401  (re-exported for the benches)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small run (<3 min on 2 cores), same JSON shape")
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    p.add_argument("--set", dest="sets", action="append", default=[], help="override key=value")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    return p


_RECORDER: Recorder | None = None


def setup() -> None:
    """Offline/quiet environment, the project on sys.path, and the provenance recorder started (the
    machine's load before the bench)."""
    global _RECORDER
    _RECORDER = Recorder()
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                 "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1",
                 "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}.items():
        os.environ.setdefault(k, v)
    sys.path.insert(0, str(ROOT))


# --quick: small models on forget01 so a fresh clone finishes in minutes (same JSON shape).
QUICK = {
    "data.forget_split": "forget01", "data.world_split": "forget01",
    "data.retain_authors": 22,
    "models.target": {"arch": {"layers": 2, "hidden": 128, "heads": 4, "kv_heads": 2, "intermediate": 344},
                      "train": {"epochs": 6, "lr": 2.0e-3, "batch_size": 16}},
    "models.proxy": {"arch": {"layers": 1, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 172},
                     "train": {"epochs": 6, "lr": 2.0e-3, "batch_size": 16}},
    "decoder.pairs": 280, "decoder.steps": 120, "decoder.weight_fit_prompts": 6,
    "unlearn.gradascent.epochs": 3, "unlearn.graddiff.epochs": 3, "unlearn.npo.epochs": 3,
    "unlearn.eta.calibration_items": 24,
}


def overrides_of(args, extra: dict | None = None) -> dict:
    """QUICK (with --quick), then ``extra``, then every ``--set key=value`` (YAML value)."""
    import yaml

    overrides = {**(QUICK if args.quick else {}), **(extra or {})}
    for s in args.sets:
        k, v = s.split("=", 1)
        overrides[k] = yaml.safe_load(v)
    return overrides


def load_cfg(args, extra: dict | None = None):
    from r2f.config import load_config

    return load_config(args.params, overrides_of(args, extra))


def run_child(script: str | Path, args, extra: list[str]) -> dict:
    """Run ``script`` with ``extra`` (e.g. ``--one r2f``) in its own process, so its wall time and
    peak RSS are its own; returns its ``RESULT {json}`` line, or ``{"error": last stderr line}``.
    The child's stderr (progress, logs) streams to ``.r2f/bench-logs/<script>-<extra>.log`` while it
    runs, so a row that takes unusually long can be looked at (``tail -f``) instead of guessed at."""
    import re

    cmd = [sys.executable, str(script), *extra, "--params", args.params, "--out", args.out]
    cmd += ["--quick"] if args.quick else []
    for s in args.sets:
        cmd += ["--set", s]
    logs = ROOT / ".r2f" / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / (re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join([Path(script).stem, *extra])).strip("_")[:120] + ".log")
    with log.open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, check=False)
    stderr = log.read_text(errors="replace")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        print(stderr[-3000:])
        if proc.returncode < 0:  # killed by a signal, with no message of its own
            sig = -proc.returncode
            why = " (SIGKILL: e.g. the kernel's out-of-memory killer)" if sig == 9 else ""
            return {"error": f"killed by signal {sig}{why}"}
        return {"error": (stderr.strip().splitlines() or [f"failed with exit status {proc.returncode}"])[-1]}
    return json.loads(line[-1][7:])


def world_of(params: str | Path) -> str:
    """``""`` for the default params.yaml, else the world's name from ``params-<world>[-tofu].yaml``
    (``smollm2`` for params-smollm2-tofu.yaml): the prefix of another world's result names."""
    name = Path(params).stem
    return "" if name == "params" else name.removeprefix("params-").removesuffix("-tofu").replace("-", "_")


def resumable(path: Path) -> list[dict]:
    """The rows of an earlier run of this same code (its deps hash as now) at ``path``, else none: a
    bench that writes each finished row at once resumes from them after an interrupted session."""
    from provenance import code_sha256

    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    prov = old.get("provenance") or {}
    return old["rows"] if prov.get("deps") and code_sha256(prov["deps"]) == prov.get("code_sha256") else []


def run_rows(script: str | Path, args, stem: str, jobs: list[tuple[dict, list[str]]], write_rows) -> list[dict]:
    """Each job ``(key, child args)`` in its own process (:func:`run_child`) unless an earlier run of
    this code at ``<out>/<stem>.json`` already has the row ``key`` names; after each finished row
    ``write_rows(rows)`` writes the table, so a killed session loses only the row in progress."""
    rows = resumable(Path(args.out) / f"{stem}.json")
    for key, extra in jobs:
        if any(all(r.get(k) == v for k, v in key.items()) for r in rows):
            continue
        got = run_child(script, args, extra)
        rows.append({**key, **got})
        write_rows(rows)
        print(f"{key}: {json.dumps(got, default=str)[:400]}", flush=True)
    return rows


def peak_rss_mb() -> float:
    from r2f.engine.models.memory import peak_rss_mb as peak

    return peak()


def env_info() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count()}


def write(name: str, args, rows: list[dict], columns: list[str], notes: list[str], meta: dict,
          deps: list[str] | tuple[str, ...] = ENGINE, cfg=None) -> Path:
    """Write ``bench/results/<name>[_quick].json`` (rows + provenance: commit, dirty, command, hash of
    the effective parameters, date, CPUs, load before/after, hash of ``deps``, the code measured) and
    the markdown table. ``cfg``: the effective Config (default: params file + --quick + --set).
    A hand-written reading in ``<stem>.reading.md`` is appended (bench/report.py keeps it there)."""
    out = Path(args.out).resolve()  # a relative --out is relative to the working directory
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_quick" if args.quick else name
    script = Path(sys.argv[0]).resolve()
    deps = list(dict.fromkeys([*deps, str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else str(script)]))
    if cfg is None:
        try:
            cfg = load_cfg(args)
        except Exception:  # noqa: BLE001 - a bench's own parameters may not be a Config
            cfg = None
    params = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else {"overrides": overrides_of(args)}
    recorder = _RECORDER or Recorder()
    payload = {"benchmark": name, "quick": args.quick, "provenance": recorder.record(deps, params),
               "env": env_info(), "columns": columns, "notes": notes, **meta, "rows": rows}
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str))
    md = out / f"{stem}.md"
    md.write_text(render_md(payload, stem))
    if out.resolve().is_relative_to(RESULTS.resolve()):
        from report import render_page  # status line and the hand-written reading, if any

        md.write_text(render_page(md))
    print(md.read_text())
    return out / f"{stem}.json"


def render_md(payload: dict, stem: str) -> str:
    """The result's markdown: title, table, notes; bench/report.py adds the status line and the reading."""
    columns = payload["columns"]
    title = payload["benchmark"] + (" (quick)" if payload.get("quick") else "")
    lines = [f"# {title}", ""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in payload["rows"]:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    lines += [""] + [f"- {n}" for n in payload["notes"]] + [""]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
