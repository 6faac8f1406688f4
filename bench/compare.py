"""Same numbers before and after a change that must not change behaviour (a refactor): compare
result JSONs as committed at ``--base`` with the ones in the working tree, row by row. Metrics must
agree to ``--tol`` (absolute, 1e-6 by default); timings and memory are not compared.

    python bench/compare.py --base REV [STEM ...]     # default: every *_quick result
    python bench/compare.py --base-dir DIR [STEM ...] # "before" = DIR/<stem>.json (e.g. a worktree's
                                                      # bench/results, written by the old code)

Exit 0 when every compared value agrees, 1 otherwise (each difference printed). ``--write NAME``
also records the comparison as ``bench/results/NAME.json`` / ``.md`` (one row per result: rows,
values compared, values that differ, the commits before and after).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# wall time, memory and machine-dependent fields: measured, not computed
NOT_COMPARED = re.compile(r"(^|_)(s|mb|s_std|mb_std)$|wall|rss|ratio_time|ratio_mem|_vs_npo|time|seconds|share")


def _at(rev: str, stem: str) -> dict | None:
    out = subprocess.run(["git", "show", f"{rev}:bench/results/{stem}.json"], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def _in(folder: Path, stem: str) -> dict | None:
    path = folder / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def differences(before: dict, after: dict, tol: float, counted: list | None = None) -> list[str]:
    """Values that differ, row by row (``counted``: gets one entry per value compared)."""
    rows_a, rows_b = before["rows"], after["rows"]
    if len(rows_a) != len(rows_b):
        return [f"{len(rows_a)} rows before, {len(rows_b)} after"]
    out, counted = [], counted if counted is not None else []
    for i, (a, b) in enumerate(zip(rows_a, rows_b)):
        for key in sorted(set(a) | set(b)):
            if NOT_COMPARED.search(key):
                continue
            va, vb = a.get(key), b.get(key)
            counted.append(key)
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
                same = (math.isnan(va) and math.isnan(vb)) or abs(va - vb) <= tol
            else:
                same = va == vb
            if not same:
                out.append(f"row {i} {key}: {va!r} -> {vb!r}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", help="the commit whose committed results are 'before'")
    base.add_argument("--base-dir", type=Path, help="a folder holding the 'before' result JSONs")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--write", metavar="NAME", help="record the comparison in bench/results/NAME.json and .md")
    p.add_argument("stems", nargs="*")
    args = p.parse_args()
    stems = args.stems or sorted(str(f.relative_to(RESULTS).with_suffix("")) for f in RESULTS.glob("*_quick.json"))
    bad, rows = 0, []
    for stem in stems:
        before = _at(args.base, stem) if args.base else _in(args.base_dir, stem)
        after = json.loads((RESULTS / f"{stem}.json").read_text())
        if before is None:
            print(f"{stem}: not in {args.base or args.base_dir}")
            rows.append({"result": stem, "same": False, "note": "no 'before' result"})
            bad += 1
            continue
        counted: list = []
        diffs = differences(before, after, args.tol, counted)
        b, a = (d.get("provenance", {}).get("commit", "?")[:7] for d in (before, after))
        rows.append({"result": stem, "rows": len(after["rows"]), "values_compared": len(counted),
                     "values_differing": len(diffs), "same": not diffs, "before_commit": b, "after_commit": a,
                     "first_difference": diffs[0] if diffs else None})
        print(f"{stem}: {len(after['rows'])} rows, {b} -> {a}: " + ("same" if not diffs else f"{len(diffs)} differ"))
        for d in diffs[:20]:
            print(f"  {d}")
        bad += bool(diffs)
    if args.write:
        _record(args, stems, rows)
    return 1 if bad else 0


def _record(args, stems: list[str], rows: list[dict]) -> None:
    from common import write  # the results' provenance (commit, code hash) and markdown

    ns = argparse.Namespace(out=str(RESULTS), quick=False, params=None, sets=[])
    before = (f"the results committed at {args.base}" if args.base else
              f"results written by the code at before_commit (the same commands, run in a worktree: {args.base_dir})")
    write(args.write, ns, rows, ["result", "rows", "values_compared", "values_differing", "same", "before_commit",
                                 "after_commit", "first_difference"],
          [f"'before' = {before}; 'after' = bench/results/ as written by the code at after_commit.",
           f"Metrics must agree to {args.tol:g} (absolute); wall time, memory and other measured fields are "
           "not compared (compare.NOT_COMPARED)."],
          {"tol": args.tol}, deps=["bench/compare.py", *(f"bench/results/{s}.json" for s in stems)], cfg={})


if __name__ == "__main__":
    sys.exit(main())
