"""The method interface, the registry and the per-request context."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from r2f.config import Config, ParaphraseConfig
from r2f.engine.data import QA
from r2f.engine.grads import CHUNK, qa_batches, view_batches
from r2f.engine.paraphrase import Views, make_all_views
from r2f.errors import R2FError

# method name (r2f.config.MethodName, tested to agree) -> its module in this package
METHODS = {
    "r2f": "r2f", "r2f_pc": "r2f_pc", "r2f_paper": "r2f_paper", "fullgrad": "fullgrad", "fused": "fused",
    "lora_sin": "lora_sin", "lora_mul": "lora_mul",
    "gradascent": "grad_ascent", "graddiff": "grad_diff", "npo": "npo", "retrain": "retrain",
}


class UnlearnError(R2FError, RuntimeError):
    """Unlearning could not be applied; the model is left unchanged."""


class OverBudgetError(UnlearnError):
    """No step size keeps the calibration retain NLL within ``unlearn.eta.retain_budget``: the step
    is refused (nothing written), as a NaN update is."""


@dataclass
class UnlearnContext:
    """Everything a method may use for one deletion request."""

    model: Any
    tokenizer: Any
    cfg: Config
    forget: list[QA]
    retain: list[QA]  # retain items for calibration and retain terms (never the evaluation items)
    refusals: list[str] = field(default_factory=list)
    decoder: Any = None  # a LearnedDecoder or the name of a fixed decoder
    retain_model_path: Path | None = None
    log: Callable[[str], None] = lambda _msg: None
    progress: Callable[[str, int], Callable[[], None]] | None = None
    mapper: Any = None  # r2f.engine.parallel.Mapper: where gradient shards run (None: in this process)
    unseen: list[QA] = field(default_factory=list)  # QA about subjects the model never saw (r2f_pc's forget level)

    def tick(self, label: str, total: int) -> Callable[[], None]:
        return self.progress(label, total) if self.progress else (lambda: None)

    @cached_property
    def views(self) -> tuple[list[Views], list[Views]]:
        """:func:`views_split` of ``forget``, made once per request: the gradient views for the
        method (every step of multi-step R2F) and the held-out views for eta calibration."""
        return views_split(self.forget, self.cfg.paraphrase)

    def grad_batches(self, chunk: int = CHUNK) -> list[dict]:
        """The gradient views (:attr:`views`) as collated batches of ``chunk`` sequences, with the
        request's objective, refusal strings and ``unlearn.key_only``."""
        c = self.cfg
        return view_batches(self.tokenizer, self.views[0], c.models.max_len, c.unlearn.objective, self.refusals,
                            chunk=chunk, key_only=c.unlearn.key_only)

    def retain_batches(self, chunk: int = CHUNK) -> list[dict] | None:
        """``retain`` as collated batches for the retain term; None when ``unlearn.retain_weight`` is 0."""
        c = self.cfg
        return (qa_batches(self.tokenizer, self.retain, c.models.max_len, chunk=chunk, key_only=c.unlearn.key_only)
                if c.unlearn.retain_weight else None)


def views_split(items: list[QA], pc: ParaphraseConfig) -> tuple[list[Views], list[Views]]:
    """(gradient views, held-out views): N views for the gradient, 2 more held out for calibration.
    Each item's views depend on that item alone, so the first k items' views are those of ``items[:k]``."""
    n = pc.views
    allv = make_all_views(items, n + 2, pc)
    grad = [Views(v.item_id, v.questions[:n], v.answer, v.repeated) for v in allv]
    held = [Views(v.item_id, v.questions[n:], v.answer, v.repeated) for v in allv]
    return grad, held


@dataclass
class UnlearnResult:
    method: str
    model: Any
    eta: float | None
    info: dict = field(default_factory=dict)


class Method(Protocol):
    name: str

    def run(self, ctx: UnlearnContext) -> UnlearnResult: ...


def method_config(cfg: Config, name: str | None = None) -> Config:
    """The configuration method ``name`` (default ``unlearn.method``) runs under: ``cfg`` itself, or
    what the method's ``configure`` makes of it (a named mode such as ``r2f_paper``)."""
    configure = getattr(get_method(name or cfg.unlearn.method), "configure", None)
    return configure(cfg) if configure else cfg


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UnlearnError(f"unknown method '{name}'; expected one of {', '.join(METHODS)}")
    module = importlib.import_module(f".{METHODS[name]}", __package__)
    return module.METHOD
