"""The cost bench's table: ratios against FullGrad / NPO / the own-logits path, notes and the scaling plot
(bench/cost.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_models import CALIBRATED_ITEMS, FIXED_ETA, SHAPES  # noqa: E402


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

