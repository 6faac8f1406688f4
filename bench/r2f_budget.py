"""R2F's retain budget and step count: how far one decoded update can go before utility pays.

    python bench/r2f_budget.py [--split forget01] [--quick]

Runs ``bench/tofu.py --methods r2f`` (each variant in its own process, full TOFU + paper
evaluation) for every (``unlearn.eta.retain_budget``, ``unlearn.r2f.steps``) pair in GRID and
writes bench/results/r2f_budget_<split>[_quick].json / .md. With n steps, step k may spend k/n of
the budget (r2f/engine/unlearn/r2f.py). The target's row is the reference.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import ENGINE, ROOT, parser, setup, write

GRID = ((0.1, 1), (0.1, 5), (0.3, 5), (0.6, 1), (0.6, 5), (1.0, 1), (1.0, 5), (1.0, 10))
KEYS = ("forget_quality", "model_utility", "gur", "usr", "forget_Q_A_Prob", "forget_truth_ratio", "privleak",
        "rap", "eta", "wall_s")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="forget01")
    args = p.parse_args()
    setup()
    import subprocess
    import sys

    rows, target = [], None
    for budget, steps in GRID:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, str(ROOT / "bench/tofu.py"), "--split", args.split, "--methods", "r2f",
                   "--out", out, "--params", args.params, "--set", f"unlearn.eta.retain_budget={budget}",
                   "--set", f"unlearn.r2f.steps={steps}", *(["--quick"] if args.quick else [])]
            for s in args.sets:
                cmd += ["--set", s]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            files = list(Path(out).glob("tofu_*.json"))
            if proc.returncode or not files:
                rows.append({"retain_budget": budget, "r2f_steps": steps,
                             "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
                continue
            data = json.loads(files[0].read_text())
        got = {r["method"]: r for r in data["rows"]}
        target = target or got.get("target")
        r = got["r2f"]
        rows.append({"retain_budget": budget, "r2f_steps": steps, **{k: r.get(k) for k in KEYS}})
        print(rows[-1], flush=True)
    if target:
        rows.insert(0, {"retain_budget": "target", "r2f_steps": "-", **{k: target.get(k) for k in KEYS}})
    notes = [
        f"split {args.split}, 1 seed; each row is bench/tofu.py's r2f row with that retain budget and step count "
        "(eta calibrated on held-out views and retain calibration items, docs/method.md §6).",
        "retain_budget: allowed relative rise of the calibration retain NLL; r2f_steps n: step k may spend k/n of it.",
        "gur = utility (retain + world facts, arithmetic) relative to the target; model_utility is the TOFU "
        "harmonic mean (noisy on this model: near-zero real-author ROUGE).",
    ]
    cols = ["retain_budget", "r2f_steps", *KEYS]
    write(f"r2f_budget_{args.split}", args, rows, cols, notes, {"grid": GRID}, deps=[*ENGINE, "bench/tofu.py"])


if __name__ == "__main__":
    main()
