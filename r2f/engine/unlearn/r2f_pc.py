"""R2F-PC: R2F's decoded gradient as a cheap oracle inside a selective update rule (issue #20): each
step decodes the multi-view LoRA gradient at the current weights (no full-weight gradient, no
optimizer state), preconditions it by the retain inputs' covariance per module
(:mod:`r2f.engine.unlearn.precondition`) and applies it with a calibrated step; ``steps`` steps share
the retain budget (step k of n may spend k/n of it in total, as multi-step R2F). With
``retain_projection`` the preconditioned update is also projected off the decoded retain gradients
(GRU, :func:`r2f.engine.unlearn.precondition.project_out`). With ``forget_level: unseen`` each step
takes the smallest eta that brings the held-out forget views toward the model's own NLL on QA about
subjects it never saw, and the steps stop there (the retain budget stays the cap)."""

from __future__ import annotations

import time
from dataclasses import replace

from r2f.engine.grads import qa_batches, target_modules
from r2f.engine.unlearn.apply import answer_nll
from r2f.engine.unlearn.base import UnlearnContext, UnlearnError, UnlearnResult
from r2f.engine.unlearn.precondition import precondition, project_out, retain_transforms, transform_memory_mb
from r2f.engine.unlearn.r2f import decoded_steps, retain_directions

# a preconditioned direction needs etas 100-3,000x a plain step's (issue #20's prototype); the shared
# grid is sized for plain steps (SmolLM2's tops at 1e-3, where r2f_pc stopped far inside its budget on
# the dev request), so its top may double this many times while still within the retain budget
GRID_DOUBLINGS = 10


class R2FPreconditioned:
    name = "r2f_pc"
    adapted_modules = True  # a calibrated step on lora.target_modules (api checks the model has them)
    uses_decoder = True  # api.unlearn_model loads cfg.decoder for it

    @staticmethod
    def own(cfg):
        """``cfg`` with r2f_pc's own paraphrase views and eta calibration items (when set) in place of
        the shared ones; the decoder is not re-chosen (its token weighting is a per-token rule)."""
        pc, up = cfg.unlearn.r2f_pc, {}
        if pc.views is not None and pc.views != cfg.paraphrase.views:
            up["paraphrase"] = cfg.paraphrase.model_copy(update={"views": pc.views})
        if pc.calibration_items is not None and pc.calibration_items != cfg.unlearn.eta.calibration_items:
            eta = cfg.unlearn.eta.model_copy(update={"calibration_items": pc.calibration_items})
            up["unlearn"] = cfg.unlearn.model_copy(update={"eta": eta})
        return cfg.model_copy(update=up) if up else cfg

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        cfg = self.own(ctx.cfg)
        if cfg is not ctx.cfg:  # a fresh context: its views are made with r2f_pc's count
            ctx = replace(ctx, cfg=cfg)
        pc = cfg.unlearn.r2f_pc
        first = cfg.unlearn.eta.calibration_items  # eta is sized on ctx.retain[:first]
        cov_items = ctx.retain[first:first + pc.covariance_items]
        if len(cov_items) < 8:
            raise UnlearnError(f"r2f_pc needs retain items beyond eta's {first} calibration items for the "
                               f"preconditioner; got {len(cov_items)} (unlearn.r2f_pc.covariance_items)")
        t0 = time.perf_counter()
        infos = target_modules(ctx.model, cfg.lora.target_modules)
        whiten = {} if pc.basis == "contrast" else None
        transforms = retain_transforms(ctx.model, infos, qa_batches(ctx.tokenizer, cov_items, cfg.models.max_len),
                                       pc.preconditioner, pc.damping, pc.energy, whiten_out=whiten,
                                       budget_mb=cfg.unlearn.activation_budget_mb, seed=cfg.unlearn.seed,
                                       dtype=pc.factor_dtype)
        t_pre = time.perf_counter() - t0
        t0 = time.perf_counter()
        # the retain gradients the update is projected against (GRU), once, at the original weights
        retain_r = retain_directions(ctx, cov_items, pc.retain_projection) if pc.retain_projection else []
        t_proj = time.perf_counter() - t0

        def transform(d: dict) -> dict:
            return project_out(precondition(d, transforms), retain_r, pc.projection_mu)

        level, t_level = None, 0.0
        if pc.forget_level == "unseen" and cfg.unlearn.eta.value is None:  # a fixed eta has nothing to stop
            if len(ctx.unseen) < 8:
                raise UnlearnError("unlearn.r2f_pc.forget_level 'unseen' needs QA about subjects the model never "
                                   f"saw (the request's context has {len(ctx.unseen)}); set forget_level: null")
            t0 = time.perf_counter()
            level = answer_nll(ctx, ctx.unseen)  # the answer NLL of facts this model never learned
            t_level = time.perf_counter() - t0
        etas, info = decoded_steps(ctx, pc.steps, transform, pc.retain_prob_drop, pc.token_beta, whiten,
                                   level=level, level_scale=pc.level_scale, extend=GRID_DOUBLINGS)
        if level is not None:
            info.update(level_items=len(ctx.unseen), level_s=t_level)
        info.update(views=cfg.paraphrase.views, calibration_items=cfg.unlearn.eta.calibration_items,
                    preconditioner_s=t_pre, preconditioner=pc.preconditioner, basis=pc.basis,
                    preconditioner_mb=round(transform_memory_mb(transforms), 2), covariance_items=len(cov_items),
                    retain_projection=len(retain_r), projection_s=t_proj)
        return UnlearnResult(self.name, ctx.model, sum(etas), info)


METHOD = R2FPreconditioned()
