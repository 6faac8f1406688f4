"""Typed configuration loaded from ``params.yaml``: one section per concept, unknown keys rejected.

The sections live by floor: :mod:`r2f.config.ml` (data, models, lora, paraphrase, decoder, eval),
:mod:`r2f.config.unlearn` (the settings every method shares and one section per method) and
:mod:`r2f.config.governance` (validation, tracking, versioning, pipeline, schedule, scale, gate). This
module holds the whole file's model (:class:`Config`), its loader and the path confinement, and
re-exports every section, so ``from r2f.config import GateConfig`` works.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError, field_validator

from r2f.config._base import ConfigError, _Strict
from r2f.config.governance import (
    GateConfig,
    PipelineConfig,
    PrivacyConfig,
    ScaleConfig,
    ScheduleConfig,
    TrackingConfig,
    ValidationConfig,
    VersioningConfig,
)
from r2f.config.ml import (
    ArchConfig,
    DataConfig,
    DecoderConfig,
    EvalConfig,
    LoraConfig,
    ModelsConfig,
    ModelSpec,
    ParaphraseConfig,
    PretrainedConfig,
    TrainConfig,
)
from r2f.config.unlearn import (
    METHOD_NAMES,
    EtaConfig,
    GradAscentConfig,
    GradDiffConfig,
    LoraMulConfig,
    MethodName,
    NPOConfig,
    R2FMethodConfig,
    UnlearnConfig,
)

__all__ = [
    "METHOD_NAMES", "ArchConfig", "Config", "ConfigError", "DataConfig", "DecoderConfig", "EtaConfig",
    "EvalConfig", "GateConfig", "GradAscentConfig", "GradDiffConfig", "LoraConfig", "LoraMulConfig",
    "MethodName", "ModelSpec", "ModelsConfig", "NPOConfig", "ParaphraseConfig", "PipelineConfig", "PretrainedConfig",
    "PrivacyConfig",
    "R2FMethodConfig", "ScaleConfig", "ScheduleConfig", "TrackingConfig", "TrainConfig", "UnlearnConfig",
    "ValidationConfig", "VersioningConfig", "confine_paths", "load_config",
]


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
    privacy: PrivacyConfig = PrivacyConfig()

    @field_validator("state_dir")
    @classmethod
    def _no_traversal(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("state_dir must not be empty")
        return v

    def section_hash(self, *keys: str, exclude: tuple[str, ...] = ()) -> str:
        """A stable short hash of the named sections or dotted keys (``"unlearn.objective"``): the cache
        key of what they produce. ``exclude`` names dotted keys left out of their section (a setting
        that a cache names another way, or that was added later without changing the result)."""
        payload = {k: self._value(k) for k in keys}
        for key in exclude:
            section, _, field = key.partition(".")
            if section not in payload or not isinstance(payload[section], dict) or field not in payload[section]:
                raise ConfigError(f"{key}: not a key of the hashed sections {', '.join(keys)}")
            payload[section] = {k: v for k, v in payload[section].items() if k != field}
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
    """Load and validate ``params.yaml``; errors name the file and the dotted field path.

    A params file may start with ``extends: <params file>`` (relative to its own folder): it is read
    over that file, section by section (a mapping merges key by key, any other value replaces), so a
    variant such as ``params-smollm2-tofu.yaml`` names only what it changes. ``overrides`` come last."""
    path = Path(path)
    raw = _read_params(path, ())
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


def _read_params(path: Path, chain: tuple[Path, ...]) -> dict:
    """The raw mapping of a params file, with its ``extends:`` chain merged under it."""
    from r2f.safeyaml import load_file

    raw = load_file(path, "params", ConfigError) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: extends: must name another params file, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in {p.resolve() for p in (*chain, path)}:
        seen = " -> ".join(map(str, (*chain, path)))
        raise ConfigError(f"{path}: extends: {base} leads back to a file already read ({seen})")
    if not _inside(os.path.normpath(base_path.resolve()), os.path.normpath(path.resolve().parent)):
        raise ConfigError(f"{path}: extends: {base!r} is outside the folder of the file that extends it")
    return _merge(_read_params(base_path, (*chain, path)), raw)


def read_params(path: str | Path) -> dict:
    """A params file's raw mapping with its ``extends:`` chain merged in (not validated)."""
    return _read_params(Path(path), ())


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
