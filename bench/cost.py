"""Per-deletion cost of R2F against FullGrad, the fused exact step, LoRA_mul and NPO (issue #7).

For each model (the embedded tiny target, SmolLM2-135M-Instruct, and a random-initialised model of
SmolLM2-360M's shape for size scaling) and method, one child process per configuration loads the
model, resets the process's peak RSS (``/proc/self/clear_refs``), and runs the method ``--repeats``
times (the model reloaded from disk each time). Reported: median and spread of the wall time, the
peak RSS during the runs, the peak tensor memory (torch's ``MemTracker``, one extra run) and the
counted FLOPs (``torch.utils.flop_counter``, one extra run). Ratios are against FullGrad on the same
model, views and items, measured in the same run. Then the scaling sweeps: cost vs forget items in
one request (1, 10, 40, 200; tiny target) and vs model size; PNG plots.

Writes bench/results/cost.json and cost.md (and cost_scaling.png).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ENGINE, load_cfg, parser, resumable, run_child, setup, write  # noqa: E402
from cost_child import one  # noqa: E402
from cost_models import CALIBRATED, CALIBRATED_ITEMS, FIXED_ETA, MODELS, SHAPES, model_path  # noqa: E402
from cost_report import add_ratios, notes_for, plot  # noqa: E402
from real import REAL  # noqa: E402  bench/real.py's settings on SmolLM2 (eta grid, key-word loss, NPO lr)


# -- parent ------------------------------------------------------------------------------------------
def plan(args) -> list[dict]:
    """The configurations, FullGrad first in each group (the fused step reuses its eta)."""
    out = []
    models = args.models.split(",")
    views = [int(v) for v in args.views.split(",")]
    for m in models:
        if m in CALIBRATED:  # one whole deletion each, calibration included; the own-logits baseline
            out.append({"model": m, "method": "r2f", "views": 5, "items": CALIBRATED_ITEMS})
            out.append({"model": m, "method": "r2f", "views": 5, "items": CALIBRATED_ITEMS, "own_logits": True,
                        "activation_budget_mb": "off"})  # the path before both bounds
            # the body's activations unbounded: unlearn.activation_budget_mb off
            out.append({"model": m, "method": "r2f", "views": 5, "items": CALIBRATED_ITEMS,
                        "activation_budget_mb": "off"})
            out.append({"model": m, "method": "fullgrad", "views": 5, "items": CALIBRATED_ITEMS})
            continue
        big = m in SHAPES
        items = 1 if big else args.items
        for n in ([5] if big else views):
            out.append({"model": m, "method": "fullgrad", "views": n, "items": items})
            out.append({"model": m, "method": "r2f", "views": n, "items": items})
            if n == 5:
                out.append({"model": m, "method": "fused", "views": n, "items": items})
                if m != "tiny":  # low-memory mode: one sequence per forward + backward, both methods
                    for meth in ("fullgrad", "r2f"):
                        out.append({"model": m, "method": meth, "views": n, "items": items, "micro_batch": 1})
        if not big:
            out.append({"model": m, "method": "lora_mul", "views": 5, "items": items})
            out.append({"model": m, "method": "npo", "views": 5, "items": items})
    for k in [int(i) for i in args.scale_items.split(",") if i]:
        if k != args.items:
            for meth in ("fullgrad", "r2f"):
                out.append({"model": models[0], "method": meth, "views": 5, "items": k})
    return out


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--views", default="1,3,5,8", help="R2F / FullGrad views per item")
    p.add_argument("--items", type=int, default=4, help="forget items per request in the main rows")
    p.add_argument("--scale-items", default="1,10,40,200", help="request sizes for the scaling rows (first model)")
    p.add_argument("--repeats", type=int, default=3)
    # child
    p.add_argument("--one")
    p.add_argument("--model")
    p.add_argument("--eta", type=float)
    p.add_argument("--micro-batch", type=int, help="child: unlearn.micro_batch (default: params.yaml)")
    p.add_argument("--no-counters", action="store_true", help="child: skip the FLOP and tensor-memory runs")
    p.add_argument("--budget", help="child: unlearn.activation_budget_mb (MB, or 'off')")
    p.add_argument("--own-logits", action="store_true",
                   help="child: score from the model's own logits (the path before the chunked output layer)")
    args = p.parse_args()
    setup()
    if args.one:
        args.views = int(args.views)
        one(args)
        return
    if args.quick:
        args.models, args.views, args.scale_items, args.repeats = "tiny", "1,5", "1,10", 2
    cfg = load_cfg(args)
    for m in args.models.split(","):
        model_path(cfg, m)  # build / convert once, outside the timed children
    # rows of an earlier run of this same code are kept (each finished row is written at once)
    rows = resumable(Path(args.out) / f"cost{'_quick' if args.quick else ''}.json")
    for c in plan(args):
        if any(_key(r, True) == _key(c) for r in rows):
            continue
        eta = None
        if c["method"] == "fused":
            fg = next((r for r in rows if r["method"] == "fullgrad" and r["model"] == c["model"]
                       and r["views"] == c["views"] and r["items"] == c["items"] and "error" not in r
                       and not r.get("low_memory")), None)
            eta = fg["eta"] if fg else None
            if eta is None:
                rows.append({**c, "error": "no FullGrad eta to reuse"})
                continue
        big = c["model"] in SHAPES
        repeats = 1 if (big or c["method"] == "npo" or c["items"] > 40) else args.repeats
        extra = ["--one", c["method"], "--model", c["model"], "--views", str(c["views"]),
                 "--items", str(c["items"]), "--repeats", str(repeats)]
        extra += ["--eta", str(eta)] if eta is not None else []
        extra += ["--micro-batch", str(c["micro_batch"])] if c.get("micro_batch") else []
        extra += ["--own-logits"] if c.get("own_logits") else []
        extra += ["--budget", str(c["activation_budget_mb"])] if c.get("activation_budget_mb") else []
        heavy = c["method"] in ("npo", "lora_mul") and c["model"] != "tiny"  # training runs: time them only
        extra += ["--no-counters"] if (c["items"] != args.items or heavy or big and c["method"] == "fused"
                                       or c["model"] in ("random-1.7b", *CALIBRATED)) else []
        print(f"== {c}", flush=True)
        res = run_child(Path(__file__), args, extra)
        print("   " + json.dumps(res, default=str), flush=True)
        rows.append({**c, **res, "low_memory": bool(c.get("micro_batch"))})
        save(args, rows)
    save(args, rows, final=True)


def _key(c: dict, row: bool = False) -> tuple:
    """A configuration's identity (a finished row carries the default micro-batch too: ``low_memory`` says
    whether it was set)."""
    mb = (c.get("micro_batch") if c.get("low_memory") else None) if row else c.get("micro_batch")
    return c["model"], c["method"], c["views"], c["items"], bool(c.get("own_logits")), mb, c.get("activation_budget_mb")


def save(args, rows: list[dict], final: bool = False) -> None:
    add_ratios(rows)
    cols = ["model", "params_m", "method", "views", "items", "micro_batch", "own_logits", "budget_mb",
            "micro_batch_used", "activation_kb_per_token",
            "wall_s_median", "wall_s_min", "wall_s_max",
            "direction_s_median", "peak_rss_mb", "peak_tensor_mb", "flops_step", "ratio_time_vs_fullgrad",
            "ratio_direction_time_vs_fullgrad", "ratio_flops_vs_fullgrad",
            "ratio_time_vs_fullgrad_1view", "ratio_mem_vs_fullgrad", "ratio_tensor_mem_vs_fullgrad",
            "ratio_time_vs_npo", "ratio_mem_vs_npo", "ratio_mem_vs_own_logits", "ratio_time_vs_own_logits", "eta", "error"]
    notes = notes_for(rows, args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if final and not all(r["model"] in CALIBRATED for r in rows):
        plot(rows, Path(args.out) / f"cost_scaling{'_quick' if args.quick else ''}.png", args.items)
    write("cost", args, rows, cols, notes, {"settings": {"real_overrides": REAL, "shapes": SHAPES, "fixed_eta": FIXED_ETA}},
          deps=[*ENGINE, "bench/real.py", "bench/cost_models.py", "bench/cost_child.py", "bench/cost_report.py"])


if __name__ == "__main__":
    main()
