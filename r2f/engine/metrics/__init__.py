"""Model-free TOFU / open-unlearning metric formulas on per-item numbers.

Each function takes per-item numbers (mean answer-token NLLs, token ids, token log-probs, texts)
and returns a :class:`MetricResult`; the model-running layer produces those numbers. Importing
this package loads numpy only (scipy, rouge_score and zlib are imported inside the functions).

| module | concept |
|---|---|
| ``base`` | ``MetricResult`` and shared input checks |
| ``tofu`` | probability, truth ratio, normalised probability, ROUGE-L, forget quality, model utility |
| ``summary`` | per-split metric sets under open-unlearning's ``TOFU_SUMMARY`` key names |
| ``tokenwise`` | exact memorisation, extraction strength |
| ``mia`` | LOSS / ZLib / Min-k% / Min-k%++ scores, AUC, privleak |
"""

from r2f.engine.metrics.base import MetricResult
from r2f.engine.metrics.mia import MIN_K, auc, loss_scores, mia, min_k_plus_plus_scores, min_k_scores, privleak, zlib_scores
from r2f.engine.metrics.summary import SPLITS, split_keys, split_metrics, tofu_summary
from r2f.engine.metrics.tofu import (
                  MODEL_UTILITY_KEYS,
                  TRUTH_RATIO_AGGREGATORS,
                  forget_quality,
                  log_truth_ratios,
                  model_utility,
                  normalised_probability,
                  probability,
                  rouge_l_recall,
                  truth_ratio,
)
from r2f.engine.metrics.tokenwise import exact_memorization, extraction_strength, extraction_strength_item

__all__ = [
    "MetricResult",
    "probability", "log_truth_ratios", "truth_ratio", "normalised_probability", "rouge_l_recall",
    "forget_quality", "model_utility", "MODEL_UTILITY_KEYS", "TRUTH_RATIO_AGGREGATORS",
    "SPLITS", "split_keys", "split_metrics", "tofu_summary",
    "exact_memorization", "extraction_strength", "extraction_strength_item",
    "MIN_K", "loss_scores", "zlib_scores", "min_k_scores", "min_k_plus_plus_scores", "auc", "mia", "privleak",
]
