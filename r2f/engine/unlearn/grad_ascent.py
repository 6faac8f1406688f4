"""GradAscent: maximise the forget NLL (open-unlearning ``GradAscent``)."""

from __future__ import annotations

import time

from r2f.engine.models.nll import token_nll
from r2f.engine.unlearn.base import UnlearnContext, UnlearnResult
from r2f.engine.unlearn.finetune import finetune


def forget_term(ctx: UnlearnContext):
    sign = -1.0 if ctx.cfg.unlearn.objective == "ascent" else 1.0
    return lambda model, fb: sign * token_nll(model, fb).mean()


class GradAscent:
    name = "gradascent"

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        t0 = time.perf_counter()
        f = forget_term(ctx)
        info = finetune(ctx, ctx.cfg.unlearn.gradascent, lambda m, fb, rb: f(m, fb), self.name, with_retain=False)
        info["direction_s"] = time.perf_counter() - t0
        return UnlearnResult(self.name, ctx.model, None, info)


METHOD = GradAscent()
