"""Shared loop of the multi-step baselines (open-unlearning's formulations): AdamW with linear
warmup over the method section's ``epochs`` (``unlearn.gradascent``, ``graddiff``, ``npo``) on forget
minibatches (original questions), an optional retain minibatch per step; on a non-finite loss or
weight the original weights are restored."""

from __future__ import annotations

import math
from collections.abc import Callable

from r2f.config import GradAscentConfig
from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.unlearn.base import UnlearnContext, UnlearnError


def finetune(ctx: UnlearnContext, fc: GradAscentConfig, loss_fn: Callable, label: str, with_retain: bool) -> dict:
    """``loss_fn(model, forget_batch, retain_batch_or_None) -> scalar``; ``fc``: the method's section
    (epochs, lr, batch size). Returns a small log dict."""
    import torch

    cfg, model, tok = ctx.cfg, ctx.model, ctx.tokenizer
    uc = cfg.unlearn
    answers = ctx.refusals if uc.objective == "refusal" else None
    f_enc = [encode_qa(tok, q.question, answers[i % len(answers)] if answers else q.answer, cfg.models.max_len,
                       uc.key_only)
             for i, q in enumerate(ctx.forget)]
    r_enc = [encode_qa(tok, q.question, q.answer, cfg.models.max_len, uc.key_only) for q in ctx.retain]
    if with_retain and not r_enc:
        raise UnlearnError(f"{label} needs retain items")
    bs = fc.batch_size
    steps_per_epoch = math.ceil(len(f_enc) / bs)
    total = steps_per_epoch * fc.epochs
    warm = max(1, steps_per_epoch)  # one warmup epoch, as open-unlearning
    orig = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=fc.lr, weight_decay=0.01)
    def lr_factor(s: int) -> float:
        return min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    gen = torch.Generator().manual_seed(cfg.unlearn.seed)
    tick = ctx.tick(label, total)
    losses = []
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
        for _ in range(fc.epochs):
            order = torch.randperm(len(f_enc), generator=gen).tolist()
            for s in range(steps_per_epoch):
                fb = collate([f_enc[i] for i in order[s * bs:(s + 1) * bs]], tok.pad_token_id)
                rb = None
                if with_retain:
                    ridx = torch.randint(len(r_enc), (bs,), generator=gen).tolist()
                    rb = collate([r_enc[i] for i in ridx], tok.pad_token_id)
                loss = loss_fn(model, fb, rb)
                if not torch.isfinite(loss):
                    raise UnlearnError(f"{label}: loss became {float(loss)}; model restored")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                tick()
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise UnlearnError(f"{label}: weights became NaN/Inf; model restored")
    except BaseException:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(orig[n])
        raise
    finally:
        model.eval()
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None
    return {"steps": total, "first_loss": losses[0], "last_loss": losses[-1]}
