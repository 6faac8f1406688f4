"""The ML sections of ``params.yaml``: data, models, lora, paraphrase, decoder and eval."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from r2f.config._base import _Strict, resolve_precision


class DataConfig(_Strict):
    tofu_dir: str = "data/tofu"
    forget_split: Literal["forget01", "forget05", "forget10"] = "forget10"
    # The target and proxy learn the authors of this split (TOFU's forget splits are nested:
    # forget01 < forget05 < forget10), so one target serves every deletion that is a subset of it.
    world_split: Literal["forget01", "forget05", "forget10"] = "forget10"
    # The default models train on the forget authors plus this many retain authors (from the start of
    # `full`, which includes the 20 authors of `retain_perturbed`); 180 trains on all of TOFU.
    retain_authors: int = Field(20, ge=1, le=180)

    @model_validator(mode="after")
    def _forget_within_world(self) -> DataConfig:
        order = ["forget01", "forget05", "forget10"]
        if order.index(self.forget_split) > order.index(self.world_split):
            raise ValueError(f"forget_split {self.forget_split} is not contained in world_split "
                             f"{self.world_split}: the target never learned those authors")
        return self


class ArchConfig(_Strict):
    layers: int = Field(ge=1)
    hidden: int = Field(ge=8)
    heads: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    intermediate: int = Field(ge=8)

    @model_validator(mode="after")
    def _heads_divide(self) -> ArchConfig:
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError("hidden must be divisible by heads and heads by kv_heads")
        return self


class TrainConfig(_Strict):
    epochs: int = Field(ge=1)
    lr: float = Field(gt=0, le=1.0)
    batch_size: int = Field(16, ge=1)
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class ModelSpec(_Strict):
    arch: ArchConfig
    train: TrainConfig


class PretrainedConfig(_Strict):
    """``models.pretrained``: the target is a packaged pretrained model fine-tuned on TOFU (the field's
    setting) instead of a model trained from scratch (docs/worlds.md). Its retain models are fine-tuned
    the same way without a split's authors; the proxy is the packaged model before fine-tuning."""

    name: str = "smollm2-135m-instruct"  # r2f.engine.pretrained.PACKAGED
    method: Literal["full", "lora"] = "full"  # lora: a LoRA adapter on every linear layer, merged after training
    lora_rank: int = Field(32, ge=1)
    train: TrainConfig = TrainConfig(epochs=5, lr=1e-4, batch_size=8)
    # bf16: mixed precision (bfloat16 autocast, float32 weights and optimizer): about 2x the float32
    # throughput on CPUs with AVX512-BF16 (docs/worlds.md has the measurement), many times slower where
    # bfloat16 is emulated (AVX2 only: bench/results/bf16_speed.md); auto: bf16 where the CPU has it
    # natively, else fp32 (resolved at load). The saved model is float32.
    precision: Literal["fp32", "bf16", "auto"] = "auto"

    @field_validator("precision")
    @classmethod
    def _resolve(cls, v: str) -> str:
        return resolve_precision(v)
    # None: every decoder layer is trained (full fine-tuning); N: only the top N decoder layers (and the
    # final norm); embeddings and the lower layers stay as packaged. Full method only.
    train_layers: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _layers_need_full(self):
        if self.train_layers is not None and self.method != "full":
            raise ValueError("models.pretrained.train_layers applies to method: full only")
        return self


class ModelsConfig(_Strict):
    seed: int = 0
    vocab_size: int = Field(4096, ge=300)
    max_len: int = Field(128, ge=16)
    target: ModelSpec
    proxy: ModelSpec
    # The embedded models also learn TOFU's general-knowledge sets (real_authors, world_facts): the toy
    # world's "general knowledge", which a model trained from scratch has no other way to know. Model
    # utility then measures damage to knowledge the model has (docs/evaluation.md); false: TOFU authors only.
    general_knowledge: bool = True
    # None: the toy world (target, proxy and retain models trained from scratch, above); set: a packaged
    # pretrained model fine-tuned on TOFU (params-smollm2-tofu.yaml), which knows real authors already
    pretrained: PretrainedConfig | None = None
    # The retain model uses the target's architecture and training recipe on the retain rows only.


class LoraConfig(_Strict):
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    target_modules: tuple[str, ...] = (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
    )
    # "activation": A = top-r right singular vectors of the module's inputs on the request's views
    # (one extra forward pass); "peft": peft's default random A. See docs/method.md.
    init: Literal["activation", "peft"] = "activation"
    # Token weights of the activation Gram: "uniform" or "loss" (logit-gradient norms, with
    # (alpha, gamma) fitted on the proxy by `r2f decoder train`; see r2f.engine.grams.token_weights).
    weighting: Literal["uniform", "loss"] = "loss"
    basis: Literal["item", "request"] = "item"


class ParaphraseConfig(_Strict):
    views: int = Field(5, ge=1, le=16)
    paraphraser: Literal["rules"] = "rules"
    min_similarity: float = Field(0.2, ge=0, le=1)
    max_similarity: float = Field(0.97, ge=0, le=1)


class DecoderConfig(_Strict):
    kind: Literal["learned", "prior", "analytic", "lora_only"] = "learned"
    hidden: int = Field(64, ge=4)
    pairs: int = Field(1000, ge=8)  # (module, prompt) training pairs from the proxy
    steps: int = Field(300, ge=1)
    lr: float = Field(3e-3, gt=0)
    cosine_weight: float = Field(1.0, ge=0)
    # grid searched on proxy prompts for the token weighting (alpha, gamma) of the activation Gram
    weight_alphas: tuple[float, ...] = (0.0, 0.03, 0.1, 0.3, 1.0)
    weight_gammas: tuple[float, ...] = (0.5, 1.0, 2.0)
    weight_fit_prompts: int = Field(12, ge=1)
    seed: int = 0


class EvalConfig(_Strict):
    """Evaluation (docs/evaluation.md): TOFU metrics plus the paper's USR, GUR, RAP and drift."""

    batch_size: int = Field(64, ge=1)
    max_new_tokens: int = Field(200, ge=1)  # open-unlearning's TOFU generation budget
    key_recall: float = Field(0.5, gt=0, le=1)  # USR: share of key tokens that still counts as "contains"
    rap_steps: int = Field(10, ge=1)  # relearning attack: fine-tuning steps on paraphrased forget data
    rap_lr: float = Field(1e-3, gt=0)
    rap_batch_size: int = Field(16, ge=1)
    # cap on the retain / real-authors / world-facts items scored (first N); None = all (the TOFU
    # definition). Quick runs, and worlds whose evaluation is too slow on CPU (params-smollm2-tofu.yaml):
    # capped results compare with each other, not with uncapped ones.
    max_items: int | None = Field(None, ge=1)
    # fp32, or bf16: teacher-forced scoring and the relearning attack's fine-tuning under bfloat16
    # autocast (weights stay float32); generation (ROUGE, USR) and drift always fp32. Measured against
    # fp32 in bench/results/eval_precision.md. A world's references and candidates share it (it names
    # the evaluation cache folder). auto: bf16 where the CPU computes bfloat16 natively, else fp32
    # (resolved at load, like models.pretrained.precision).
    precision: Literal["fp32", "bf16", "auto"] = "fp32"

    @field_validator("precision")
    @classmethod
    def _resolve(cls, v: str) -> str:
        return resolve_precision(v)
