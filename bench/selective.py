"""Selective forgetting, side by side (issue #20): one row per (bench, split, method, seed) from the
TOFU tables of both worlds, each run judged by the default promotion gate (``params.yaml``'s ``gate``,
never relaxed) against that table's untouched target as champion and base.

    python bench/selective.py

Reads bench/results/tofu_forget01/05/10.json (toy world) and tofu_smollm2_forget01/05.json (the
pretrained world; tofu_smollm2_forget01_level.json holds the default r2f_pc, target and NPO) where
present, one row per (bench, split, method, seed), a fresh table's row before a stale one's; a missing
table is listed in the notes, a stale one is labelled per row (``source_stale``). Computes nothing by
running a model: every metric is the table's own; this adds ``mu_vs_target``, the ratios against the
same table's NPO runs (mean over NPO's seeds) and ``gate_passed`` / ``gate_failed``.
Writes bench/results/selective.json / .md.
"""

from __future__ import annotations

import json
import statistics

from common import RESULTS, load_cfg, parser, setup, write

SOURCES = {  # table stem -> (bench, split)
    "tofu_forget01": ("tofu-toy", "forget01"), "tofu_forget05": ("tofu-toy", "forget05"),
    "tofu_forget10": ("tofu-toy", "forget10"),
    "tofu_smollm2_forget01": ("tofu-smollm2", "forget01"), "tofu_smollm2_forget05": ("tofu-smollm2", "forget05"),
    # the default r2f_pc, the untouched target and NPO on current code, while the full table above waits
    "tofu_smollm2_forget01_level": ("tofu-smollm2", "forget01"),
}
COLUMNS = ["bench", "split", "method", "seed", "forget_quality", "model_utility", "mu_vs_target", "privleak", "usr",
           "gur", "rap", "peak_rss_mb", "wall_s", "ratio_mem_vs_npo", "ratio_time_vs_npo", "gate_passed",
           "gate_failed", "source_stale"]


def rows_of(stem: str, data: dict, gate_cfg, stale: str | None) -> list[dict]:
    from r2f.governance.gate import decide

    bench, split = SOURCES[stem]
    runs = [r for r in data.get("runs", []) if "error" not in r]
    target = next((r for r in runs if r["method"] == "target"), None)
    npo = [r for r in runs if r["method"] == "npo"]
    mu_t = target.get("model_utility") if target else None

    def npo_mean(k: str) -> float | None:
        vals = [r[k] for r in npo if isinstance(r.get(k), (int, float))]
        return statistics.fmean(vals) if vals else None

    npo_mem, npo_time = npo_mean("peak_rss_mb"), npo_mean("wall_s")
    out = []
    for r in runs:
        d = decide(r, mu_t, gate_cfg, mu_t)
        row = {"bench": bench, "split": split, "method": r["method"], "seed": r["seed"],
               **{k: r.get(k) for k in ("forget_quality", "model_utility", "privleak", "usr", "gur", "rap",
                                        "peak_rss_mb", "wall_s")},
               "gate_passed": d.passed, "gate_failed": [x.name for x in d.rules if not x.passed],
               "source_stale": bool(stale)}
        row["mu_vs_target"] = r["model_utility"] / mu_t if mu_t and r.get("model_utility") is not None else None
        if r["method"] not in ("target", "retrain"):
            row["ratio_mem_vs_npo"] = r["peak_rss_mb"] / npo_mem if npo_mem and r.get("peak_rss_mb") else None
            row["ratio_time_vs_npo"] = r["wall_s"] / npo_time if npo_time and r.get("wall_s") else None
        out.append(row)
    return out


def _freshest(rows: list[dict]) -> list[dict]:
    """One row per (bench, split, method, seed): where two tables hold it, a fresh one beats a stale one
    (then the later table in SOURCES)."""
    keep: dict = {}
    for r in rows:
        key = (r["bench"], r["split"], r["method"], r["seed"])
        if key not in keep or keep[key]["source_stale"] or not r["source_stale"]:
            keep[key] = r
    return list(keep.values())


def main() -> None:
    p = parser(__doc__)
    args = p.parse_args()
    setup()
    from report import Result

    cfg = load_cfg(args)
    rows, notes, deps = [], [], ["r2f/governance/gate.py"]
    for stem in SOURCES:
        path = RESULTS / f"{stem}.json"
        if not path.is_file():
            notes.append(f"{stem}: not run yet (no bench/results/{stem}.json).")
            continue
        res = Result(stem, json.loads(path.read_text()))
        deps.append(f"bench/results/{stem}.json")
        stale = res.stale
        if stale:
            notes.append(f"{stem} (commit {res.commit}) is stale: {stale}; its rows say source_stale.")
        rows += rows_of(stem, res.data, cfg.gate, stale)
    rows = _freshest(rows)
    notes += [
        "gate: params.yaml's default gate, never relaxed; champion and base = the same table's untouched target "
        "(the first deletion of a chain). target and retrain rows are judged too: the retrain row is the "
        "exact-unlearning reference (bench/results/gate_sanity.md).",
        "ratio_*_vs_npo: against the mean over the same table's NPO seeds; wall_s and peak_rss_mb are the unlearning "
        "step's own (the TOFU bench runs each in its own process).",
        "the real-facts bench (USR/GUR on SmolLM2's own knowledge) is in bench/results/real_models.md; its rows "
        "have no forget quality or utility, so the gate cannot judge them and they are not repeated here.",
    ]
    write("selective", args, rows, COLUMNS, notes, {"sources": [d for d in deps if d.endswith(".json")]},
          deps=deps, cfg=cfg)


if __name__ == "__main__":
    main()
