"""Promotion gate: independent, named rules over an evaluation summary (docs/pipeline.md).

A candidate is promoted only if every rule passes. A rule whose input is missing *fails* (with the
reason), it is never skipped: "no evidence" is not "evidence of forgetting".
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from r2f.config import GateConfig


@dataclass(frozen=True)
class RuleResult:
    name: str
    passed: bool
    value: float | None
    threshold: float  # NaN when it could not be determined (e.g. no champion utility)
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
    if v is None or not math.isfinite(threshold):
        return RuleResult(name, False, v, threshold, f"{name}: no value or no threshold (missing or not finite)")
    passed = bool(ok(v))
    return RuleResult(name, passed, v, threshold, f"{name}: {v:.4g} {'meets' if passed else 'fails'} {text}")


def decide(summary: dict, champion_utility: float | None, cfg: GateConfig) -> Decision:
    """Apply every rule to a ``TOFU_SUMMARY`` dict. ``champion_utility``: the model utility of the
    current champion (the rule fails when it is unknown)."""
    champ = _num(champion_utility)
    floor = cfg.min_utility_ratio * champ if champ is not None else float("nan")
    rules = [
        _rule("forget_quality", summary.get("forget_quality"), cfg.min_forget_quality,
              lambda v: v >= cfg.min_forget_quality, f">= {cfg.min_forget_quality}"),
        _rule("model_utility", summary.get("model_utility") if champ is not None else None, floor,
              lambda v: v >= floor, f">= {cfg.min_utility_ratio} x the champion's model_utility ({champ})"),
        _rule("privleak", summary.get("privleak"), cfg.max_abs_privleak,
              lambda v: abs(v) <= cfg.max_abs_privleak, f"|privleak| <= {cfg.max_abs_privleak}"),
        _rule("usr", summary.get("usr"), cfg.min_usr, lambda v: v >= cfg.min_usr, f">= {cfg.min_usr}"),
    ]
    return Decision(all(r.passed for r in rules), rules, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
