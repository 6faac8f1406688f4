"""(LoRA-grad, full-grad) pairs and decoder fidelity: how close a decoded gradient is to the truth.

Used to train the learned decoder on the proxy and, for evaluation only, to measure every decoder on
held-out forget prompts of proxy and target. A pair is one module of one prompt (its N views).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from r2f.engine.decoder import LearnedDecoder, Sketch, cosine, decode, sketches, train_decoder
from r2f.engine.grads import full_gradients, lora_gradients, target_modules, view_batches
from r2f.engine.grams import activation_grams, capture_activations, grams_of, top_bases
from r2f.engine.paraphrase import make_views


def item_batches(tokenizer, cfg, item) -> list[dict]:
    """The collated batches of one item's N views: the prompt of a (LoRA-grad, full-grad) pair and of the weighting fit."""
    views = [make_views(item, cfg.paraphrase.views, None, cfg.paraphrase.min_similarity, cfg.paraphrase.max_similarity)]
    return view_batches(tokenizer, views, cfg.models.max_len, cfg.unlearn.objective, key_only=cfg.unlearn.key_only)


@dataclass
class PromptPairs:
    item_id: str
    pairs: list  # [(Sketch, true full gradient)]


def iter_pairs(model, tokenizer, cfg, items, a_init: str | None = None, progress=None,
               weighting: tuple[float, float] | None = None):
    """For each item, one at a time: N views -> exact full gradients and the LoRA sketch of every
    target module (a :class:`PromptPairs`). A caller that scores and drops each prompt holds one
    prompt's gradients and Grams, not every prompt's.

    ``weighting`` is the token weighting of the activation Gram (``None`` = uniform)."""
    a_init = a_init or cfg.lora.init
    infos = target_modules(model, cfg.lora.target_modules)
    for item in items:
        batches = item_batches(tokenizer, cfg, item)
        budget = cfg.unlearn.activation_budget_mb
        full = full_gradients(model, infos, batches, cfg.unlearn.objective, budget_mb=budget)
        if a_init == "activation":
            grams = activation_grams(model, infos, batches, weighting, factored=True)
            A = top_bases(grams, cfg.lora.rank)
            lg = lora_gradients(model, infos, batches, cfg.lora.rank, cfg.lora.alpha, cfg.unlearn.objective, A_init=A,
                                budget_mb=budget)
        else:
            grams = {}
            lg = lora_gradients(model, infos, batches, cfg.lora.rank, cfg.lora.alpha, cfg.unlearn.objective,
                                grams_out=grams, budget_mb=budget)
        sk = sketches(infos, lg, grams)
        yield PromptPairs(item.id, [(sk[i.name], full[i.name]) for i in infos])
        del full, grams, lg, sk  # before the next item's gradients: hold one prompt at a time
        if progress:
            progress()


def collect_pairs(model, tokenizer, cfg, items, a_init: str | None = None, progress=None,
                  weighting: tuple[float, float] | None = None) -> list[PromptPairs]:
    """Every item's :func:`iter_pairs` at once (the decoder's training set)."""
    return list(iter_pairs(model, tokenizer, cfg, items, a_init, progress, weighting))


def flatten(prompts: list[PromptPairs]) -> list[tuple[Sketch, object]]:
    return [p for pp in prompts for p in pp.pairs]


def fidelity_of(decoders: dict, prompts) -> dict:
    """:func:`fidelity` of several decoders (``{label: decoder}``) over ``prompts``, which may be a
    generator (:func:`iter_pairs`): each prompt is scored by every decoder, then dropped."""
    import numpy
    import torch

    per_prompt: dict = {k: [] for k in decoders}
    per_module: dict = {k: [] for k in decoders}
    for pp in prompts:
        true = [g for _, g in pp.pairs]
        true_flat = torch.cat([t.flatten() for t in true])
        for label, decoder in decoders.items():
            dec = [decode(decoder, sk) for sk, _ in pp.pairs]
            per_prompt[label].append(cosine(torch.cat([d.flatten() for d in dec]), true_flat))
            per_module[label] += [cosine(d, t) for d, t in zip(dec, true)]
            del dec
        del pp, true, true_flat
    out = {}
    for label in decoders:
        pp_cos = per_prompt[label]
        out[label] = {"cosine_mean": statistics.fmean(pp_cos), "cosine_p10": float(numpy.percentile(pp_cos, 10)),
                      "module_cosine_mean": statistics.fmean(per_module[label]), "n_prompts": len(pp_cos)}
    return out


def fidelity(decoder, prompts) -> dict:
    """Cosine between decoded and true gradients: per prompt over all modules concatenated (the
    model-level direction), plus the mean per-module cosine."""
    return fidelity_of({"d": decoder}, prompts)["d"]


def fit_weighting(model, tokenizer, cfg, items, log=lambda _m: None,
                  timings: dict | None = None) -> tuple[tuple[float, float] | None, dict]:
    """Grid-search the token weighting (alpha, gamma) of the activation Gram on proxy prompts:
    the pair whose top-r basis best captures the exact gradients (cosine of the projection).
    Returns (best weighting or None if uniform wins, {label: mean cosine}).

    One prompt at a time: its exact gradients and one captured forward pass serve every weighting
    of the grid (:func:`r2f.engine.grams.grams_of`), so neither a forward pass per weighting nor every
    prompt's full gradients at once. ``timings``, if given, receives the seconds of each phase summed
    over the prompts (``full_gradients_s``, ``capture_s``, ``grid_bases_s``)."""
    import time

    import torch

    t = timings if timings is not None else {}
    for k in ("full_gradients_s", "capture_s", "grid_bases_s"):
        t.setdefault(k, 0.0)
    infos = target_modules(model, cfg.lora.target_modules)
    grid = {"uniform": None}
    grid.update({f"alpha={a},gamma={g}": (a, g) for a in cfg.decoder.weight_alphas for g in cfg.decoder.weight_gammas})
    cos: dict[str, list[float]] = {label: [] for label in grid}
    for item in items:
        batches = item_batches(tokenizer, cfg, item)
        t0 = time.perf_counter()
        full = full_gradients(model, infos, batches, cfg.unlearn.objective, budget_mb=cfg.unlearn.activation_budget_mb)
        true = torch.cat([full[i.name].flatten() for i in infos])
        t1 = time.perf_counter()
        cap = capture_activations(model, infos, batches, with_stats=len(grid) > 1)
        t2 = time.perf_counter()
        for label, weighting in grid.items():
            bases = top_bases(grams_of(cap, weighting, factored=True), cfg.lora.rank)
            dec = torch.cat([(full[i.name] @ bases[i.name].T @ bases[i.name]).flatten() for i in infos])
            cos[label].append(cosine(dec, true))
        t["full_gradients_s"] += t1 - t0
        t["capture_s"] += t2 - t1
        t["grid_bases_s"] += time.perf_counter() - t2
        del full, true, cap
    scores = {label: statistics.fmean(c) for label, c in cos.items()}
    best, best_s = None, scores["uniform"]
    for label, weighting in grid.items():
        if weighting is not None and scores[label] > best_s:
            best, best_s = weighting, scores[label]
    log(f"token weighting: uniform {scores['uniform']:.3f} -> best {best} {best_s:.3f} on {len(items)} proxy prompts")
    return best, scores


def fit_decoder(cfg, model, tokenizer, items, log=lambda _m: None, progress=None):
    """Fit the learned decoder on a proxy ``model`` from its prompts ``items`` (never forget or
    evaluation items); returns it with its metadata (not saved).

    * ``lora.init: activation``: fit the token weighting of the activation Gram (grid search on
      proxy prompts). The spectral prior is not trained: with A aligned to the Gram's eigenvectors it
      cannot change the decode (it reduces to the projection).
    * ``lora.init: peft``: train the spectral-prior MLP on (LoRA-grad, full-grad) pairs (MSE + cosine).
    """
    import time

    t0 = time.perf_counter()
    meta: dict = {"kind": "learned", "a_init": cfg.lora.init, "objective": cfg.unlearn.objective,
                  "weighting": None, "pairs": 0, "steps": 0,
                  "proxy_layers": model.config.num_hidden_layers, "proxy_hidden": model.config.hidden_size}
    dc = cfg.decoder
    if cfg.lora.init == "activation":
        if cfg.lora.weighting == "loss":
            best, scores = fit_weighting(model, tokenizer, cfg, items[:dc.weight_fit_prompts], log)
            meta.update(weighting=list(best) if best else None, weighting_scores=scores)
        dec, curve = LearnedDecoder(dc.hidden, dc.seed), []
        val_items = items[dc.weight_fit_prompts:dc.weight_fit_prompts + 8]
    else:
        per_prompt = len(target_modules(model, cfg.lora.target_modules))
        n_prompts = -(-dc.pairs // per_prompt)
        log(f"decoder: collecting {n_prompts} proxy prompts x {per_prompt} modules ({n_prompts * per_prompt} pairs)")
        tick = progress("proxy pairs", n_prompts) if progress else None
        train = collect_pairs(model, tokenizer, cfg, items[:n_prompts], progress=tick)
        tick = progress("decoder steps", dc.steps) if progress else None
        dec, curve = train_decoder(flatten(train), dc.hidden, dc.steps, dc.lr, dc.cosine_weight, dc.seed,
                                   progress=tick)
        meta.update(pairs=len(flatten(train)), steps=dc.steps, loss_first=curve[0], loss_last=curve[-1],
                    loss_curve=curve[:: max(1, len(curve) // 50)])
        val_items = items[n_prompts:n_prompts + 8]
    weighting = tuple(meta["weighting"]) if meta["weighting"] else None
    val = iter_pairs(model, tokenizer, cfg, val_items, weighting=weighting)  # scored one prompt at a time
    # with the activation basis the (untrained) spectral prior decodes exactly to the projection
    # (docs/method.md section 5): skip its per-module eigendecompositions
    scored = fidelity_of({"analytic": "analytic"} if cfg.lora.init == "activation"
                         else {"analytic": "analytic", "learned": dec}, val)
    analytic = scored["analytic"]
    learned = scored.get("learned", analytic)
    meta.update(val_learned=learned, val_analytic=analytic, train_s=round(time.perf_counter() - t0, 1))
    dec.meta = meta
    if cfg.lora.init == "activation":
        log(f"decoder: token weighting {meta['weighting'] or 'uniform'} fitted; no decoder weights are trained with "
            f"lora.init activation (the decode is the projection): held-out proxy cosine "
            f"{meta['val_analytic']['cosine_mean']:.3f} ({meta['train_s']} s)")
    else:
        log(f"decoder: held-out proxy cosine learned {meta['val_learned']['cosine_mean']:.3f} "
            f"vs analytic {meta['val_analytic']['cosine_mean']:.3f} ({meta['train_s']} s)")
    return dec
