"""FullGrad: the exact full gradient of the same objective over the same views, one calibrated step."""

from __future__ import annotations

import time

from r2f.engine.grads import full_gradients, target_modules
from r2f.engine.unlearn.apply import calibrate_and_apply
from r2f.engine.unlearn.base import UnlearnContext, UnlearnResult


class FullGrad:
    name = "fullgrad"
    adapted_modules = True  # a calibrated step on lora.target_modules (api checks the model has them)

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        cfg = ctx.cfg
        t0 = time.perf_counter()
        direction = full_gradients(ctx.model, target_modules(ctx.model, cfg.lora.target_modules),
                                   ctx.grad_batches(cfg.unlearn.micro_batch), cfg.unlearn.objective,
                                   ctx.retain_batches(), cfg.unlearn.retain_weight,
                                   budget_mb=cfg.unlearn.activation_budget_mb)
        t_grad = time.perf_counter() - t0
        eta, info = calibrate_and_apply(ctx, direction)
        info["direction_s"] = t_grad
        return UnlearnResult(self.name, ctx.model, eta, info)


METHOD = FullGrad()
