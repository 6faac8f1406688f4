"""Peak memory of r2f_pc's retain factors (r2f.engine.unlearn.precondition) on a world's target: the
input covariance A_r (activation Gram over ``unlearn.r2f_pc.covariance_items`` retain items) and the
output factor S_r (the sampled Fisher's input-gradient backward), each the way it runs now against
the way it ran before, every case in its own process so each peak RSS is its own.

    python bench/precondition_memory.py --params params-smollm2-tofu.yaml

Cases: ``gram`` streamed inside the hooks (now) vs every token's inputs captured first (before);
``fisher`` on row slices cut to ``unlearn.activation_budget_mb`` of saved activations (now,
r2f.engine.budget) vs one backward per 40-sequence batch (before).
Writes bench/results/precondition_memory[_<world>].json and .md.
"""

from __future__ import annotations

import json
import time

from common import load_cfg, parser, peak_rss_mb, run_rows, setup, world_of, write

CASES = [("gram", "now"), ("gram", "before"), ("fisher", "now"), ("fisher", "before")]


def child(args) -> None:
    from r2f.engine.api import calibration_items
    from r2f.engine.data import load_tofu
    from r2f.engine.grads import qa_batches, target_modules
    from r2f.engine.grams import activation_grams, capture_activations, grams_of
    from r2f.engine.models.io import load_model
    from r2f.engine.unlearn.precondition import output_grad_covariances
    from r2f.engine.zoo import ensure_models

    cfg = load_cfg(args)
    model, tok = load_model(ensure_models(cfg).path("target"))
    first = cfg.unlearn.eta.calibration_items
    # the covariance items r2f_pc uses: the calibration retain authors (api.unlearn_model's ctx.retain)
    # after eta's calibration items
    calib = calibration_items(cfg, load_tofu(cfg.data.tofu_dir))
    items = calib[first:first + cfg.unlearn.r2f_pc.covariance_items]
    infos = target_modules(model, cfg.lora.target_modules)
    batches = qa_batches(tok, items, cfg.models.max_len)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if args.case == "gram":
        if args.way == "now":
            activation_grams(model, infos, batches)
        else:
            grams_of(capture_activations(model, infos, batches, with_stats=False))
    else:
        output_grad_covariances(model, infos, batches,
                                budget_mb=cfg.unlearn.activation_budget_mb if args.way == "now" else None)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    row = {"case": args.case, "way": args.way, "items": len(items), "tokens": tokens,
           "batches": len(batches), "wall_s": round(time.perf_counter() - t0, 1), "model_rss_mb": round(base),
           "peak_rss_mb": round(peak_rss_mb())}
    print("RESULT " + json.dumps(row))


def _write(args, cfg, rows: list[dict]) -> None:
    for r in rows:
        before = next((b for b in rows if b.get("case") == r.get("case") and b.get("way") == "before"), {})
        if r.get("peak_rss_mb") and before.get("peak_rss_mb"):
            r["peak_vs_before"] = round(r["peak_rss_mb"] / before["peak_rss_mb"], 3)
    world = world_of(args.params)
    notes = [f"target of {world or 'the toy world'}; the covariance items r2f_pc reads (calibration authors 20.. after "
             f"eta's {cfg.unlearn.eta.calibration_items} items), batches of up to 40 sequences (qa_batches); "
             f"lora.target_modules {list(cfg.lora.target_modules)}.",
             "gram before: every token's module inputs captured (float32), then X^T X per group; now: X^T X summed "
             "inside the forward hooks, one product per group of modules sharing an input.",
             "fisher before: one input-gradient backward per 40-sequence batch; now: row slices whose saved "
             f"activations fit unlearn.activation_budget_mb ({cfg.unlearn.activation_budget_mb} MB, bytes per token "
             "measured on the first pass; r2f.engine.budget), so the labels are sampled per pass: S_r is the same "
             "statistic, not the same numbers.",
             "peak_rss_mb: the process's peak (model loaded, model_rss_mb, included); each case in its own process. "
             "A memory bench: its runs' wall_s (in the JSON rows) are not idle-core timings."]
    write(f"precondition_memory{'_' + world if world else ''}", args, rows,
          ["case", "way", "items", "tokens", "batches", "model_rss_mb", "peak_rss_mb", "peak_vs_before"],
          notes, {}, cfg=cfg)


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--case", help="(internal) run one case in this process")
    p.add_argument("--way", help="(internal)")
    args = p.parse_args()
    setup()
    if args.case:
        return child(args)
    cfg = load_cfg(args)
    world = world_of(args.params)
    stem = f"precondition_memory{'_' + world if world else ''}"
    # each finished case is written at once; a rerun of the same code resumes from them
    run_rows(__file__, args, stem, [({"case": c, "way": w}, ["--case", c, "--way", w]) for c, w in CASES],
             lambda rows: _write(args, cfg, rows))


if __name__ == "__main__":
    main()
