"""Shared fixtures: a tiny configuration whose real models train in seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true",
             "TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
    os.environ.setdefault(k, v)

TINY = {
    "data.forget_split": "forget01",
    "data.world_split": "forget01",
    "data.retain_authors": 22,
    "models.vocab_size": 400,
    "models.max_len": 64,
    "models.target": {"arch": {"layers": 2, "hidden": 48, "heads": 4, "kv_heads": 2, "intermediate": 96},
                      "train": {"epochs": 3, "lr": 3.0e-3, "batch_size": 32}},
    "models.proxy": {"arch": {"layers": 1, "hidden": 32, "heads": 4, "kv_heads": 2, "intermediate": 64},
                     "train": {"epochs": 3, "lr": 3.0e-3, "batch_size": 32}},
    "paraphrase.views": 3,
    "decoder.pairs": 40,
    "decoder.steps": 15,
    "decoder.hidden": 16,
    "unlearn.eta.calibration_items": 8,
    "unlearn.r2f_pc.calibration_items": 8,
    "unlearn.gradascent.epochs": 1,
    "unlearn.graddiff.epochs": 1,
    "unlearn.npo.epochs": 1,
    "unlearn.lora_mul.steps": 2,
}


def tiny_config(state_dir: Path, **extra):
    from r2f.config import load_config

    return load_config(ROOT / "params.yaml", {**TINY, "state_dir": str(state_dir),
                                              "data.tofu_dir": str(ROOT / "data/tofu"), **extra})


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory):
    return tiny_config(tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="session")
def tiny_models(tiny_cfg):
    """Tokenizer + target/proxy/retain trained once per test session (~20 s)."""
    from r2f.engine.zoo import ensure_models

    return ensure_models(tiny_cfg, log=lambda _m: None, splits=(tiny_cfg.data.forget_split,))


@pytest.fixture(scope="session")
def tofu():
    from r2f.engine.data import load_tofu

    return load_tofu(str(ROOT / "data/tofu"))
