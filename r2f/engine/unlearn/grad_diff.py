"""GradDiff: gradient ascent on forget plus ``alpha`` x NLL on retain (open-unlearning ``GradDiff``)."""

from __future__ import annotations

import time

from r2f.engine.models.nll import token_nll
from r2f.engine.unlearn.base import UnlearnContext, UnlearnResult
from r2f.engine.unlearn.finetune import finetune
from r2f.engine.unlearn.grad_ascent import forget_term


class GradDiff:
    name = "graddiff"

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        t0 = time.perf_counter()
        gc = ctx.cfg.unlearn.graddiff
        f = forget_term(ctx)
        info = finetune(ctx, gc, lambda m, fb, rb: f(m, fb) + gc.alpha * token_nll(m, rb).mean(), self.name, True)
        info["direction_s"] = time.perf_counter() - t0
        return UnlearnResult(self.name, ctx.model, None, info)


METHOD = GradDiff()
