"""Retrain: the exact-unlearning reference, the model trained without the forget data."""

from __future__ import annotations

import time

from r2f.engine.models.io import load_model
from r2f.engine.unlearn.base import UnlearnContext, UnlearnError, UnlearnResult


class Retrain:
    name = "retrain"

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        if ctx.retain_model_path is None:
            raise UnlearnError("retrain needs the retain model (ctx.retain_model_path is not set)")
        t0 = time.perf_counter()
        model, _ = load_model(ctx.retain_model_path)
        return UnlearnResult(self.name, model, None, {"direction_s": time.perf_counter() - t0,
                                                       "note": "trained without the forget authors"})


METHOD = Retrain()
