"""Token-level memorisation metrics: exact memorisation and extraction strength.

Inputs per item: the answer's label token ids and the model's argmax (greedy next-token)
prediction at each of those positions, teacher-forced on the true prefix. open-unlearning
(``tokenwise_vocab_logprobs``) scores all labelled answer positions but the last one (the EOS
prediction); the model-running layer decides which positions it passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from r2f.engine.metrics.base import MetricResult, per_item, same_length


def _token_pairs(pred_ids, label_ids, metric: str) -> list[tuple[np.ndarray, np.ndarray]]:
    if pred_ids is None or len(pred_ids) == 0:
        raise ValueError(f"{metric}: predictions are empty")
    same_length(metric, predictions=pred_ids, labels=label_ids)
    out = []
    for i, (p, y) in enumerate(zip(pred_ids, label_ids)):
        p, y = np.atleast_1d(np.asarray(p)), np.atleast_1d(np.asarray(y))
        for what, a in (("predictions", p), ("labels", y)):
            if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
                raise ValueError(f"{metric}: {what}[{i}] must be a 1-D sequence of token ids")
        if p.shape != y.shape:
            raise ValueError(f"{metric}: item {i} has {p.size} predictions for {y.size} labels")
        out.append((p, y))
    return out


def exact_memorization(pred_ids: Sequence[Sequence[int]], label_ids: Sequence[Sequence[int]], *,
                       name: str = "exact_memorization", ids: Sequence[str] | None = None) -> MetricResult:
    """Per item: fraction of answer positions whose argmax prediction equals the label; value:
    mean over items. An item without tokens is ``None`` and left out of the mean, as in
    open-unlearning; all items empty is an error."""
    pairs = _token_pairs(pred_ids, label_ids, name)
    scores = [float(np.mean(p == y)) if y.size else None for p, y in pairs]
    valid = [s for s in scores if s is not None]
    if not valid:
        raise ValueError(f"{name}: every item has zero answer tokens")
    return MetricResult(name, float(np.mean(valid)), per_item(scores, ids, name),
                        {"n_items": len(valid), "n_skipped": len(scores) - len(valid)})


def extraction_strength_item(pred: np.ndarray, labels: np.ndarray, open_unlearning_compat: bool = True) -> float:
    """1 - k/n, k the smallest prefix length from which the argmax predictions reproduce every
    remaining label (n = number of answer tokens).

    With no matching suffix at all, the definition gives k = n (ES = 0); open-unlearning's loop
    leaves k = n - 1 there (ES = 1/n), which ``open_unlearning_compat=True`` reproduces. An item
    without tokens scores 0 (open-unlearning)."""
    n = labels.size
    if n == 0:
        return 0.0
    wrong = np.flatnonzero(pred != labels)
    k = 0 if wrong.size == 0 else int(wrong[-1]) + 1  # suffix after the last mismatch matches
    if k == n and open_unlearning_compat:
        k = n - 1
    return 1.0 - k / n


def extraction_strength(pred_ids: Sequence[Sequence[int]], label_ids: Sequence[Sequence[int]], *,
                        name: str = "extraction_strength", ids: Sequence[str] | None = None,
                        open_unlearning_compat: bool = True) -> MetricResult:
    """Mean over items of :func:`extraction_strength_item`."""
    pairs = _token_pairs(pred_ids, label_ids, name)
    scores = [extraction_strength_item(p, y, open_unlearning_compat) for p, y in pairs]
    return MetricResult(name, float(np.mean(scores)), per_item(scores, ids, name),
                        {"open_unlearning_compat": open_unlearning_compat})
