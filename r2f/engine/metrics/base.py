"""One result shape for every metric, and the input checks all metric functions share.

Every metric function of ``r2f.engine.metrics`` returns a :class:`MetricResult`; bad input (empty,
NaN/inf, mismatched lengths) raises ``ValueError`` whose message starts with the metric's name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MetricResult:
    """A metric's aggregate ``value`` plus its per-item values and free-form ``extra`` facts.

    ``per_item`` is a ``{item_id: value}`` dict when item ids were given, else a list in input
    order (``None`` entries mark items a metric skips, as open-unlearning does). ``value_log10``
    is filled from ``value`` when it is positive, so a forget quality of 1e-200 stays readable in
    logs; a metric may pass it explicitly (e.g. when ``value`` underflowed to 0).
    """

    name: str
    value: float | None
    per_item: dict[str, float] | list | None = None
    extra: dict = field(default_factory=dict)
    value_log10: float | None = None

    def __post_init__(self):
        if not self.name:
            raise ValueError("MetricResult needs a non-empty name")
        if self.value is not None:
            v = float(self.value)
            if not math.isfinite(v):
                raise ValueError(f"{self.name}: value is not finite ({v})")
            object.__setattr__(self, "value", v)
            if self.value_log10 is None and v > 0:
                object.__setattr__(self, "value_log10", math.log10(v))
        if self.value_log10 is not None:
            object.__setattr__(self, "value_log10", float(self.value_log10))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (numpy scalars and arrays become Python floats and lists)."""
        return {"name": self.name, "value": self.value, "value_log10": self.value_log10,
                "per_item": _plain(self.per_item), "extra": _plain(self.extra)}


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_plain(v) for v in x]
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


def finite_array(values, metric: str, what: str = "input") -> np.ndarray:
    """1-D float64 array of ``values``; ``ValueError`` naming ``metric`` when empty or non-finite."""
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{metric}: {what} must be a flat sequence of numbers ({e})") from None
    if a.ndim != 1:
        raise ValueError(f"{metric}: {what} must be 1-D (one number per item), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{metric}: {what} is empty")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise ValueError(f"{metric}: {what} has {bad.size} non-finite value(s), first at item {bad[0]} "
                         f"({a[bad[0]]})")
    return a


def ragged(values, metric: str, what: str = "input", allow_empty_items: bool = False) -> list[np.ndarray]:
    """Per-item 1-D float64 arrays (items may differ in length: perturbed answers, answer tokens)."""
    if values is None or len(values) == 0:
        raise ValueError(f"{metric}: {what} is empty")
    out = []
    for i, v in enumerate(values):
        try:
            a = np.atleast_1d(np.asarray(v, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{metric}: {what}[{i}] must be a sequence of numbers ({e})") from None
        if a.ndim != 1:
            raise ValueError(f"{metric}: {what}[{i}] must be 1-D, got shape {a.shape}")
        if a.size == 0 and not allow_empty_items:
            raise ValueError(f"{metric}: {what}[{i}] is empty")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{metric}: {what}[{i}] has non-finite value(s)")
        out.append(a)
    return out


def same_length(metric: str, **named: Sequence) -> int:
    """Common length of the named per-item inputs; ``ValueError`` when they differ."""
    lengths = {k: len(v) for k, v in named.items() if v is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{metric}: per-item inputs differ in length: {lengths}")
    return next(iter(lengths.values()))


def per_item(values: Sequence, ids: Sequence[str] | None, metric: str) -> dict[str, float] | list:
    """``{id: value}`` when ``ids`` are given (checked: same length, unique), else a plain list."""
    vals = [None if v is None else float(v) for v in values]
    if ids is None:
        return vals
    ids = [str(i) for i in ids]
    if len(ids) != len(vals):
        raise ValueError(f"{metric}: {len(ids)} ids for {len(vals)} items")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{metric}: item ids are not unique")
    return dict(zip(ids, vals))


def values_of(x, metric: str, what: str = "input") -> np.ndarray:
    """Per-item numbers of a :class:`MetricResult` (its ``per_item``) or of a plain sequence."""
    if isinstance(x, MetricResult):
        items = x.per_item.values() if isinstance(x.per_item, dict) else (x.per_item or [])
        x = [v for v in items if v is not None]
    return finite_array(x, metric, what)
