"""Promotion gate: independent, named rules over an evaluation summary (docs/pipeline.md).

A candidate is promoted only if every rule passes. A rule whose input is missing *fails* (with the
reason), it is never skipped: "no evidence" is not "evidence of forgetting".
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from .config import GateConfig


@dataclass(frozen=True)
class RuleResult:
    name: str
    passed: bool
    value: float | None
    threshold: float
    reason: str


@dataclass(frozen=True)
class Decision:
    passed: bool
    rules: list[RuleResult]
    decided_at: str

    @property
    def reasons(self) -> list[str]:
        return [r.reason for r in self.rules if not r.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "decided_at": self.decided_at, "reasons": self.reasons,
                "rules": [asdict(r) for r in self.rules]}


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _rule(name: str, value, threshold: float, ok, text: str) -> RuleResult:
    v = _num(value)
    if v is None:
        return RuleResult(name, False, None, threshold, f"{name}: no value (missing or not finite)")
    passed = bool(ok(v))
    return RuleResult(name, passed, v, threshold, f"{name}: {v:.4g} {'meets' if passed else 'fails'} {text}")


def decide(summary: dict, champion_utility: float | None, cfg: GateConfig) -> Decision:
    """Apply every rule to a ``TOFU_SUMMARY`` dict. ``champion_utility``: the model utility of the
    current champion (the rule fails when it is unknown)."""
    mu = _num(summary.get("model_utility"))
    champ = _num(champion_utility)
    ratio = mu / champ if mu is not None and champ else None
    rules = [
        _rule("forget_quality", summary.get("forget_quality"), cfg.min_forget_quality,
              lambda v: v >= cfg.min_forget_quality, f">= {cfg.min_forget_quality}"),
        _rule("utility_ratio", ratio, cfg.min_utility_ratio, lambda v: v >= cfg.min_utility_ratio,
              f">= {cfg.min_utility_ratio} x the champion's model_utility"),
        _rule("privleak", summary.get("privleak"), cfg.max_abs_privleak,
              lambda v: abs(v) <= cfg.max_abs_privleak, f"|privleak| <= {cfg.max_abs_privleak}"),
        _rule("usr", summary.get("usr"), cfg.min_usr, lambda v: v >= cfg.min_usr, f">= {cfg.min_usr}"),
    ]
    return Decision(all(r.passed for r in rules), rules, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
