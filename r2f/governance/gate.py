"""Promotion gate: independent, named rules over an evaluation summary (docs/pipeline.md).

A candidate is promoted only if every rule passes. A rule whose input is missing *fails* (with the
reason), it is never skipped: "no evidence" is not "evidence of forgetting".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from r2f.config import Config, GateConfig
from r2f.engine.api import reference_eval
from r2f.engine.evaluation import summarize


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
class References:
    """The utilities relative rules compare with: the current champion's (per-step loss) and the base
    target's, the first champion of the chain (total loss over a chain of deletions)."""

    champion_utility: float | None
    base_utility: float | None


@dataclass(frozen=True)
class Rule:
    """One promotion rule: its name, the ``TOFU_SUMMARY`` key it reads (default: its name), its
    threshold from the gate config (and a reference utility, for relative rules), the test and the
    words a reason uses."""

    name: str
    threshold: Callable[[GateConfig, References], float]
    ok: Callable[[float, float], bool]  # (value, threshold) -> passed
    text: Callable[[GateConfig, References], str]
    key: str | None = None

    def check(self, summary: dict, refs: References, cfg: GateConfig) -> RuleResult:
        v, thr = _num(summary.get(self.key or self.name)), self.threshold(cfg, refs)
        if v is None or not math.isfinite(thr):
            return RuleResult(self.name, False, v, thr,
                              f"{self.name}: no value or no threshold (missing or not finite)")
        passed = bool(self.ok(v, thr))
        return RuleResult(self.name, passed, v, thr,
                          f"{self.name}: {v:.4g} {'meets' if passed else 'fails'} {self.text(cfg, refs)}")


def _relative(ratio: float, ref: float | None) -> float:
    return ratio * ref if ref is not None else float("nan")


# The gate: adding a rule is one entry here plus its threshold in GateConfig (params.yaml `gate:`).
RULES: tuple[Rule, ...] = (
    Rule("forget_quality", lambda c, _: c.min_forget_quality, lambda v, t: v >= t,
         lambda c, _: f">= {c.min_forget_quality}"),
    Rule("model_utility", lambda c, r: _relative(c.min_utility_ratio, r.champion_utility), lambda v, t: v >= t,
         lambda c, r: f">= {c.min_utility_ratio} x the champion's model_utility ({r.champion_utility})"),
    Rule("model_utility_vs_base", lambda c, r: _relative(c.min_utility_vs_base, r.base_utility),
         lambda v, t: v >= t,
         lambda c, r: f">= {c.min_utility_vs_base} x the base target's model_utility ({r.base_utility})",
         key="model_utility"),
    Rule("privleak", lambda c, _: c.max_abs_privleak, lambda v, t: abs(v) <= t,
         lambda c, _: f"|privleak| <= {c.max_abs_privleak}"),
    Rule("usr", lambda c, _: c.min_usr, lambda v, t: v >= t, lambda c, _: f">= {c.min_usr}"),
)


def decide(summary: dict, champion_utility: float | None, cfg: GateConfig,
           base_utility: float | None = None) -> Decision:
    """Apply every rule of :data:`RULES` to a ``TOFU_SUMMARY`` dict. ``champion_utility``: the model
    utility of the current champion; ``base_utility``: the base target's (the chain's first champion).
    A relative rule fails when its reference is unknown."""
    refs = References(_num(champion_utility), _num(base_utility))
    rules = [rule.check(summary, refs, cfg) for rule in RULES]
    return Decision(all(r.passed for r in rules), rules, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def sanity(cfg: Config, split: str, log: Callable[[str], None] = lambda _m: None, progress=None) -> list[dict]:
    """The gate judged on its two anchors for ``split``: the exact-unlearning model (the retain model,
    which never saw the forget authors) must pass, the untouched target must fail. Both are judged as
    candidates against the target as champion and base, with ``cfg.gate`` as configured (never relaxed).
    Rows: candidate, passed, and every rule's value and threshold (reference evaluations, cached)."""
    evals = {role: reference_eval(cfg, role, split, log, progress) for role in ("retain", "target")}
    base = evals["target"]["model_utility"]["value"]
    rows = []
    for role, ev in evals.items():
        d = decide(summarize(ev), base, cfg.gate, base)
        row = {"split": split, "candidate": role, "passed": d.passed, "failed": [r.name for r in d.rules if not r.passed]}
        for r in d.rules:
            row[r.name], row[f"{r.name}_threshold"] = r.value, r.threshold
        rows.append(row)
    return rows
