"""Where a bench result comes from: commit, dirty tree, command line, parameters, machine load, and a
hash of the code it measures (the paths the bench declares). ``bench/report.py`` compares that hash
with the current files to tell a fresh result from a stale one.

No project imports: ``report.py --check`` runs it in ``make test`` without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what every bench measures; each bench adds its own script (and any other code it runs). A "!glob"
# entry leaves those files out: no bench calls the command line, and the engine benches never reach
# the governance floor (import-linter's contracts in pyproject.toml hold the engine to that).
BASE = ("r2f/config", *(f"r2f/{m}.py" for m in ("__init__", "errors", "atomic", "digest", "progress", "safeyaml")))
ENGINE = ("r2f/engine", *BASE, "params.yaml", "bench/common.py")
PIPELINE = ("r2f", "!r2f/cli/*.py", "!r2f/registry.py", "flows", "params.yaml", "bench/common.py")
CODE_SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".json")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def code_files(deps: list[str] | tuple[str, ...]) -> list[Path]:
    """The files behind ``deps`` (files, or folders: their code files, caches excluded; ``!glob``
    entries removed), sorted."""
    out: set[Path] = set()
    for d in deps:
        if d.startswith("!"):
            continue
        p = ROOT / d
        if p.is_file():
            out.add(p)
        elif p.is_dir():
            out.update(f for f in p.rglob("*") if f.is_file() and f.suffix in CODE_SUFFIXES
                       and "__pycache__" not in f.parts and not f.name.startswith("."))
    for d in deps:
        if d.startswith("!"):
            out.difference_update(ROOT.glob(d[1:]))
    return sorted(out)


def code_sha256(deps: list[str] | tuple[str, ...], snapshot: dict[str, bytes] | None = None) -> str:
    """sha256 over the relative path and bytes of every file behind ``deps``: changes when the code a
    result measures changes, also in an uncommitted tree or a shallow clone (no git history needed).
    ``snapshot``: file contents read earlier (path -> bytes) to hash instead of the current files."""
    h = hashlib.sha256()
    for f in code_files(deps):
        rel = str(f.relative_to(ROOT))
        data = snapshot[rel] if snapshot is not None and rel in snapshot else f.read_bytes()
        h.update(rel.encode() + b"\0" + data + b"\0")
    return h.hexdigest()


# what a bench may depend on: read when it starts, so its result names the code it imported
SNAPSHOT_PATHS = ("r2f", "flows", "bench", "tests", "params.yaml", "Makefile", "pyproject.toml",
                  "requirements.lock", "requirements-real.txt")


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Recorder:
    """Started when a bench starts (the load before it), finished when it writes its result."""

    def __init__(self) -> None:
        self.load_before = load_now()
        self.t0 = time.time()
        self.snapshot = {str(f.relative_to(ROOT)): f.read_bytes() for f in code_files(SNAPSHOT_PATHS)}
        self.commit = _git("rev-parse", "HEAD")  # the commit checked out when the bench started

    def record(self, deps: list[str] | tuple[str, ...], params: dict | None) -> dict:
        # uncommitted changes (or new files) in the measured paths: the commit alone does not name the code
        dirty = _git("status", "--porcelain", "--", *(d for d in deps if not d.startswith("!")))
        measured = code_sha256(deps, self.snapshot)
        blob = json.dumps(params or {}, sort_keys=True, default=str).encode()
        return {
            "commit": self.commit,
            # uncommitted changes in the measured paths when it ended (the code hash is exact either way)
            "dirty": bool(dirty),
            "command": "python " + shlex.join(sys.argv),
            "params_sha256": hashlib.sha256(blob).hexdigest(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_s": round(time.time() - self.t0, 1),
            "cpus": os.cpu_count(),
            "load_before": self.load_before,
            "load_after": load_now(),
            "deps": list(deps),
            # the code as it was when the bench started (what it imported); if the files changed while
            # it ran, the result is recorded as such and bench/report.py calls it stale
            "code_sha256": measured,
            "code_changed_during_run": measured != code_sha256(deps),
        }
