"""Typed configuration loaded from ``params.yaml``: one section per concept, unknown keys rejected."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from r2f.errors import R2FError


class ConfigError(R2FError, ValueError):
    """A configuration file or value is invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class ModelsConfig(_Strict):
    seed: int = 0
    vocab_size: int = Field(4096, ge=300)
    max_len: int = Field(128, ge=16)
    target: ModelSpec
    proxy: ModelSpec
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
    # (alpha, gamma) fitted on the proxy by `r2f decoder train`; see r2f.engine.grads.token_weights).
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


class EtaConfig(_Strict):
    value: float | None = Field(None, gt=0)  # fixed eta; None = calibrate
    # eta is the update's size relative to the adapted weights: ||dW|| = eta * ||W|| (Frobenius)
    grid: tuple[float, ...] = (0.001, 0.002, 0.003, 0.004, 0.005, 0.007, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2)
    retain_budget: float = Field(0.10, gt=0)  # allowed relative rise of retain NLL
    calibration_items: int = Field(64, ge=4)


# The unlearning methods; r2f.engine.unlearn.base.METHODS maps each to its file (tests/test_unlearn.py
# checks that the two agree). A method with settings also has a section of that name in UnlearnConfig.
MethodName = Literal["r2f", "fullgrad", "fused", "lora_sin", "lora_mul", "gradascent", "graddiff", "npo", "retrain"]
METHOD_NAMES: tuple[str, ...] = get_args(MethodName)


class R2FMethodConfig(_Strict):
    """``unlearn.r2f``: R2F's decoded steps (1 = the paper's single update); the retain budget holds
    for all of them together."""

    steps: int = Field(1, ge=1, le=50)


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
    seed: int = 0  # batch order, LoRA init and the relearning attack (the models' seed is models.seed)
    r2f: R2FMethodConfig = R2FMethodConfig()
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

    @property
    def key_only(self) -> bool:
        return self.loss_tokens == "key" and self.objective != "refusal"


class EvalConfig(_Strict):
    """Evaluation (docs/evaluation.md): TOFU metrics plus the paper's USR, GUR, RAP and drift."""

    batch_size: int = Field(64, ge=1)
    max_new_tokens: int = Field(200, ge=1)  # open-unlearning's TOFU generation budget
    key_recall: float = Field(0.5, gt=0, le=1)  # USR: share of key tokens that still counts as "contains"
    rap_steps: int = Field(10, ge=1)  # relearning attack: fine-tuning steps on paraphrased forget data
    rap_lr: float = Field(1e-3, gt=0)
    rap_batch_size: int = Field(16, ge=1)
    # cap on the retain / real-authors / world-facts items scored (first N); None = all (the TOFU
    # definition). Only for quick runs: capped results are not comparable to full ones.
    max_items: int | None = Field(None, ge=1)


class ValidationConfig(_Strict):
    """Great Expectations checks on forget / retain / holdout data and deletion requests."""

    min_question_chars: int = Field(8, ge=1)
    max_question_chars: int = Field(1000, ge=1)
    min_answer_chars: int = Field(1, ge=1)
    max_answer_chars: int = Field(4000, ge=1)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidationConfig:
        for f in ("question", "answer"):
            if getattr(self, f"min_{f}_chars") > getattr(self, f"max_{f}_chars"):
                raise ValueError(f"min_{f}_chars exceeds max_{f}_chars")
        return self


class TrackingConfig(_Strict):
    """MLflow tracking and registry. ``tracking_uri`` None: ``$MLFLOW_TRACKING_URI`` if set, else
    ``sqlite:///<state_dir>/mlflow/mlflow.db`` with artifacts under ``<state_dir>/mlflow/artifacts``."""

    enabled: bool = True
    tracking_uri: str | None = None
    artifact_root: str | None = None
    decoder_experiment: str = "r2f-proxy-decoder"
    unlearning_experiment: str = "r2f-unlearning"
    target_model_name: str = "r2f-target"
    decoder_model_name: str = "r2f-decoder"


class VersioningConfig(_Strict):
    """DVC: artifacts are tracked in the project's DVC repo and pushed to ``remote_url`` (None: the
    local remote ``<state_dir>/dvc-remote``)."""

    enabled: bool = True
    remote_url: str | None = None
    push: bool = True
    # `dvc remote modify` options of that remote (s3: endpointurl, region, ...); credentials come
    # from the environment (AWS_ACCESS_KEY_ID, ...) or .dvc/config.local, never from params.yaml
    remote_options: dict[str, str] = Field(default_factory=dict)

    @field_validator("remote_options")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        import re

        for k in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", k):
                raise ValueError(f"remote_options: {k!r} is not a DVC remote option name")
            if any(s in k for s in ("secret", "password", "token", "access_key", "key_id", "credential")):
                raise ValueError(f"remote_options: {k!r} is a credential; set it in the environment or "
                                 "with `dvc remote modify --local`, not in params.yaml")
        return v


class PipelineConfig(_Strict):
    """The main job: which deletion request the pipeline runs, and from which model (docs/pipeline.md)."""

    request: str = "requests/forget01-authors.yaml"
    # champion: unlearn from the registry's current champion (sequential deletions build on each
    # other); target: always from the embedded target (independent, reproducible by `dvc repro`)
    start_from: Literal["champion", "target"] = "champion"
    # A request whose final decision is in the registry is not processed again (exactly once, also
    # after a crash); true: run it again as a new candidate (comparing methods, a changed gate)
    rerun: bool = False


class ScheduleConfig(_Strict):
    """Scheduled runs over the request inbox (`r2f serve`, docs/requests.md)."""

    cron: str = "0 2 * * *"          # every night at 02:00
    mode: Literal["sequential", "batch"] = "sequential"  # one unlearning per request, or one for all pending


class ScaleConfig(_Strict):
    """Where the Prefect flow runs R2F's per-item gradient shards and the evaluation shards
    (docs/deployment.md). ``serial``: in the stage's own process (as ``r2f stage`` always does).
    ``dask``: as Prefect tasks on a ``DaskTaskRunner``: on the scheduler at ``address`` (None:
    ``$DASK_SCHEDULER_ADDRESS`` if set, else a ``LocalCluster`` the flow starts for the run)."""

    executor: Literal["serial", "dask"] = "serial"
    address: str | None = None       # tcp://host:8786 of a running Dask scheduler
    workers: int | None = Field(None, ge=1, le=256)   # LocalCluster workers; None: one per CPU core
    threads_per_worker: int = Field(1, ge=1, le=64)   # torch threads in each worker process
    shards: int | None = Field(None, ge=1, le=1024)   # gradient shards; None: one per worker

    @field_validator("address")
    @classmethod
    def _scheduler_address(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("address must not be empty (null: a LocalCluster)")
        return v


class GateConfig(_Strict):
    """Promotion rules (docs/pipeline.md); every rule is an independent, named check."""

    min_forget_quality: float = Field(0.05, ge=0, le=1)
    min_utility_ratio: float = Field(0.95, ge=0)  # model_utility >= this x the champion's
    max_abs_privleak: float = Field(50.0, ge=0)
    min_usr: float = Field(0.5, ge=0, le=1)


class Config(_Strict):
    state_dir: str = ".r2f"
    # Folders besides the project's and the state folder that data.tofu_dir and pipeline.request may
    # point into (absolute paths; see confine_paths)
    allowed_roots: tuple[str, ...] = ()
    data: DataConfig = DataConfig()
    models: ModelsConfig
    lora: LoraConfig = LoraConfig()
    paraphrase: ParaphraseConfig = ParaphraseConfig()
    decoder: DecoderConfig = DecoderConfig()
    unlearn: UnlearnConfig = UnlearnConfig()
    eval: EvalConfig = EvalConfig()
    validation: ValidationConfig = ValidationConfig()
    tracking: TrackingConfig = TrackingConfig()
    versioning: VersioningConfig = VersioningConfig()
    gate: GateConfig = GateConfig()
    pipeline: PipelineConfig = PipelineConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    scale: ScaleConfig = ScaleConfig()

    @field_validator("state_dir")
    @classmethod
    def _no_traversal(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("state_dir must not be empty")
        return v

    def section_hash(self, *keys: str) -> str:
        """A stable short hash of the named sections or dotted keys (``"unlearn.objective"``): the cache
        key of what they produce."""
        payload = {k: self._value(k) for k in keys}
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def _value(self, key: str):
        """The JSON value at a section or dotted key."""
        section, *rest = key.split(".")
        if section not in type(self).model_fields:
            raise ConfigError(f"{key}: no such parameter")
        value = getattr(self, section)
        value = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        for k in rest:
            if not isinstance(value, dict) or k not in value:
                raise ConfigError(f"{key}: no such parameter")
            value = value[k]
        return value


def load_config(path: str | Path = "params.yaml", overrides: dict | None = None) -> Config:
    """Load and validate ``params.yaml``; errors name the file and the dotted field path."""
    path = Path(path)
    from r2f.safeyaml import UnsafeYAML, load_file

    try:
        raw = load_file(path) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a folder, not a params file") from exc
    except UnsafeYAML as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: override {dotted}: '{key}' is not a section")
        node[leaf] = value
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: {msgs}") from exc
    confine_paths(cfg, path.resolve().parent, str(path))
    return cfg


def _inside(p: str, root: str) -> bool:
    return p == root or p.startswith(root.rstrip(os.sep) + os.sep)


def confine_paths(cfg: Config, project: Path, source: str = "params.yaml") -> None:
    """Path fields may not leave their allowed roots (checked on the normalised path as written,
    so ``..`` cannot escape and a link the project itself holds, like data/tofu, still works).
    ``state_dir``: relative paths stay inside the project (an absolute one is the operator's
    choice). ``data.tofu_dir``, ``pipeline.request``: inside the project, the state folder or one of
    ``allowed_roots``."""
    proj = os.path.normpath(str(project))

    def norm(p: str) -> str:
        return os.path.normpath(p if os.path.isabs(p) else os.path.join(proj, p))

    if not os.path.isabs(cfg.state_dir) and not _inside(norm(cfg.state_dir), proj):
        raise ConfigError(f"{source}: state_dir: {cfg.state_dir!r} leaves the project folder {proj}; "
                          "use an absolute path for a state folder elsewhere")
    bad_roots = [r for r in cfg.allowed_roots if not os.path.isabs(r)]
    if bad_roots:
        raise ConfigError(f"{source}: allowed_roots: {bad_roots[0]!r} is not an absolute path")
    roots = [proj, norm(cfg.state_dir), *(os.path.normpath(r) for r in cfg.allowed_roots)]
    for field, value in (("data.tofu_dir", cfg.data.tofu_dir), ("pipeline.request", cfg.pipeline.request)):
        if not any(_inside(norm(value), r) for r in roots):
            raise ConfigError(f"{source}: {field}: {value!r} is outside the project folder, the state folder "
                              "and allowed_roots; add its folder to allowed_roots if it is meant")
