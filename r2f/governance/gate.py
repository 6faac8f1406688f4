"""Promotion gate: independent, named rules over an evaluation summary (docs/pipeline.md).

A candidate is promoted only if every rule passes. A rule whose input is missing *fails* (with the
reason), it is never skipped: "no evidence" is not "evidence of forgetting".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
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


@dataclass(frozen=True)
class Rule:
    """One promotion rule: the ``TOFU_SUMMARY`` key it reads (its name), its threshold from the gate
    config (and the champion's utility, for relative rules), the test and the words a reason uses."""

    name: str
    threshold: Callable[[GateConfig, float | None], float]
    ok: Callable[[float, float], bool]  # (value, threshold) -> passed
    text: Callable[[GateConfig, float | None], str]

    def check(self, summary: dict, champion_utility: float | None, cfg: GateConfig) -> RuleResult:
        v, thr = _num(summary.get(self.name)), self.threshold(cfg, champion_utility)
        if v is None or not math.isfinite(thr):
            return RuleResult(self.name, False, v, thr,
                              f"{self.name}: no value or no threshold (missing or not finite)")
        passed = bool(self.ok(v, thr))
        return RuleResult(self.name, passed, v, thr,
                          f"{self.name}: {v:.4g} {'meets' if passed else 'fails'} {self.text(cfg, champion_utility)}")


def _relative(ratio: float, champ: float | None) -> float:
    return ratio * champ if champ is not None else float("nan")


# The gate: adding a rule is one entry here plus its threshold in GateConfig (params.yaml `gate:`).
RULES: tuple[Rule, ...] = (
    Rule("forget_quality", lambda c, _: c.min_forget_quality, lambda v, t: v >= t,
         lambda c, _: f">= {c.min_forget_quality}"),
    Rule("model_utility", lambda c, champ: _relative(c.min_utility_ratio, champ), lambda v, t: v >= t,
         lambda c, champ: f">= {c.min_utility_ratio} x the champion's model_utility ({champ})"),
    Rule("privleak", lambda c, _: c.max_abs_privleak, lambda v, t: abs(v) <= t,
         lambda c, _: f"|privleak| <= {c.max_abs_privleak}"),
    Rule("usr", lambda c, _: c.min_usr, lambda v, t: v >= t, lambda c, _: f">= {c.min_usr}"),
)


def decide(summary: dict, champion_utility: float | None, cfg: GateConfig) -> Decision:
    """Apply every rule of :data:`RULES` to a ``TOFU_SUMMARY`` dict. ``champion_utility``: the model
    utility of the current champion (the utility rule fails when it is unknown)."""
    champ = _num(champion_utility)
    rules = [rule.check(summary, champ, cfg) for rule in RULES]
    return Decision(all(r.passed for r in rules), rules, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
