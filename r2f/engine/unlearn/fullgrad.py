"""FullGrad: the exact full gradient of the same objective over the same views, one calibrated step."""

from __future__ import annotations

import time

from r2f.engine.grads import full_gradients, qa_batches, target_modules, view_batches
from r2f.engine.unlearn.apply import calibrate_and_apply
from r2f.engine.unlearn.base import UnlearnContext, UnlearnResult


class FullGrad:
    name = "fullgrad"

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        cfg = ctx.cfg
        t0 = time.perf_counter()
        grad_views, _ = ctx.views
        batches = view_batches(ctx.tokenizer, grad_views, cfg.models.max_len, cfg.unlearn.objective, ctx.refusals,
                                chunk=cfg.unlearn.micro_batch, key_only=cfg.unlearn.key_only)
        rb = (qa_batches(ctx.tokenizer, ctx.retain, cfg.models.max_len, key_only=cfg.unlearn.key_only)
              if cfg.unlearn.retain_weight else None)
        direction = full_gradients(ctx.model, target_modules(ctx.model, cfg.lora.target_modules), batches,
                                   cfg.unlearn.objective, rb, cfg.unlearn.retain_weight)
        t_grad = time.perf_counter() - t0
        eta, info = calibrate_and_apply(ctx, direction)
        info["direction_s"] = t_grad
        return UnlearnResult(self.name, ctx.model, eta, info)


METHOD = FullGrad()
