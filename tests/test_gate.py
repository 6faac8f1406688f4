"""The gate is a table of rules (r2f.governance.gate.RULES): every threshold in GateConfig is read by
some rule, so a new rule is one entry plus its config field, and nothing configured goes unused."""

from __future__ import annotations

from r2f.config import GateConfig
from r2f.governance.gate import RULES, decide

GOOD = {"forget_quality": 0.2, "model_utility": 0.5, "privleak": -10.0, "usr": 0.9}


def test_every_gate_setting_moves_some_rule():
    base = GateConfig()
    thresholds = [rule.threshold(base, 0.5) for rule in RULES]
    for field, value in base.model_dump().items():
        changed = base.model_copy(update={field: value * 0.5 + 0.01})
        assert [rule.threshold(changed, 0.5) for rule in RULES] != thresholds, f"gate.{field} is read by no rule"


def test_rule_names_are_summary_keys_and_reasons_name_them():
    d = decide({k: None for k in GOOD}, 0.5, GateConfig())
    assert [r.name for r in d.rules] == [rule.name for rule in RULES] == list(GOOD)
    assert not d.passed and all(reason.startswith(f"{r.name}:") for r, reason in zip(d.rules, d.reasons))
