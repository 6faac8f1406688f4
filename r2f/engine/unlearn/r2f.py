"""R2F (Recover-to-Forget): mean LoRA gradients over N paraphrase views, decoded per module into a
full-weight gradient estimate, applied as one calibrated step. No full-weight gradient is formed."""

from __future__ import annotations

import time

from r2f.engine.decoder import check_family, decode_factors, gram_weighting, sketches
from r2f.engine.grads import lora_gradients, qa_batches, target_modules, view_batches
from r2f.engine.grams import activation_grams, top_bases
from r2f.engine.onepass import group_batches, one_pass_lora_gradients, shard_batches
from r2f.engine.parallel import distributed, map_on_snapshot, split_even
from r2f.engine.unlearn.apply import LowRank, calibrate_and_apply
from r2f.engine.unlearn.base import UnlearnContext, UnlearnResult
from r2f.engine.used import decoder_used, effective_decoder


def r2f_direction(ctx: UnlearnContext, decoder=None, token_beta: float | None = None, whiten: dict | None = None,
                  memory: dict | None = None) -> dict:
    """Sum over basis groups of the decoded, view-averaged LoRA gradient (weighted by group size),
    per module as :class:`LowRank` factors (rank r per group). ``token_beta``: the forget loss weights
    each answer token by ``p^beta`` (:func:`r2f.engine.onepass.objective_loss`); ``whiten``: contrast
    bases against the retain covariance (:func:`r2f.engine.onepass._run_bases`). Both one-pass path only.
    ``memory`` (out): the one-pass path's measured activation bytes per token and micro-batch used
    under ``unlearn.activation_budget_mb``."""
    import torch

    cfg, model, tok = ctx.cfg, ctx.model, ctx.tokenizer
    decoder = decoder if decoder is not None else ctx.decoder
    if decoder is None:
        raise ValueError("r2f needs a decoder (a LearnedDecoder or a fixed decoder name)")
    if decoder_used(cfg, decoder)["trained_weights"]:
        check_family(decoder, model)  # (api.unlearn_model checks it before any work; direct callers here)
    infos = target_modules(model, cfg.lora.target_modules)
    grad_views, _ = ctx.views
    groups = [[v] for v in grad_views] if cfg.lora.basis == "item" else [grad_views]
    total = sum(len(v.questions) for v in grad_views)
    direction = {i.name: LowRank() for i in infos}
    weighting = gram_weighting(cfg, decoder)
    decoder = effective_decoder(cfg, decoder)
    one_pass = cfg.lora.init == "activation" and decoder == "analytic"
    if (token_beta is not None or whiten is not None) and not one_pass:
        raise ValueError("token_beta and contrast bases need the one-pass path (lora.init activation with the "
                         "analytic decoder)")
    tick = ctx.tick("r2f views", 1 if one_pass else len(groups))
    objective, key_only = cfg.unlearn.objective, cfg.unlearn.key_only

    if one_pass:
        # Fast path: every group's basis and LoRA gradient in one forward and one input-gradient-only
        # backward per batch of whole groups (onepass.one_pass_lora_gradients). With an orthonormal A
        # the analytic decoder is (grad_B / s) @ A.
        mb = cfg.unlearn.micro_batch
        batches, seq_groups = group_batches(tok, groups, cfg.models.max_len, objective, ctx.refusals,
                                            chunk=mb, key_only=key_only)
        if distributed(ctx.mapper):
            Y, bases = sharded_one_pass(ctx, batches, seq_groups, weighting, token_beta, whiten)
        else:
            Y, bases = one_pass_lora_gradients(model, infos, batches, seq_groups, cfg.lora.rank, weighting,
                                               objective, micro_batch=mb, token_beta=token_beta, whiten=whiten,
                                               activation_budget_mb=cfg.unlearn.activation_budget_mb, memory=memory)
        tick()
        for info in infos:
            y = Y[info.name]  # groups x out x r
            direction[info.name].add(1.0, y.permute(1, 0, 2).reshape(y.shape[1], -1),
                                     torch.cat([b[info.name] for b in bases]))
    else:
        per_group = sharded_groups(ctx, groups, decoder, weighting) if distributed(ctx.mapper) else None
        for gi, g in enumerate(groups):
            factors = per_group[gi] if per_group else group_factors(model, tok, cfg, infos, g, decoder, weighting,
                                                                      ctx.refusals)
            weight = sum(len(v.questions) for v in g) / total
            for info in infos:
                direction[info.name].add(weight, *factors[info.name])
            tick()
    if cfg.unlearn.retain_weight > 0:
        rb = qa_batches(tok, ctx.retain, cfg.models.max_len, key_only=cfg.unlearn.key_only)
        grams = {}
        lg = lora_gradients(model, infos, rb, cfg.lora.rank, cfg.lora.alpha, "descent", grams_out=grams,
                            budget_mb=cfg.unlearn.activation_budget_mb)
        sk = sketches(infos, lg, grams)
        for info in infos:
            direction[info.name].add(cfg.unlearn.retain_weight, *decode_factors(decoder, sk[info.name]))
    return direction


def retain_directions(ctx: UnlearnContext, items, groups: int) -> list[dict]:
    """Decoded LoRA gradients of the answer NLL of ``items`` cut into ``groups`` contiguous groups, one
    per-module update (factors) per group: the retain gradients R2F-PC's update is projected against
    (``unlearn.r2f_pc.retain_projection``). Same LoRA basis, decoder and token weighting as the forget
    direction; the true answers' NLL (descent; the sign does not matter to a projection)."""
    from r2f.engine.paraphrase import Views

    cfg, model, tok = ctx.cfg, ctx.model, ctx.tokenizer
    infos = target_modules(model, cfg.lora.target_modules)
    decoder = ctx.decoder
    weighting = gram_weighting(cfg, decoder)
    decoder = effective_decoder(cfg, decoder)
    views = [Views(q.id, (q.question,), q.answer, 0) for q in items]
    out = []
    for r in split_even(len(views), groups):
        factors = group_factors(model, tok, cfg, infos, [views[i] for i in r], decoder, weighting, [], "descent")
        d = {i.name: LowRank() for i in infos}
        for info in infos:
            d[info.name].add(1.0, *factors[info.name])
        out.append(d)
    return out


def group_factors(model, tok, cfg, infos, views, decoder, weighting, refusals, objective: str | None = None) -> dict:
    """One basis group's decoded factors per module (the per-group path: peft-initialised LoRA, or
    a decoder other than the analytic projection): its LoRA gradients, then the decoder.
    ``objective``: default ``unlearn.objective``."""
    objective = objective or cfg.unlearn.objective
    batches = view_batches(tok, views, cfg.models.max_len, objective, refusals, chunk=cfg.unlearn.micro_batch,
                           key_only=cfg.unlearn.key_only)
    if cfg.lora.init == "activation":
        grams = activation_grams(model, infos, batches, weighting, factored=True)
        lg = lora_gradients(model, infos, batches, cfg.lora.rank, cfg.lora.alpha, objective,
                            A_init=top_bases(grams, cfg.lora.rank), budget_mb=cfg.unlearn.activation_budget_mb)
    else:
        grams = {}
        lg = lora_gradients(model, infos, batches, cfg.lora.rank, cfg.lora.alpha,
                            objective, grams_out=grams, seed=cfg.unlearn.seed, budget_mb=cfg.unlearn.activation_budget_mb)
    sk = sketches(infos, lg, grams)  # q/k/v (gate/up) share one Gram: decomposed once when the decoder needs it
    return {i.name: decode_factors(decoder, sk[i.name]) for i in infos}


def sharded_groups(ctx: UnlearnContext, groups, decoder, weighting) -> list[dict]:
    """:func:`group_factors` of every group, in contiguous shards of groups on ``ctx.mapper``."""
    cfg = ctx.cfg
    parts = split_even(len(groups), cfg.scale.shards or ctx.mapper.workers)
    ctx.log(f"r2f gradients: {len(groups)} groups in {len(parts)} shards on {ctx.mapper.workers} workers")
    args = [{"groups": [groups[i] for i in r], "decoder": decoder, "weighting": weighting,
             "refusals": list(ctx.refusals)} for r in parts]
    outs = map_on_snapshot(ctx.mapper, ctx.model, ctx.tokenizer, cfg, groups_shard, args, "r2f-gradients")
    return [f for out in outs for f in out]


def groups_shard(model, tok, cfg, *, groups, decoder, weighting, refusals) -> list[dict]:
    """Worker side of :func:`sharded_groups` (module level: pickled by reference)."""
    infos = target_modules(model, cfg.lora.target_modules)
    return [group_factors(model, tok, cfg, infos, g, decoder, weighting, refusals) for g in groups]


def sharded_one_pass(ctx: UnlearnContext, batches, seq_groups, weighting, token_beta=None,
                     whiten=None) -> tuple[dict, list]:
    """:func:`one_pass_lora_gradients` over shards of whole batches on ``ctx.mapper`` (one per worker,
    or ``scale.shards``); each shard loads a snapshot of the current weights. Every group lies in one
    batch and the loss is normalised by the whole request's sequence count, so the shards' Y and
    bases, concatenated in order, are the single-process result (tested).

    Shards are cut at batch boundaries, not at item boundaries: the fitted token weighting gives
    prompt tokens ``alpha`` times the *batch's* mean answer weight (``grams.token_weights``), so an
    item's basis depends on the batch it is in; re-batching the items of a shard changed the decoded
    direction by 4 % (measured on the default request). The cost: shards are as even as the batch
    count allows (5 batches on 2 workers: 3 and 2)."""
    import torch

    cfg = ctx.cfg
    shards = shard_batches(batches, seq_groups, cfg.scale.shards or ctx.mapper.workers)
    ctx.log(f"r2f gradients: {len(seq_groups)} sequences in {len(batches)} batches, {len(shards)} shards "
            f"on {ctx.mapper.workers} workers")
    args = [{"batches": sh["batches"], "seq_groups": sh["seq_groups"], "weighting": weighting,
             "n_seqs": len(seq_groups), "token_beta": token_beta, "whiten": whiten} for sh in shards]
    outs = map_on_snapshot(ctx.mapper, ctx.model, ctx.tokenizer, cfg, one_pass_shard, args, "r2f-gradients")
    Y = {name: torch.cat([y[name] for y, _ in outs]) for name in outs[0][0]}
    return Y, [b for _, bases in outs for b in bases]


def one_pass_shard(model, _tok, cfg, *, batches, seq_groups, weighting, n_seqs, token_beta=None,
                   whiten=None) -> tuple[dict, list]:
    """Worker side of :func:`sharded_one_pass` (module level: pickled by reference)."""
    infos = target_modules(model, cfg.lora.target_modules)
    return one_pass_lora_gradients(model, infos, batches, seq_groups, cfg.lora.rank, weighting, cfg.unlearn.objective,
                                   micro_batch=cfg.unlearn.micro_batch, n_seqs=n_seqs, token_beta=token_beta,
                                   whiten=whiten, activation_budget_mb=cfg.unlearn.activation_budget_mb)


class R2F:
    name = "r2f"
    adapted_modules = True  # a calibrated step on lora.target_modules (api checks the model has them)
    uses_decoder = True  # api.unlearn_model loads cfg.decoder for it

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        """``unlearn.r2f.steps`` decoded steps (default 1, the paper's single update); each step
        recomputes the LoRA gradients on the current weights and is calibrated against the
        *original* retain NLL. Step k (1-based) of n may spend k/n of the retain budget in total,
        so the budget holds for all steps together and no single step spends it all."""
        etas, info = decoded_steps(ctx, ctx.cfg.unlearn.r2f.steps)
        return UnlearnResult(self.name, ctx.model, etas[0] if len(etas) == 1 else sum(etas), info)


def decoded_steps(ctx: UnlearnContext, steps: int, transform=None, prob_drop: float | None = None,
                  token_beta: float | None = None, whiten: dict | None = None,
                  level: float | None = None, level_scale: float = 1.0, extend: int = 0) -> tuple[list, dict]:
    """``steps`` re-decoded R2F steps (shared by r2f and r2f_pc): each decodes the LoRA gradients at
    the current weights, optionally reshapes the direction (``transform(direction) -> direction``),
    and is calibrated against the *original* retain NLL; step k of n may spend k/n of the budget
    (``prob_drop``: the budget as a probability drop, apply.calibrate_and_apply). Stops when a later
    step finds no eta within its share. ``level``: the held-out forget NLL to reach (r2f_pc's forget
    level): step k of n takes the smallest eta reaching ``f0 + level_scale (level - f0) k / n`` (f0
    the views' NLL before the first step), within its budget share, and the steps stop once the whole
    target is reached. ``extend``: doublings of the eta grid's top allowed (apply.calibrate_and_apply).
    Returns (etas applied, the last step's info + timings)."""
    etas, t_grad, base_r, base_f, info, memory, forget = [], 0.0, None, None, {}, {}, []
    for step in range(steps):
        t0 = time.perf_counter()
        direction = r2f_direction(ctx, token_beta=token_beta, whiten=whiten, memory=memory)
        if transform is not None:
            direction = transform(direction)
        t_grad += time.perf_counter() - t0
        target = None
        if level is not None:  # f0: the views' NLL before the first step (its calibration measures it)
            def target(cur, k=step + 1, f0=base_f):
                f0 = cur if f0 is None else f0
                return f0 + level_scale * (level - f0) * k / steps
        eta, info = calibrate_and_apply(ctx, direction, base_retain=base_r, refuse_over_budget=step == 0,
                                        budget_share=(step + 1, steps), prob_drop=prob_drop, forget_target=target,
                                        extend=extend)
        base_r = info.get("base_retain_nll", base_r)
        base_f = info.get("base_forget_nll") if base_f is None else base_f
        if eta == 0.0:
            break  # the retain budget is spent: nothing applied in this step
        etas.append(eta)
        forget.append(info.get("forget_nll"))
        if level is not None and info["forget_nll"] >= base_f + level_scale * (level - base_f):
            break  # the forget level is reached: further steps would overshoot it
    info.update(direction_s=t_grad, decoder=decoder_used(ctx.cfg, ctx.decoder), steps=len(etas), etas=etas,
                forget_nll_steps=forget)
    if level is not None:
        info.update(forget_level=level, forget_nll_before=base_f,
                    level_reached=bool(forget) and forget[-1] >= base_f + level_scale * (level - base_f))
    if memory:  # the one-pass path: the sequences per forward + backward (and, under
        # unlearn.activation_budget_mb, what one forward keeps per token)
        info.update(micro_batch_used=memory.get("micro_batch"),
                    activation_kb_per_token=memory.get("activation_kb_per_token"))
    return etas, info

METHOD = R2F()
