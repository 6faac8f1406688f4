"""Evaluation precision (``eval.precision``): every metric of the reference evaluations (retain and
target models) with fp32 scoring against bf16 scoring (teacher-forced passes and the relearning attack
under bfloat16 autocast; generation and drift fp32 in both), on one world and split, and the wall time
of each evaluation. Both evaluations are the cached references of their precision (a missing one is
computed, on this machine, in this run).

    python bench/eval_precision.py [--params params-smollm2-tofu.yaml] [--split forget01]

Writes bench/results/eval_precision.json / .md: one row per (model, metric) with both values and the
relative difference, plus one row per model with both evaluations' wall times. The eval_s of a cached
evaluation is from the run that made it (its load is not this run's); ``cached`` says which.
"""

from __future__ import annotations

import time

from common import load_cfg, parser, setup, write

ROLES = ("retain", "target")
ARGMAX = ("extraction_strength", "exact_memorization")  # token-wise argmax hits


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(params="params-smollm2-tofu.yaml")
    p.add_argument("--split", default="forget01", choices=["forget01", "forget05", "forget10"])
    args = p.parse_args()
    setup()
    from r2f.engine.api import eval_dir, reference_eval

    evals, timing = {}, []
    for prec in ("fp32", "bf16"):
        cfg = load_cfg(args, {"data.forget_split": args.split, "eval.precision": prec})
        for role in ROLES:
            cached = (eval_dir(cfg, role, args.split) / "TOFU_EVAL.json").is_file()
            t0 = time.perf_counter()
            evals[(prec, role)] = reference_eval(cfg, role, args.split, print)
            meta = evals[(prec, role)]["_meta"]["extra"]
            timing.append({"model": role, "precision": prec, "cached": cached, "eval_s": meta.get("eval_s"),
                           "this_run_s": round(time.perf_counter() - t0, 1), "phase_s": meta.get("phase_s")})
    rows = []
    for role in ROLES:
        a, b = evals[("fp32", role)], evals[("bf16", role)]
        for k in sorted(x for x in a if not x.startswith("_")):
            va, vb = a[k]["value"], b.get(k, {}).get("value")
            if not isinstance(va, (int, float)) or not isinstance(vb, (int, float)):
                continue
            rows.append({"model": role, "metric": k, "fp32": va, "bf16": vb,
                         "rel_diff": abs(va - vb) / max(abs(va), 1e-12)})
    for t in timing:
        if t["precision"] == "bf16":
            f = next(x for x in timing if x["model"] == t["model"] and x["precision"] == "fp32")
            t["speedup_vs_fp32"] = f["eval_s"] / t["eval_s"] if f["eval_s"] and t["eval_s"] else None
    notes = [
        f"world {args.params}, split {args.split}; reference evaluations of the retain and target models.",
        "bf16: teacher-forced scoring (truth ratios, probabilities, MIA statistics, extraction strength) and the "
        "relearning attack (fine-tuning + scoring) under bfloat16 autocast, weights float32; generation "
        "(ROUGE, USR) and drift in fp32 in both columns.",
        "rel_diff = |fp32 - bf16| / |fp32|. eval_s: the evaluation's own wall time as recorded when it ran "
        "(timing rows); a cached fp32 evaluation may be from shared cores (its _meta has no load record).",
    ]
    others = [r["rel_diff"] for r in rows if r["metric"] not in ARGMAX]
    notes.append(f"max_rel_others: the largest rel_diff of any metric except {', '.join(ARGMAX)} (argmax over "
                 "near-ties at answer positions).")
    write("eval_precision", args, rows, ["model", "metric", "fp32", "bf16", "rel_diff"], notes,
          {"split": args.split, "max_rel_others": max(others), "timing": timing},
          cfg=load_cfg(args, {"data.forget_split": args.split}))


if __name__ == "__main__":
    main()
