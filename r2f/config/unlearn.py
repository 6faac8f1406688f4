"""The ``unlearn`` section: settings every method shares, then one section per method that has its own."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from r2f.config._base import _Strict


class EtaConfig(_Strict):
    value: float | None = Field(None, gt=0)  # fixed eta; None = calibrate
    # eta is the update's size relative to the adapted weights: ||dW|| = eta * ||W|| (Frobenius)
    grid: tuple[float, ...] = (0.001, 0.002, 0.003, 0.004, 0.005, 0.007, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2)
    retain_budget: float = Field(0.10, gt=0)  # allowed relative rise of retain NLL
    calibration_items: int = Field(64, ge=4)


# The unlearning methods; r2f.engine.unlearn.base.METHODS maps each to its file (tests/test_unlearn.py
# checks that the two agree). A method with settings also has a section of that name in UnlearnConfig.
# r2f_paper (the paper's configuration: peft A, learned decoder, one step) has no section: it sets
# lora.init, lora.weighting and decoder.kind itself (r2f.engine.unlearn.r2f_paper).
MethodName = Literal["r2f", "r2f_pc", "r2f_paper", "fullgrad", "fused", "lora_sin", "lora_mul", "gradascent", "graddiff",
                     "npo", "retrain"]
METHOD_NAMES: tuple[str, ...] = get_args(MethodName)


class R2FMethodConfig(_Strict):
    """``unlearn.r2f``: R2F's decoded steps (1 = the paper's single update); the retain budget holds
    for all of them together."""

    steps: int = Field(1, ge=1, le=50)


class R2FPreconditionedConfig(_Strict):
    """``unlearn.r2f_pc``: R2F's decoded direction preconditioned by the retain inputs' covariance
    (r2f.engine.unlearn.precondition), in ``steps`` re-linearised steps sharing the retain budget."""

    # 2 steps of 2 paraphrase views each, sized on 32 calibration items: the cost levers chosen on
    # bench/results/selective_dev_smollm2 (r2f_pc_cheap: 0.44x the wall time of 3 steps x 5 views x 64
    # items, the request still at the never-seen level, dev privleak +1 against -19, neighbours +2 %)
    steps: int = Field(2, ge=1, le=50)
    # paraphrase views per re-decoded step (None: paraphrase.views, the paper's 5); the decoder (its token
    # weighting fit) stays the one of paraphrase.views
    views: int | None = Field(2, ge=1, le=20)
    # retain items each step's eta is sized on (None: unlearn.eta.calibration_items); the covariance items
    # come after them
    calibration_items: int | None = Field(32, ge=8)
    # the retain budget of all steps together as the largest drop of the calibration retain answers'
    # probability (None: unlearn.eta.retain_budget, a relative NLL rise); r2f.engine.unlearn.apply
    # 0.20 with forget_level "unseen": a cap, not the sizing rule (the steps stop at the level first
    # where they can); chosen on bench/results/selective_dev_smollm2 (dev authors, no evaluation set)
    retain_prob_drop: float | None = Field(0.20, gt=0, lt=1)
    # kfac: both Kronecker factors of the retain Fisher (S_r, A_r), the most selective on the dev
    # request at equal budget; input: A_r only (forward only); nullspace: AlphaEdit's projection
    preconditioner: Literal["input", "nullspace", "kfac"] = "kfac"
    damping: float = Field(1e-3, gt=0)      # input: lam = damping x mean eigenvalue of A_r
    energy: float = Field(0.99, gt=0, lt=1)  # nullspace: share of A_r's trace projected out
    # retain items for A_r: the ones after eta's calibration items, so the step is sized on items
    # the preconditioner never saw
    covariance_items: int = Field(128, ge=8)
    # how the preconditioner's factors are kept between steps: bfloat16 halves their memory (1.1 GB of
    # float32 on SmolLM2); they are made in float64 and applied in the direction's float32
    factor_dtype: Literal["float32", "bfloat16"] = "float32"
    # None: plain ascent on the answer NLL; beta: each answer token's NLL weighted by p^beta (WGA), so
    # re-linearised steps stop pushing tokens already forgotten (r2f.engine.onepass.objective_loss)
    token_beta: float | None = Field(None, gt=0)
    # R2F's A per item: "activation" = the top eigenvectors of the item's Gram (R2F's own); "contrast" =
    # the top generalised eigenvectors against the retain covariance A_r (large for the item, small for
    # retain text; r2f.engine.onepass._run_bases)
    basis: Literal["activation", "contrast"] = "activation"
    # GRU-style projection (arXiv 2503.09117, generalised): the preconditioned update minus its part
    # along the decoded retain gradients of the covariance items cut into this many groups, so to first
    # order those retain losses do not move (0: off). projection_mu: ridge, x the mean squared norm
    retain_projection: int = Field(0, ge=0, le=256)
    projection_mu: float = Field(1e-3, gt=0)
    # where the steps stop forgetting (docs/method.md): null = spend the retain budget (the largest eta
    # within it); "unseen" = the held-out forget views' NLL should reach the model's own answer NLL on
    # ``level_items`` QA about subjects it never saw (TOFU authors outside the world and every evaluation
    # set), the level a model that never learned the request sits at: each step takes the smallest eta
    # reaching its share of the way there, the retain budget stays the cap, and the steps stop once the
    # level is reached (overshooting is what forget quality and privleak penalise too)
    forget_level: Literal["unseen"] | None = "unseen"
    level_scale: float = Field(1.0, gt=0, le=2)  # the target: before + level_scale x (unseen - before)
    level_items: int = Field(100, ge=8)


class GradAscentConfig(_Strict):
    """``unlearn.gradascent``: the multi-step fine-tuning baselines' loop (open-unlearning defaults
    scaled down); GradDiff and NPO add their own settings to it."""

    epochs: int = Field(5, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(16, ge=1)


class GradDiffConfig(GradAscentConfig):
    """``unlearn.graddiff``: the fine-tuning loop plus ``alpha`` x NLL on retain."""

    alpha: float = Field(1.0, ge=0)


class NPOConfig(GradDiffConfig):
    """``unlearn.npo``: the fine-tuning loop, NPO's ``beta`` and ``alpha`` x NLL on retain."""

    beta: float = Field(0.1, gt=0)


class LoraMulConfig(_Strict):
    """``unlearn.lora_mul``: Adam steps on the LoRA adapter before it is merged."""

    steps: int = Field(10, ge=1)
    lr: float = Field(1e-3, gt=0)


# Flat keys of earlier params files -> where they live now (a clear error instead of "extra field")
_MOVED = {
    "r2f_steps": ("r2f.steps",),
    "baseline_epochs": ("gradascent.epochs", "graddiff.epochs", "npo.epochs"),
    "baseline_lr": ("gradascent.lr", "graddiff.lr", "npo.lr"),
    "baseline_batch_size": ("gradascent.batch_size", "graddiff.batch_size", "npo.batch_size"),
    "npo_beta": ("npo.beta",),
    "graddiff_alpha": ("graddiff.alpha", "npo.alpha"),
    "lora_mul_steps": ("lora_mul.steps",),
    "lora_mul_lr": ("lora_mul.lr",),
}


def _listed(keys: tuple[str, ...]) -> str:
    *rest, last = (f"unlearn.{k}" for k in keys)
    return f"{', '.join(rest)} and {last}" if rest else last


class UnlearnConfig(_Strict):
    """Settings every method shares, then one section per method that has its own (methods without
    settings, like fullgrad, have none)."""

    method: MethodName = "r2f"
    objective: Literal["ascent", "refusal"] = "ascent"
    retain_weight: float = Field(0.0, ge=0)
    # answer tokens the unlearning loss covers: "answer" = all of them; "key" = the answer's key
    # words only (content words not in the question; r2f.engine.models.encoding.encode_qa, docs/method.md)
    loss_tokens: Literal["answer", "key"] = "answer"
    eta: EtaConfig = EtaConfig()
    # Sequences per forward + backward of the single-step methods (r2f, fullgrad): fewer = less
    # activation memory. R2F below an item's view count adds one no-grad forward (low-memory mode,
    # r2f.engine.onepass; docs/performance.md). It is also R2F's batch size, and with the fitted token
    # weighting an item's basis depends slightly on the items batched with it (docs/performance.md).
    micro_batch: int = Field(40, ge=1, le=4096)
    # MB one forward + backward of R2F's one-pass path may keep for its backward (saved activations and
    # kept module inputs), measured on the model per request: it lowers the sequences per forward +
    # backward below micro_batch where they would not fit (same result: r2f.engine.onepass). None: off.
    # 1024 keeps a forget01-sized deletion of a 270M-parameter, 262k-vocabulary model under 4 GB
    # (bench/results/cost-270m); the toy model never reaches it
    activation_budget_mb: float | None = Field(1024, gt=0)
    seed: int = 0  # batch order, LoRA init and the relearning attack (the models' seed is models.seed)
    r2f: R2FMethodConfig = R2FMethodConfig()
    r2f_pc: R2FPreconditionedConfig = R2FPreconditionedConfig()
    gradascent: GradAscentConfig = GradAscentConfig()
    graddiff: GradDiffConfig = GradDiffConfig()
    npo: NPOConfig = NPOConfig()
    lora_mul: LoraMulConfig = LoraMulConfig()

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data):
        if isinstance(data, dict):
            moved = [f"unlearn.{k} moved to {_listed(new)}" for k, new in _MOVED.items() if k in data]
            if moved:
                raise ValueError("; ".join(moved))
        return data

    @field_validator("method", mode="before")
    @classmethod
    def _known_method(cls, v):
        if v not in METHOD_NAMES:
            raise ValueError(f"unknown method '{v}'; expected one of {', '.join(METHOD_NAMES)}")
        return v

    @model_validator(mode="after")
    def _token_beta_needs_ascent(self):
        if self.r2f_pc.token_beta is not None and self.objective != "ascent":
            raise ValueError(f"unlearn.r2f_pc.token_beta weights an ascent on the forget answers' NLL; with "
                             f"unlearn.objective '{self.objective}' it would have no meaning: set it to null")
        return self

    @property
    def key_only(self) -> bool:
        return self.loss_tokens == "key" and self.objective != "refusal"
