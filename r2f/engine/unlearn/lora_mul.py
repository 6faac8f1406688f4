"""LoRA_mul: several Adam steps on a peft LoRA adapter (default init) with the unlearning loss over
all views, then merged; the merged ``s * B @ A`` is the update direction, scaled by calibrated eta."""

from __future__ import annotations

import time

from r2f.config import LoraMulConfig
from r2f.engine.budget import budgeted_passes
from r2f.engine.grads import _sign, target_modules
from r2f.engine.models.nll import token_nll
from r2f.engine.unlearn.apply import calibrate_and_apply
from r2f.engine.unlearn.base import UnlearnContext, UnlearnResult


def lora_train_delta(ctx: UnlearnContext, batches, mc: LoraMulConfig) -> dict:
    """Train a fresh LoRA adapter for ``mc.steps`` full-batch Adam steps; return -(s B A) per module."""
    import torch
    from peft import LoraConfig, get_peft_model

    cfg, model = ctx.cfg, ctx.model
    infos = target_modules(model, cfg.lora.target_modules)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    torch.manual_seed(cfg.unlearn.seed)
    pm = get_peft_model(model, LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=0.0,
                                          target_modules=[i.name for i in infos]))
    try:
        params = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=mc.lr)
        n = sum(b["input_ids"].shape[0] for b in batches)
        tick = ctx.tick("lora_mul steps", mc.steps)
        def step(b):
            (_sign(cfg.unlearn.objective) * token_nll(pm, b).sum() / n).backward()

        for _ in range(mc.steps):
            opt.zero_grad()
            budgeted_passes(pm, batches, step, cfg.unlearn.activation_budget_mb)  # full batch, cut to the budget
            opt.step()
            tick()
        mods = dict(pm.base_model.model.named_modules())
        return {i.name: -(mods[i.name].scaling["default"] * mods[i.name].lora_B["default"].weight
                          @ mods[i.name].lora_A["default"].weight).detach().clone() for i in infos}
    finally:
        pm.unload()
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, True))
            p.grad = None


class LoraMulti:
    name = "lora_mul"
    adapted_modules = True  # a calibrated step on lora.target_modules (api checks the model has them)

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        cfg = ctx.cfg
        t0 = time.perf_counter()
        direction = lora_train_delta(ctx, ctx.grad_batches(), cfg.unlearn.lora_mul)
        t_grad = time.perf_counter() - t0
        eta, info = calibrate_and_apply(ctx, direction)
        info["direction_s"] = t_grad
        return UnlearnResult(self.name, ctx.model, eta, info)


METHOD = LoraMulti()
