"""R2F's paper configuration as a named mode (issue #21, Liu et al. 2025): peft's random LoRA A
(B = 0), the multi-view LoRA gradients decoded by the learned decoder trained on (LoRA-grad,
full-grad) pairs of the proxy, and one calibrated step. It runs under the configuration of
:meth:`R2FPaper.configure` (:data:`r2f.engine.used.PAPER`), whatever ``lora.init``, ``lora.weighting``
and ``decoder.kind`` say (those are reported as unused for it: :func:`r2f.engine.unlearn.unused.unused_settings`),
so it sits beside the default ``r2f`` (activation basis, rank-r projection) in one table."""

from __future__ import annotations

from r2f.engine.unlearn.base import UnlearnContext, UnlearnError, UnlearnResult
from r2f.engine.unlearn.r2f import decoded_steps
from r2f.engine.used import decoder_used, paper_config


class R2FPaper:
    name = "r2f_paper"
    adapted_modules = True  # a calibrated step on lora.target_modules (api checks the model has them)
    uses_decoder = True  # api.unlearn_model loads the decoder of configure(cfg): trained on proxy pairs

    @staticmethod
    def configure(cfg):
        """The configuration this method runs under (api.unlearn_model and the decoder stage use it)."""
        return paper_config(cfg)

    def run(self, ctx: UnlearnContext) -> UnlearnResult:
        if paper_config(ctx.cfg) != ctx.cfg:
            raise UnlearnError("r2f_paper runs under its own configuration (lora.init peft, decoder.kind learned): "
                               "build its context with R2FPaper.configure(cfg), as r2f.engine.api.unlearn_model does")
        if not decoder_used(ctx.cfg, ctx.decoder)["trained_weights"]:
            raise UnlearnError("r2f_paper decodes with a learned decoder trained on proxy pairs; got "
                               f"{ctx.decoder!r} (r2f.engine.api.ensure_decoder trains it)")
        etas, info = decoded_steps(ctx, 1)
        info["mode"] = "paper"
        return UnlearnResult(self.name, ctx.model, etas[0], info)


METHOD = R2FPaper()
