"""Unlearning smoke benchmark on the embedded default: per method, the mean answer-token NLL on
forget, retain and holdout before and after, the chosen eta, wall time and peak RSS, with ratios
against FullGrad measured in the same run. Each method runs in its own process so its peak RSS is
its own.

    python bench/unlearn_smoke.py [--quick] [--methods r2f,fullgrad,...]
"""

from __future__ import annotations

import json
from pathlib import Path

from common import ENGINE, load_cfg, parser, peak_rss_mb, run_child, setup, write

METHODS = ("r2f", "fullgrad", "lora_sin", "lora_mul", "gradascent", "graddiff", "npo", "retrain")


def one(args, method: str) -> None:
    """Child process: run one method and print its report as the last line."""
    from r2f.engine.api import unlearn_model

    cfg = load_cfg(args)
    rep = unlearn_model(cfg, method)
    rep["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(rep, default=str))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--one", help=argparse_hidden())
    args = p.parse_args()
    setup()
    if args.one:
        return one(args, args.one)
    from r2f.engine.api import ensure_decoder, train_zoo

    cfg = load_cfg(args)
    train_zoo(cfg, print)
    ensure_decoder(cfg, print)  # cached; its cost is reported by bench/fidelity.py
    rows = []
    for m in args.methods.split(","):
        rep = run_child(Path(__file__), args, ["--one", m])
        if "error" in rep:
            rows.append({"method": m, "error": rep["error"]})
            continue
        row = {"method": m, "eta": rep["eta"], "wall_s": rep["wall_s"], "peak_rss_mb": rep["peak_rss_mb"]}
        for split in ("forget", "retain", "holdout"):
            row[f"{split}_nll_before"] = rep["nll_before"][split]
            row[f"{split}_nll_after"] = rep["nll_after"][split]
        row["direction_s"] = rep["info"].get("direction_s")
        rows.append(row)
        print(row)
    base = next((r for r in rows if r["method"] == "fullgrad" and "error" not in r), None)
    for r in rows:
        if base and "error" not in r:
            r["ratio_time_vs_fullgrad"] = r["wall_s"] / base["wall_s"]
            r["ratio_mem_vs_fullgrad"] = r["peak_rss_mb"] / base["peak_rss_mb"]
    notes = [
        f"forget split: {cfg.data.forget_split}; retain = retain_perturbed (authors 0-19, never used for "
        "calibration); holdout = holdout10 (authors never trained on).",
        "wall_s is the method alone (model already loaded); peak_rss_mb is the whole child process "
        "(model load and evaluation included), so memory ratios understate differences on this tiny model.",
        "eta: relative step size chosen by forward-only calibration (single-direction methods); None for "
        "multi-step fine-tuning methods.",
    ]
    cols = ["method", "eta", "forget_nll_before", "forget_nll_after", "retain_nll_before", "retain_nll_after",
            "holdout_nll_after", "wall_s", "peak_rss_mb", "ratio_time_vs_fullgrad", "ratio_mem_vs_fullgrad"]
    write("unlearn_smoke", args, rows, cols, notes, {"forget_split": cfg.data.forget_split}, deps=ENGINE)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
