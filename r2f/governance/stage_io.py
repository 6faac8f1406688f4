"""Where the pipeline's stages keep their outs, and how a stage reads what an earlier one wrote.

Each stage has one out, a folder under ``<state_dir>/pipeline/`` (``OUTS``). The stage bodies
(:mod:`r2f.governance.stages`), the stage registry (:mod:`r2f.governance.pipeline`), the flow and the
recovery and retention tools all find a stage's folder through :func:`stage_dir`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from r2f.config import Config
from r2f.engine.data import load_tofu
from r2f.errors import R2FError

# stage name -> its out folder under <state_dir>/pipeline/ (the stage's one DVC out)
OUTS = {"prepare": "request", "validate": "validation", "train_models": "models", "train_decoder": "decoder",
        "unlearn": "unlearned", "evaluate": "eval", "gate": "gate", "promote": "promotion"}

Log = Callable[[str], None]


class PipelineError(R2FError, RuntimeError):
    """A stage cannot run (missing input from an earlier stage, ...); the message says which."""


def stage_dir(cfg: Config, name: str) -> Path:
    """The folder of a stage's outs."""
    if name not in OUTS:
        raise PipelineError(f"unknown stage '{name}'; expected one of {', '.join(OUTS)}")
    return Path(cfg.state_dir) / "pipeline" / OUTS[name]


def read_json(path: Path) -> dict:
    """A JSON out of an earlier stage; a clear error naming the file when that stage has not run."""
    if not path.is_file():
        raise PipelineError(f"{path}: missing; run the earlier stages first (`r2f run` or `dvc repro`)")
    return json.loads(path.read_text())


def link_tree(src: Path, dst: Path) -> None:
    """Copy a folder, hard-linking files when the filesystem allows (artifacts are immutable)."""
    def copy(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=copy)


def request_info(cfg: Config) -> dict:
    """The prepared request (``prepare``'s ``request.json``): ids, digests and rows, no plaintext."""
    return read_json(stage_dir(cfg, "prepare") / "request.json")


def request_rows(cfg: Config, info: dict) -> list[str] | None:
    """The request's rows when they are a strict part of its evaluation split (forget metrics are
    then computed on them alone), ``None`` when the request is the whole split."""
    split_ids = [q.id for q in load_tofu(cfg.data.tofu_dir).split(info["eval_split"])]
    return None if set(info["item_ids"]) == set(split_ids) else list(info["item_ids"])


def forget_items(cfg: Config) -> list:
    """The request's forget rows, as TOFU items."""
    info = request_info(cfg)
    full = {q.id: q for q in load_tofu(cfg.data.tofu_dir).split("full")}
    return [full[i] for i in info["item_ids"]]
