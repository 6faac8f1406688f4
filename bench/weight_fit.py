"""The proxy's token-weighting fit (``fit_weighting``): one captured forward pass per prompt serving
every weighting of the grid, against the way it ran before (a forward pass and a Gram per
(prompt, weighting), every prompt's exact gradients held at once), in the same run on the same
prompts. Checks that both give the same scores and the same chosen weighting.

    python bench/weight_fit.py --params params-smollm2-tofu.yaml [--prompts 3]

Writes bench/results/weight_fit[_<world>].json and .md: wall time of each way, the ratio, the phase
breakdown of the new one, and the fit's time extrapolated to ``decoder.weight_fit_prompts``.
"""

from __future__ import annotations

import statistics
import time

from common import load_cfg, parser, setup, world_of, write


def per_weighting_forward(model, tok, cfg, items, grid) -> dict:
    """The fit as it ran before: every prompt's exact gradients first, then per weighting a fresh
    forward pass (activation_grams) per prompt."""
    import torch

    from r2f.engine.decoder import cosine
    from r2f.engine.fidelity import item_batches
    from r2f.engine.grads import full_gradients, target_modules
    from r2f.engine.grams import activation_grams, top_bases

    infos = target_modules(model, cfg.lora.target_modules)
    prompts = []
    for item in items:
        batches = item_batches(tok, cfg, item)
        prompts.append((batches, full_gradients(model, infos, batches, cfg.unlearn.objective,
                                                      budget_mb=cfg.unlearn.activation_budget_mb)))
    scores = {}
    for label, weighting in grid.items():
        cos = []
        for batches, full in prompts:
            bases = top_bases(activation_grams(model, infos, batches, weighting, factored=True), cfg.lora.rank)
            cos.append(cosine(torch.cat([(full[i.name] @ bases[i.name].T @ bases[i.name]).flatten() for i in infos]),
                              torch.cat([full[i.name].flatten() for i in infos])))
        scores[label] = statistics.fmean(cos)
    return scores


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=3, help="proxy prompts timed (the fit uses decoder.weight_fit_prompts)")
    args = p.parse_args()
    setup()
    import torch

    from r2f.engine.api import decoder_train_items
    from r2f.engine.data import load_tofu
    from r2f.engine.fidelity import fit_weighting
    from r2f.engine.grads import target_modules
    from r2f.engine.models.io import load_model
    from r2f.engine.zoo import ensure_models

    cfg = load_cfg(args)
    n = 1 if args.quick else args.prompts
    models = ensure_models(cfg, print)
    model, tok = load_model(models.path("proxy"))
    items = decoder_train_items(cfg, load_tofu(cfg.data.tofu_dir))[:n]
    dc = cfg.decoder
    grid = {"uniform": None, **{f"alpha={a},gamma={g}": (a, g) for a in dc.weight_alphas for g in dc.weight_gammas}}
    infos = target_modules(model, cfg.lora.target_modules)
    held_mb = sum(dict(model.named_modules())[i.name].weight.numel() for i in infos) * 4 / 2**20

    t0 = time.perf_counter()
    timings: dict = {}
    best, new = fit_weighting(model, tok, cfg, items, timings=timings)
    new_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    old = per_weighting_forward(model, tok, cfg, items, grid)
    old_s = time.perf_counter() - t0
    old_best = max((k for k in grid if grid[k] is not None), key=old.get)
    old_best = grid[old_best] if old[old_best] > old["uniform"] else None
    diff = max(abs(new[k] - old[k]) for k in grid)
    ph = {k: round(v / n, 2) for k, v in timings.items()}
    rows = [
        {"way": "before", "prompts": n,
         "weightings": len(grid), "wall_s": round(old_s, 1), "per_prompt_s": round(old_s / n, 1),
         "fit_s_at_config": round(old_s / n * dc.weight_fit_prompts), "vs_before": 1.0,
         "gradients_held_mb": round(held_mb * n), "best": str(old_best)},
        {"way": "now", "prompts": n, "weightings": len(grid),
         "wall_s": round(new_s, 1), "per_prompt_s": round(new_s / n, 1),
         "fit_s_at_config": round(new_s / n * dc.weight_fit_prompts), "vs_before": round(new_s / old_s, 3),
         "gradients_held_mb": round(held_mb), "best": str(best)},
    ]
    for r in rows:
        print(r, flush=True)
    world = world_of(args.params)
    notes = [
        "way: before = a forward pass per (prompt, weighting), every prompt's exact gradients held at once; "
        "now = fit_weighting, one captured forward pass per prompt serving the whole grid.",
        f"proxy: {models.path('proxy').name} of {world or 'the toy world'} ({model.config.num_hidden_layers} layers x "
        f"{model.config.hidden_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters); "
        f"{len(infos)} adapted modules; {n} proxy prompts x {cfg.paraphrase.views} views; grid of {len(grid)} weightings; "
        f"{torch.get_num_threads()} threads. Both ways ran in this process, the new one first.",
        f"same numbers: max |score difference| {diff:.2e} over the grid; chosen weighting {best} vs {old_best} before.",
        f"new fit per prompt: exact gradients {ph['full_gradients_s']} s, captured forward pass {ph['capture_s']} s, "
        f"the grid's Grams + top-{cfg.lora.rank} bases {ph['grid_bases_s']} s (timed inside the fit).",
        f"fit_s_at_config: per-prompt time x decoder.weight_fit_prompts ({dc.weight_fit_prompts}); gradients_held_mb: "
        "float32 exact gradients of the adapted modules held at once (every prompt's before, one prompt's now).",
    ]
    write(f"weight_fit{'_' + world if world else ''}", args, rows,
          ["way", "prompts", "weightings", "wall_s", "per_prompt_s", "fit_s_at_config", "vs_before",
           "gradients_held_mb", "best"], notes,
          {"max_score_diff": diff, "same_best": best == old_best, "phases": ph, "scores_new": new, "scores_before": old},
          cfg=cfg)


if __name__ == "__main__":
    main()
