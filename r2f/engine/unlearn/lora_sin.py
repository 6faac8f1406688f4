"""LoRA_sin: one LoRA step (peft's default init) kept in LoRA space, then merged: the update is the
merged adapter's own direction ``s * dB @ A`` with ``dB = -grad_B``, scaled by the calibrated eta."""

from __future__ import annotations

import time

from r2f.engine.grads import lora_gradients, target_modules
from r2f.engine.unlearn.apply import calibrate_and_apply
from r2f.engine.unlearn.base import UnlearnContext, UnlearnResult


class LoraSingle:
    name = "lora_sin"
    adapted_modules = True  # a calibrated step on lora.target_modules (api checks the model has them)

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        cfg = ctx.cfg
        t0 = time.perf_counter()
        lg = lora_gradients(ctx.model, target_modules(ctx.model, cfg.lora.target_modules), ctx.grad_batches(),
                            cfg.lora.rank, cfg.lora.alpha, cfg.unlearn.objective, retain_batches=ctx.retain_batches(),
                            retain_weight=cfg.unlearn.retain_weight, seed=cfg.unlearn.seed,
                            budget_mb=cfg.unlearn.activation_budget_mb)
        direction = {n: g.scaling * g.grad_B @ g.A for n, g in lg.items()}
        t_grad = time.perf_counter() - t0
        eta, info = calibrate_and_apply(ctx, direction)
        info["direction_s"] = t_grad
        return UnlearnResult(self.name, ctx.model, eta, info)


METHOD = LoraSingle()
