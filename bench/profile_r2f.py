"""Where R2F's time goes: one deletion profiled with cProfile (R2F's own stages) and the torch
profiler (operators), next to FullGrad on the same request. Writes bench/results/profile.md / .json.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ENGINE, load_cfg, parser, setup, write  # noqa: E402
from cost import extra_for, model_path  # noqa: E402

# R2F's stages, by the function that implements each (cumulative time in cProfile)
STAGES = {
    "one_pass_lora_gradients": "bases + LoRA gradients, one forward/backward per batch",
    "top_basis": "top-r basis (eigh of the T x T or in x in Gram)",
    "activation_grams": "Gram forward (inference, per item)",
    "top_bases": "top-r basis per module (SVD of T x in)",
    "grouped_lora_gradients": "LoRA gradients, all items in one forward/backward",
    "calibrate_and_apply": "eta calibration (forward passes) + writing the update",
    "apply_update": "writing the update (inside calibration)",
    "full_gradients": "FullGrad: full gradient forward/backward",
}


def profile_one(method_name: str, ctx_fn) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from r2f.engine.unlearn import get_method

    method = get_method(method_name)
    method.run(ctx_fn())  # warm-up
    ctx = ctx_fn()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    method.run(ctx)
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof)
    stages = {}
    for (_file, _line, fn), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
        if fn in STAGES:
            stages[fn] = stages.get(fn, 0.0) + ct
    ctx = ctx_fn()
    with profile(activities=[ProfilerActivity.CPU]) as tp:
        method.run(ctx)
    ops = sorted(tp.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops) or 1
    top = [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 3),
            "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in ops[:8]]
    del torch
    return {"wall_s": wall, "stages": {k: round(v, 3) for k, v in stages.items()}, "top_ops": top}


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--items", type=int, default=4)
    p.add_argument("--views", type=int, default=5)
    args = p.parse_args()
    setup()
    import torch

    from r2f.engine.data import load_tofu
    from r2f.engine.models.io import load_model
    from r2f.engine.unlearn import UnlearnContext

    torch.set_num_threads(2)
    model = "tiny" if args.quick else args.model
    cfg = load_cfg(args, extra_for(model, args.views, None))
    path = model_path(cfg, model)
    tofu = load_tofu(cfg.data.tofu_dir)
    forget, retain = tofu.split("forget10")[:args.items], tofu.authors(range(20, 24))

    def ctx():
        m, tok = load_model(path)
        return UnlearnContext(m, tok, cfg, forget, retain, tofu.idontknow(), "analytic")

    rows, out = [], {}
    for meth in ("r2f", "fullgrad"):
        res = profile_one(meth, ctx)
        out[meth] = res
        for fn, s in res["stages"].items():
            rows.append({"method": meth, "part": f"{fn}: {STAGES[fn]}", "seconds": s,
                         "share_of_wall": round(s / res["wall_s"], 3)})
        for o in res["top_ops"]:
            rows.append({"method": meth, "part": f"op {o['op']} ({o['calls']} calls)", "seconds": o["self_s"],
                         "share_of_wall": None, "share_of_op_time": o["share"]})
        rows.append({"method": meth, "part": "wall (cProfile run)", "seconds": round(res["wall_s"], 3)})
    notes = [f"Model {model}, {args.items} TOFU forget10 items x {args.views} views, 2 threads; one warm-up run, "
             "then one run under cProfile (stage times: cumulative time of the function) and one under "
             "torch.profiler (operator self time; share_of_op_time is of all operators' self time).",
             "Stages overlap where one calls the other (apply_update is inside calibrate_and_apply)."]
    write("profile", args, rows, ["method", "part", "seconds", "share_of_wall", "share_of_op_time"], notes,
          {"model": model, "items": args.items, "views": args.views, "profiles": out}, deps=ENGINE)


if __name__ == "__main__":
    main()
