"""TOFU's per-split metric set under open-unlearning's ``TOFU_SUMMARY.json`` key names.

The model-running layer computes, per split, the per-item mean answer-token NLLs (answer,
paraphrased answer, perturbed answers) and ROUGE-L recalls, then calls :func:`split_metrics`
for forget / retain / real authors (``ra``) / world facts (``wf``) and :func:`tofu_summary` to
get the flat ``{key: value}`` dict (with ``forget_quality`` and ``model_utility`` when the
retain model's forget truth ratios and the three utility splits are present).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from r2f.engine.metrics.base import MetricResult, finite_array, per_item
from r2f.engine.metrics.tofu import (
    MODEL_UTILITY_KEYS,
    forget_quality,
    model_utility,
    normalised_probability,
    probability,
    truth_ratio,
)

SPLITS = ("forget", "retain", "ra", "wf")
FORGET_TRUTH_RATIO = "forget_truth_ratio"  # lower case in open-unlearning, unlike the others


def split_keys(split: str) -> tuple[str, ...]:
    """Keys :func:`split_metrics` returns for ``split`` (ROUGE only when recalls are given)."""
    if split in ("forget", "retain"):
        tr = FORGET_TRUTH_RATIO if split == "forget" else "retain_Truth_Ratio"
        return (f"{split}_Q_A_Prob", f"{split}_Q_A_PARA_Prob", f"{split}_Q_A_PERT_Prob", tr, f"{split}_Q_A_ROUGE")
    if split in ("ra", "wf"):
        return (f"{split}_Q_A_Prob", f"{split}_Q_A_PERT_Prob", f"{split}_Q_A_Prob_normalised",
                f"{split}_Truth_Ratio", f"{split}_Q_A_ROUGE")
    raise ValueError(f"split_metrics: unknown split {split!r}; expected one of {SPLITS}")


def split_metrics(split: str, *, gt_nll, pert_nll, para_nll=None, rouge_recall: Sequence[float] | None = None,
                  ids: Sequence[str] | None = None) -> dict[str, MetricResult]:
    """All TOFU metrics of one split from per-item mean answer-token NLLs.

    forget/retain: probability of the answer (``gt_nll``), of the paraphrased answer
    (``para_nll``, required) and of the perturbed answers (``pert_nll``, one sequence per item);
    truth ratio = paraphrased vs perturbed (``closer_to_1_better`` for forget, ``true_better``
    for retain). ra/wf: probability, perturbed probability, normalised probability (answer vs
    perturbed) and truth ratio answer vs perturbed (``true_better``)."""
    keys = split_keys(split)
    out: dict[str, MetricResult] = {keys[0]: probability(gt_nll, name=keys[0], ids=ids)}
    if split in ("forget", "retain"):
        if para_nll is None:
            raise ValueError(f"{keys[3]}: the {split} split needs paraphrased-answer NLLs (para_nll)")
        agg = "closer_to_1_better" if split == "forget" else "true_better"
        out[keys[1]] = probability(para_nll, name=keys[1], ids=ids)
        out[keys[2]] = probability(pert_nll, name=keys[2], ids=ids)
        out[keys[3]] = truth_ratio(para_nll, pert_nll, aggregator=agg, name=keys[3], ids=ids)
    else:
        out[keys[1]] = probability(pert_nll, name=keys[1], ids=ids)
        out[keys[2]] = normalised_probability(gt_nll, pert_nll, name=keys[2], ids=ids)
        out[keys[3]] = truth_ratio(gt_nll, pert_nll, aggregator="true_better", name=keys[3], ids=ids)
    if rouge_recall is not None:
        r = finite_array(rouge_recall, keys[4], "ROUGE-L recalls")
        if r.size != len(out[keys[0]].per_item):
            raise ValueError(f"{keys[4]}: {r.size} ROUGE recalls for {len(out[keys[0]].per_item)} items")
        out[keys[4]] = MetricResult(keys[4], float(r.mean()), per_item(r, ids, keys[4]))
    return out


def tofu_summary(results: Mapping[str, MetricResult], retain_forget_truth_ratios=None) -> dict[str, float | None]:
    """Flat ``{key: value}`` of ``results`` plus, when possible, ``model_utility`` (all nine
    components present) and ``forget_quality`` (``retain_forget_truth_ratios`` given: the retain
    model's per-item forget truth ratios, or its ``forget_truth_ratio`` result)."""
    out = {k: r.value for k, r in results.items()}
    if all(k in results for k in MODEL_UTILITY_KEYS):
        out["model_utility"] = model_utility(results).value
    if retain_forget_truth_ratios is not None:
        if FORGET_TRUTH_RATIO not in results:
            raise ValueError(f"forget_quality: results lack {FORGET_TRUTH_RATIO!r}")
        out["forget_quality"] = forget_quality(results[FORGET_TRUTH_RATIO], retain_forget_truth_ratios).value
    return dict(sorted(out.items()))
