"""The gate is a table of rules (r2f.governance.gate.RULES): every threshold in GateConfig is read by
some rule, so a new rule is one entry plus its config field, and nothing configured goes unused."""

from __future__ import annotations

from r2f.config import GateConfig
from r2f.governance.gate import RULES, References, decide

GOOD = {"forget_quality": 0.2, "model_utility": 0.5, "privleak": -10.0, "usr": 0.9}
REFS = References(champion_utility=0.5, base_utility=0.5)


def test_every_gate_setting_moves_some_rule():
    base = GateConfig()
    thresholds = [rule.threshold(base, REFS) for rule in RULES]
    for field, value in base.model_dump().items():
        changed = base.model_copy(update={field: value * 0.5 + 0.01})
        assert [rule.threshold(changed, REFS) for rule in RULES] != thresholds, f"gate.{field} is read by no rule"


def test_rule_names_are_summary_keys_and_reasons_name_them():
    d = decide({k: None for k in GOOD}, 0.5, GateConfig(), 0.5)
    assert [r.name for r in d.rules] == [rule.name for rule in RULES]
    assert [rule.key or rule.name for rule in RULES] == ["forget_quality", "model_utility", "model_utility",
                                                          "privleak", "usr"]
    assert not d.passed and all(reason.startswith(f"{r.name}:") for r, reason in zip(d.rules, d.reasons))


def test_a_chain_of_small_losses_breaks_the_base_floor():
    """Every deletion loses 4 % of its champion's utility: each passes the per-step rule (>= 0.95 x the
    champion), yet the chain must stop once the total loss passes the floor (>= 0.90 x the base)."""
    cfg, base = GateConfig(), 0.6
    champion, promoted, first_refusal = base, [], None
    for step in range(1, 8):
        candidate = {**GOOD, "model_utility": 0.96 * champion}
        d = decide(candidate, champion, cfg, base)
        per_step = next(r for r in d.rules if r.name == "model_utility")
        assert per_step.passed, f"step {step}: the per-step rule alone would promote it"
        if d.passed:
            champion = candidate["model_utility"]
            promoted.append(step)
        elif first_refusal is None:
            first_refusal = step
            assert [r.name for r in d.rules if not r.passed] == ["model_utility_vs_base"]
            assert "base target" in d.reasons[0]
    # 0.96^2 = 0.922 >= 0.90 > 0.96^3 = 0.885: two deletions land, the third and every later one is refused
    assert promoted == [1, 2] and first_refusal == 3
    assert champion / base >= cfg.min_utility_vs_base
    # without the floor the same chain ends at 0.96^7 = 0.75 of the base utility
    loose = cfg.model_copy(update={"min_utility_vs_base": 0.0})
    champion = base
    for _ in range(7):
        d = decide({**GOOD, "model_utility": 0.96 * champion}, champion, loose, base)
        assert d.passed
        champion *= 0.96
    assert champion / base < 0.76
