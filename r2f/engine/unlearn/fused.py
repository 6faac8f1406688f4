"""Fused exact step: the exact full gradient of the same loss and views as FullGrad, applied layer by
layer *inside* the backward pass (LOMO-style, ``register_post_accumulate_grad_hook``), so no
full-weight gradient is ever held: each module's gradient is used and freed as soon as it exists.

eta is relative (``||dW|| = eta * ||W||``, as for every method), so the global gradient norm is needed
before anything is written: pass 1 (a backward) only measures each module's gradient norm and
finiteness; pass 2 (the same backward) writes ``W <- W - eta * ||W||/||G|| * G`` per module.
It cannot calibrate eta (each trial would need two more backward passes), so it needs a fixed
``unlearn.eta.value`` (bench/cost.py passes the eta FullGrad calibrated on the same request). It is a
cost baseline (issue #7), not a pipeline default."""

from __future__ import annotations

import math
import time

from r2f.engine.grads import _sign, grads_only_for, target_modules
from r2f.engine.models.nll import token_nll
from r2f.engine.unlearn.apply import _sq_norm
from r2f.engine.unlearn.base import UnlearnContext, UnlearnError, UnlearnResult


def _fused_backward(model, weights: dict, batch: dict, cfg, retain: dict | None, on_grad) -> None:
    """One backward of the whole loss (all views in one batch, the retain term in the same graph):
    ``on_grad(name, weight)`` runs once per module, when its gradient is complete, and the gradient
    is freed right after. (Several backward calls would fire it once per call with a partial
    gradient, and the next forward would see half-updated weights.)"""
    import torch

    wanted = {id(w): n for n, w in weights.items()}

    def hook(p):
        with torch.no_grad():
            on_grad(wanted[id(p)], p)
        p.grad = None

    with grads_only_for(model, weights.values()):
        handles = [w.register_post_accumulate_grad_hook(hook) for w in weights.values()]
        try:
            loss = _sign(cfg.unlearn.objective) * token_nll(model, batch).mean()
            if retain is not None:
                loss = loss + cfg.unlearn.retain_weight * token_nll(model, retain).mean()
            loss.backward()
        finally:
            for h in handles:
                h.remove()


class FusedStep:
    name = "fused"
    adapted_modules = True  # a calibrated step on lora.target_modules (api checks the model has them)

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        import torch

        cfg = ctx.cfg
        eta = cfg.unlearn.eta.value
        if eta is None:
            raise UnlearnError("fused cannot calibrate eta (each trial needs two more backward passes): "
                               "set unlearn.eta.value")
        t0 = time.perf_counter()
        one = 1 << 30  # every sequence in one batch: one backward, so each hook fires once
        batch = ctx.grad_batches(one)[0]
        retain = ctx.retain_batches(one)[0] if cfg.unlearn.retain_weight else None
        mods = dict(ctx.model.named_modules())
        weights = {i.name: mods[i.name].weight for i in target_modules(ctx.model, cfg.lora.target_modules)}
        sq: dict = {}
        if len({id(w) for w in weights.values()}) != len(weights):
            raise UnlearnError("fused: a weight is shared by two adapted modules (tied): not supported")

        def measure(name, p):
            sq[name] = _sq_norm(p.grad)

        _fused_backward(ctx.model, weights, batch, cfg, retain, measure)  # pass 1: norms only
        g_norm = math.sqrt(sum(sq.values()))
        if not math.isfinite(g_norm):
            raise UnlearnError("fused: the gradient holds NaN/Inf: refused, model left unchanged")
        if not g_norm > 0:
            raise UnlearnError("fused: the gradient is zero: nothing to apply, model left unchanged")
        w_norm = math.sqrt(sum(_sq_norm(w.detach()) for w in weights.values()))
        c = eta * w_norm / g_norm

        def step(_name, p):
            p.add_(p.grad, alpha=-c)

        # pass 2: the same deterministic backward; each module is written as its gradient completes
        _fused_backward(ctx.model, weights, batch, cfg, retain, step)
        for n, w in weights.items():
            if not torch.isfinite(w).all():  # cannot happen after pass 1 unless W + c*G overflows
                raise UnlearnError(f"fused: module {n} holds NaN/Inf after the step; reload the model")
        return UnlearnResult(self.name, ctx.model, eta, {"direction_s": time.perf_counter() - t0, "passes": 2,
                                                         "grad_norm": g_norm})


METHOD = FusedStep()
