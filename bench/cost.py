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
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ENGINE, load_cfg, parser, resumable, run_child, setup, write  # noqa: E402
from real import REAL  # noqa: E402  bench/real.py's settings on SmolLM2 (eta grid, key-word loss, NPO lr)

MODELS = ("tiny", "smollm2-135m", "random-360m", "random-1.7b", "random-270m-262k")
# SmolLM2-360M's and -1.7B's published shapes (config.json of HuggingFaceTB/SmolLM2-360M / -1.7B) with
# random weights: cost depends on the shapes, not on what the weights know. No calibration on them
# (a fixed eta): their forward passes would cost minutes and their eta means nothing.
SHAPES = {
    "random-360m": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                    "num_attention_heads": 15, "num_key_value_heads": 5},
    "random-1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
                    "num_attention_heads": 32, "num_key_value_heads": 32},
    # another family's shape (Gemma-3-270M's widths: 270 M parameters, 168 M of them the tied 262 k x 640
    # embedding) in SmolLM2's llama layout: the vocabulary, not the body, sets its memory (issue #21 item 4)
    "random-270m-262k": {"hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
                         "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                         "vocab_size": 262144, "tie_word_embeddings": True},
}
# shapes whose deletion is measured whole, calibration included (the memory of scoring and calibration
# is what grows with the vocabulary), on a forget01-sized request, against the model's own logits as
# the same-run baseline (own_logits: the path before r2f.engine.models.head, kept as its fallback)
CALIBRATED = {"random-270m-262k"}
CALIBRATED_ITEMS = 40
FIXED_ETA = 1e-4


def model_path(cfg, key: str) -> Path:
    """The model folder for ``key`` (built or converted once, cached under the state dir)."""
    if key == "tiny":
        from r2f.engine.zoo import ensure_models

        return ensure_models(cfg, log=lambda _m: None).path("target")
    from r2f.engine.pretrained import materialize

    smol = materialize(cfg.state_dir, "smollm2-135m-instruct")
    if key == "smollm2-135m":
        return smol
    if key not in SHAPES:
        raise ValueError(f"unknown model '{key}'; expected one of {MODELS}")
    out = Path(cfg.state_dir) / "bench-cost" / key
    if not (out / "r2f_model.json").exists():
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from r2f.engine.models.io import load_model, save_model

        _, tok = load_model(smol)
        conf = AutoConfig.from_pretrained(smol, local_files_only=True)
        for k, v in SHAPES[key].items():
            setattr(conf, k, v)
        if "head_dim" not in SHAPES[key]:
            conf.head_dim = conf.hidden_size // conf.num_attention_heads
        torch.manual_seed(0)
        save_model(AutoModelForCausalLM.from_config(conf), tok, out,
                   {"role": f"cost benchmark only: random weights in the shape of {key}", **SHAPES[key]})
    return out


def extra_for(key: str, views: int, eta: float | None, micro_batch: int | None = None) -> dict:
    extra = {"paraphrase.views": views, "unlearn.eta.calibration_items": 16}
    if micro_batch:
        extra["unlearn.micro_batch"] = micro_batch
    if key != "tiny":
        extra.update(REAL)
    if key in SHAPES and key not in CALIBRATED:
        eta = FIXED_ETA
    if eta is not None:
        extra["unlearn.eta.value"] = eta
    return extra


class LiveTensors:
    """Peak bytes of tensor storages allocated while active and alive at the same time (weights
    and buffers excluded: every method holds them), via a ``TorchDispatchMode`` and weak
    references to the storages. (torch's MemTracker needs every parameter to require grad, which
    frozen-weight methods do not.)"""

    def __init__(self, model) -> None:
        self.skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        self.cur = self.peak = 0
        self.live: dict = {}

    def __enter__(self):
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                        st = t.untyped_storage()
                        key = st.data_ptr()
                        if key and key not in tracker.skip and key not in tracker.live:
                            tracker.live[key] = st.nbytes()
                            tracker.cur += st.nbytes()
                            tracker.peak = max(tracker.peak, tracker.cur)
                            weakref.finalize(st, tracker.free, key)
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def free(self, key) -> None:
        self.cur -= self.live.pop(key, 0)

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)


# -- child: one (model, method, views, items) ------------------------------------------------------
def one(args) -> None:
    import torch

    from r2f.engine.data import load_tofu
    from r2f.engine.models.io import load_model
    from r2f.engine.models.memory import peak_rss_mb, reset_peak_rss
    from r2f.engine.unlearn import UnlearnContext, get_method

    torch.set_num_threads(2)
    cfg = load_cfg(args, {**extra_for(args.model, args.views, args.eta, args.micro_batch),
                          **({"unlearn.activation_budget_mb": None if args.budget == "off" else float(args.budget)}
                             if args.budget else {})})
    path = model_path(cfg, args.model)
    tofu = load_tofu(cfg.data.tofu_dir)
    forget = tofu.split("forget10")[:args.items]
    retain = tofu.authors(range(20, 24))
    method = get_method(args.one)

    def ctx(c=cfg):
        model, tok = load_model(path)
        if args.own_logits:  # the baseline: score from the model's own [B, P, vocab] logits (head's fallback)
            from r2f.engine.models import head

            setattr(model, head._PROBE_ATTR, False)
        return UnlearnContext(model, tok, c, forget, retain, tofu.idontknow(), "analytic")

    walls, direction, info, peaks = [], [], {}, []
    n_params = None
    rss0 = None
    for _ in range(args.repeats):
        c = ctx()
        n_params = sum(p.numel() for p in c.model.parameters())
        reset_peak_rss()  # after each load: the peak is the method's (loaded model and libraries included)
        rss0 = rss0 or peak_rss_mb()  # the loaded model and libraries: every method holds them
        t0 = time.perf_counter()
        res = method.run(c)
        walls.append(time.perf_counter() - t0)
        peaks.append(peak_rss_mb())
        direction.append(res.info.get("direction_s"))
        info = {"eta": res.eta, **{k: res.info[k] for k in ("activation_kb_per_token", "micro_batch_used")
                                    if k in res.info}}
        del c, res
    peak = max(peaks)
    row = {"model": args.model, "method": args.one, "views": args.views, "items": args.items,
           "own_logits": bool(args.own_logits), "logit_budget": None if args.own_logits else _budget(),
           "budget_mb": cfg.unlearn.activation_budget_mb,
           "micro_batch": args.micro_batch or cfg.unlearn.micro_batch,
           "params_m": round(n_params / 1e6, 1), "repeats": args.repeats,
           "wall_s_median": statistics.median(walls), "wall_s_min": min(walls), "wall_s_max": max(walls),
           "direction_s_median": statistics.median(direction) if None not in direction else None,
           "peak_rss_mb": peak, "base_rss_mb": rss0, **info}
    if not args.no_counters:
        from torch.utils.flop_counter import FlopCounterMode

        # FLOPs and tensor memory of the step itself: eta fixed to the one just calibrated, so the
        # calibration trials (forward passes, the same grid for every method) are not counted
        fixed = cfg
        if info.get("eta"):
            eta = cfg.unlearn.eta.model_copy(update={"value": info["eta"]})
            fixed = cfg.model_copy(update={"unlearn": cfg.unlearn.model_copy(update={"eta": eta})})
        c = ctx(fixed)
        with FlopCounterMode(display=False) as fc:
            method.run(c)
        row["flops_step"] = int(fc.get_total_flops())
        c = ctx(fixed)
        with LiveTensors(c.model) as lt:
            method.run(c)
        row["peak_tensor_mb"] = round(lt.peak / 2**20, 1)
        del c
    print("RESULT " + json.dumps(row, default=str))


def _budget() -> int:
    from r2f.engine.models import head

    return head.LOGIT_BUDGET


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
          deps=[*ENGINE, "bench/real.py"])


def add_ratios(rows: list[dict]) -> None:
    def find(method, r, views=None):
        return next((f for f in rows if f["method"] == method and f["model"] == r["model"] and "error" not in f
                     and f["views"] == (views or r["views"]) and f["items"] == r["items"]
                     and f.get("low_memory") == r.get("low_memory")
                     and bool(f.get("own_logits")) == bool(r.get("own_logits"))
                     and not f.get("activation_budget_mb")), None)

    for r in rows:
        if "error" in r:
            continue
        fg, fg1 = find("fullgrad", r), find("fullgrad", r, 1)
        npo = next((f for f in rows if f["method"] == "npo" and f["model"] == r["model"] and "error" not in f
                    and f["items"] == r["items"]), None)
        if fg:
            r["ratio_time_vs_fullgrad"] = r["wall_s_median"] / fg["wall_s_median"]
            if r.get("direction_s_median") and fg.get("direction_s_median"):
                r["ratio_direction_time_vs_fullgrad"] = r["direction_s_median"] / fg["direction_s_median"]
            if r.get("flops_step") and fg.get("flops_step"):
                r["ratio_flops_vs_fullgrad"] = r["flops_step"] / fg["flops_step"]
            r["ratio_mem_vs_fullgrad"] = r["peak_rss_mb"] / fg["peak_rss_mb"]
            if r.get("peak_tensor_mb") and fg.get("peak_tensor_mb"):
                r["ratio_tensor_mem_vs_fullgrad"] = r["peak_tensor_mb"] / fg["peak_tensor_mb"]
        if fg1:
            r["ratio_time_vs_fullgrad_1view"] = r["wall_s_median"] / fg1["wall_s_median"]
        own = next((f for f in rows if f["method"] == r["method"] and f["model"] == r["model"]
                    and "error" not in f and f.get("own_logits") and f["items"] == r["items"]
                    and f["views"] == r["views"] and f.get("activation_budget_mb") == r.get("activation_budget_mb")), None)
        if own and not r.get("own_logits"):
            r["ratio_mem_vs_own_logits"] = r["peak_rss_mb"] / own["peak_rss_mb"]
            r["ratio_time_vs_own_logits"] = r["wall_s_median"] / own["wall_s_median"]
        if npo:
            r["ratio_time_vs_npo"] = r["wall_s_median"] / npo["wall_s_median"]
            r["ratio_mem_vs_npo"] = r["peak_rss_mb"] / npo["peak_rss_mb"]


def notes_for(rows: list[dict], args) -> list[str]:
    return [
        f"One request = the first `items` TOFU forget10 QA items ({args.items} in the main rows), `views` "
        "paraphrase views each; calibration on 16 held-out views / retain items (authors 20-23). "
        "SmolLM2 rows use bench/real.py's settings (key-word loss, eta grid 1e-6..1e-3).",
        "wall_s: the method's run (gradient + eta calibration + writing the update), model already loaded; "
        "median of `repeats` runs (1 for NPO, the 360M model and >40 items). direction_s: the gradient part "
        "(for R2F: bases + LoRA gradients + decoding), the rest is eta calibration (forward passes only).",
        "peak_rss_mb: the child's peak RSS during the method's runs (reset after each model load, so it includes "
        "the loaded model and libraries, which every method holds, but not the load itself; max over repeats). "
        "peak_tensor_mb: peak of tensors allocated "
        "during one extra run and alive at once (weights and buffers excluded), eta fixed to the calibrated one. "
        "flops_step: torch.utils.flop_counter over one more run with eta fixed (the step without calibration "
        "trials).",
        "fused: the exact FullGrad step applied inside the backward (r2f/engine/unlearn/fused.py) at FullGrad's "
        "calibrated eta; it cannot calibrate (two backward passes per trial), so its time excludes calibration.",
        "r2f runs with the analytic decoder on the activation basis: the learned and prior decoders reduce to "
        "it there (docs/method.md), so the cost is the same; the token weighting is uniform (the fitted "
        "weighting costs the same forward).",
        f"random-360m / random-1.7b: SmolLM2-360M's / -1.7B's shapes with random weights (no larger SmolLM2 is "
        f"installable offline); 1 item, eta fixed to {FIXED_ETA} (no calibration: wall_s is the step itself), "
        "1 run each; their unlearning effect is meaningless, only their cost is.",
        "random-270m-262k: a 270 M-parameter, 262 k-token-vocabulary shape (Gemma-3-270M's widths in the llama "
        f"layout, random weights, tied embedding); one whole deletion of {CALIBRATED_ITEMS} items (forget01's size) per "
        "row, eta calibration included. own_logits: the model's own logits at answer positions ([B, P, vocab], the "
        "path before the chunked output layer r2f/engine/models/head.py, kept as its fallback): the same-run "
        "baseline of ratio_mem_vs_own_logits. budget_mb: unlearn.activation_budget_mb (what one forward + "
        "backward may keep for its backward, measured per model: activation_kb_per_token); micro_batch_used: the "
        "sequences per forward + backward it left. Goal (issue #21): R2F's peak below 4 GB.",
        "micro_batch: sequences per forward + backward (unlearn.micro_batch). Rows with micro_batch 1 are the "
        "low-memory mode of both methods (FullGrad accumulates its gradient over one sequence at a time; R2F "
        "runs a no-grad forward for the bases, then one sequence per forward + backward); their ratios compare "
        "with FullGrad at micro_batch 1.",
    ]


def plot(rows: list[dict], path: Path, items: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ok = [r for r in rows if "error" not in r and r["method"] in ("r2f", "fullgrad") and r["views"] == 5
          and not r.get("low_memory")]
    if not ok:
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    first = ok[0]["model"]
    for meth, style in (("r2f", "o-"), ("fullgrad", "s--")):
        pts = sorted((r["items"], r["wall_s_median"], r["peak_rss_mb"]) for r in ok
                     if r["method"] == meth and r["model"] == first)
        if pts:
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], style, label=meth)
        main = [r for r in ok if r["method"] == meth and r["items"] == (1 if r["model"] in SHAPES else items)]
        size = sorted((r["params_m"], r["direction_s_median"] / r["items"], r["peak_rss_mb"]) for r in main
                      if r.get("direction_s_median"))
        if size:
            axes[1].plot([s[0] for s in size], [s[1] for s in size], style, label=meth)
            axes[2].plot([s[0] for s in size], [s[2] for s in size], style, label=meth)
    axes[0].set(xscale="log", yscale="log", xlabel=f"forget items per request ({first})", ylabel="wall s",
                title="cost vs request size (5 views)")
    axes[1].set(xscale="log", yscale="log", xlabel="model params (M)", ylabel="gradient part, s per item",
                title="time vs model size (5 views)")
    axes[2].set(xscale="log", xlabel="model params (M)", ylabel="peak RSS MB", title="memory vs model size")
    for a in axes:
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
