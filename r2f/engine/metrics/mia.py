"""Membership-inference scores (LOSS, ZLib, Min-k%, Min-k%++), their forget-vs-holdout AUC and
privleak, as in open-unlearning ``src/evals/metrics/mia/`` and ``privacy.py``.

Every score is "higher = less likely a training member". The AUC labels forget items 0 and
holdout items 1 (open-unlearning), so AUC = P(holdout score > forget score) (+ half the ties):
1 when the forget set is far more likely than the holdout set, ~0.5 when indistinguishable.
Per-token inputs are the answer positions the model-running layer scores (open-unlearning's
``tokenwise_logprobs`` drops the last, EOS, position); ``mean_nll`` is the mean answer-token NLL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from r2f.engine.metrics.base import MetricResult, finite_array, ragged, same_length

MIN_K = 0.4  # open-unlearning's TOFU configs (mia_min_k, mia_min_k_plus_plus)
_VAR_FLOOR = 1e-6  # Min-k%++ clamps the variance of the next-token log-prob at this value


def loss_scores(mean_nll) -> np.ndarray:
    """LOSS attack: the item's mean answer-token NLL."""
    return finite_array(mean_nll, "mia_loss", "mean NLLs")


def zlib_scores(mean_nll, texts: Sequence[str]) -> np.ndarray:
    """ZLib attack: mean NLL / byte length of the zlib-compressed UTF-8 answer text."""
    import zlib

    loss = finite_array(mean_nll, "mia_zlib", "mean NLLs")
    same_length("mia_zlib", mean_nll=loss, texts=texts)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("mia_zlib: texts must be strings")
    return loss / np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.float64)


def _min_k(z: np.ndarray, k: float) -> float:
    if z.size == 0:
        return 0.0  # open-unlearning scores a token-less item 0
    num_k = max(1, int(z.size * k))
    return -float(np.mean(np.sort(z)[:num_k]))


def _check_k(k: float, metric: str):
    if not 0.0 < k <= 1.0:
        raise ValueError(f"{metric}: k must be in (0, 1], got {k}")


def min_k_scores(token_logprobs: Sequence[Sequence[float]], k: float = MIN_K) -> np.ndarray:
    """Min-k% Prob: minus the mean of the lowest ``max(1, int(n*k))`` token log-probs per item."""
    _check_k(k, "mia_min_k")
    items = ragged(token_logprobs, "mia_min_k", "token log-probs", allow_empty_items=True)
    return np.array([_min_k(lp, k) for lp in items])


def min_k_plus_plus_scores(token_logprobs, mu, sigma, k: float = MIN_K) -> np.ndarray:
    """Min-k%++: per token z = (log p(x_t) - mu_t) / sigma_t, with mu_t and sigma_t the mean and
    standard deviation of log p(v) for v drawn from the model's next-token distribution
    (mu = sum_v p log p, sigma^2 = sum_v p (log p)^2 - mu^2, floored at 1e-6); the item's score
    is minus the mean of its lowest ``max(1, int(n*k))`` z."""
    metric = "mia_min_k_plus_plus"
    _check_k(k, metric)
    lp = ragged(token_logprobs, metric, "token log-probs", allow_empty_items=True)
    m = ragged(mu, metric, "mu", allow_empty_items=True)
    s = ragged(sigma, metric, "sigma", allow_empty_items=True)
    same_length(metric, token_logprobs=lp, mu=m, sigma=s)
    out = []
    for i, (a, b, c) in enumerate(zip(lp, m, s)):
        if not a.shape == b.shape == c.shape:
            raise ValueError(f"{metric}: item {i} has {a.size} log-probs, {b.size} mu, {c.size} sigma")
        if np.any(c < 0):
            raise ValueError(f"{metric}: item {i} has a negative sigma")
        out.append(_min_k((a - b) / np.sqrt(np.maximum(c * c, _VAR_FLOOR)), k))
    return np.array(out)


def auc(forget_scores, holdout_scores, metric: str = "mia_auc") -> float:
    """ROC AUC with forget labelled 0 and holdout 1 (rank / Mann-Whitney form, ties count half;
    equals ``sklearn.metrics.roc_auc_score``)."""
    f = finite_array(forget_scores, metric, "forget scores")
    h = finite_array(holdout_scores, metric, "holdout scores")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([f, h]))
    u = ranks[f.size:].sum() - h.size * (h.size + 1) / 2.0
    return float(u / (f.size * h.size))


def mia(name: str, forget_scores, holdout_scores) -> MetricResult:
    """MIA result ``name`` (``mia_loss``, ``mia_zlib``, ``mia_min_k``, ``mia_min_k_plus_plus``):
    value = forget-vs-holdout AUC; the per-item scores of both sets are in ``extra``."""
    value = auc(forget_scores, holdout_scores, name)
    f, h = np.asarray(forget_scores, dtype=float), np.asarray(holdout_scores, dtype=float)
    return MetricResult(name, value, None, {"forget_scores": f.tolist(), "holdout_scores": h.tolist(),
                                            "forget_mean": float(f.mean()), "holdout_mean": float(h.mean())})


def privleak(auc_model: float | MetricResult, auc_retain: float | MetricResult, *,
             name: str = "privleak") -> MetricResult:
    """Relative MIA gap to the retain model, in percent, MUSE style (open-unlearning ``privleak``):
    with a = 1 - AUC (MUSE's orientation), ``(a_model - a_retain) / (a_retain + 1e-10) * 100``.
    ~0 = like the retain model; strongly negative = forget set still recognisable (under-unlearned)."""
    vals = []
    for what, x in (("model AUC", auc_model), ("retain-model AUC", auc_retain)):
        v = x.value if isinstance(x, MetricResult) else x
        v = finite_array([v], name, what)[0] if v is not None else None
        if v is None or not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}: {what} must be in [0, 1], got {v}")
        vals.append(v)
    score, ref = 1.0 - vals[0], 1.0 - vals[1]
    return MetricResult(name, (score - ref) / (ref + 1e-10) * 100.0, None,
                        {"auc_model": vals[0], "auc_retain": vals[1]})
