"""Unit tests of r2f.engine.metrics on small hand-computed cases."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import zlib

import numpy as np
import pytest

from r2f.engine.metrics import (
    MODEL_UTILITY_KEYS,
    MetricResult,
    auc,
    exact_memorization,
    extraction_strength,
    extraction_strength_item,
    forget_quality,
    log_truth_ratios,
    loss_scores,
    mia,
    min_k_plus_plus_scores,
    min_k_scores,
    model_utility,
    normalised_probability,
    privleak,
    probability,
    rouge_l_recall,
    split_keys,
    split_metrics,
    tofu_summary,
    truth_ratio,
    zlib_scores,
)

LN2, LN4 = math.log(2), math.log(4)


# --- MetricResult -------------------------------------------------------------------------------

def test_metric_result_log10_and_to_dict():
    r = MetricResult("forget_quality", 1e-200, [np.float64(0.5), None], {"n": np.int64(3), "a": np.array([1.0])})
    assert r.value_log10 == pytest.approx(-200)
    d = json.loads(json.dumps(r.to_dict()))
    assert d == {"name": "forget_quality", "value": 1e-200, "value_log10": pytest.approx(-200),
                 "per_item": [0.5, None], "extra": {"n": 3, "a": [1.0]}}
    assert MetricResult("privleak", -12.0).value_log10 is None
    assert MetricResult("x", 0.0).value_log10 is None
    assert MetricResult("x", 0.0, value_log10=-400.0).value_log10 == -400.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.value = 1.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_metric_result_rejects_non_finite_value(bad):
    with pytest.raises(ValueError, match="^my_metric: value is not finite"):
        MetricResult("my_metric", bad)


# --- probability, truth ratio, normalised probability ------------------------------------------

def test_probability_single_and_multi_answer():
    r = probability([0.0, LN2], name="forget_Q_A_Prob", ids=["a", "b"])
    assert r.value == pytest.approx(0.75)
    assert r.per_item == pytest.approx({"a": 1.0, "b": 0.5})
    # several answers per item: mean of their probabilities
    r = probability([[0.0, LN2], [LN4]])
    assert r.per_item == pytest.approx([0.75, 0.25]) and r.value == pytest.approx(0.5)


def test_truth_ratio_aggregators_by_hand():
    # item 1: correct P=1, wrong P=1/2 -> R = 0.5 ; item 2: correct P=1/2, wrong P=1 -> R = 2
    correct, wrong = [0.0, LN2], [[LN2], [0.0]]
    np.testing.assert_allclose(log_truth_ratios(correct, wrong), [-LN2, LN2])
    fg = truth_ratio(correct, wrong, aggregator="closer_to_1_better")
    assert fg.per_item == pytest.approx([0.5, 2.0])
    assert fg.value == pytest.approx(0.5)  # mean(min(R, 1/R)) = mean(0.5, 0.5)
    rt = truth_ratio(correct, wrong, aggregator="true_better")
    assert rt.value == pytest.approx(0.25)  # mean(max(0, 1 - R)) = mean(0.5, 0)
    assert rt.extra == {"aggregator": "true_better"}


def test_truth_ratio_uses_geometric_mean_of_wrong_answers():
    # wrong NLLs 1 and 3: geometric-mean probability exp(-2) = correct probability -> R = 1
    r = truth_ratio([2.0], [[1.0, 3.0]], aggregator="closer_to_1_better")
    assert r.per_item == pytest.approx([1.0]) and r.value == pytest.approx(1.0)
    assert truth_ratio([2.0], [[1.0, 3.0]], aggregator="true_better").value == pytest.approx(0.0)


def test_truth_ratio_errors():
    with pytest.raises(ValueError, match="^retain_Truth_Ratio: unknown aggregator"):
        truth_ratio([1.0], [[1.0]], aggregator="mean", name="retain_Truth_Ratio")
    with pytest.raises(ValueError, match="differ in length"):
        truth_ratio([1.0, 2.0], [[1.0]], aggregator="true_better")


def test_normalised_probability():
    # P_correct = 1/2, wrong P = 1/4 + 1/4 -> 0.5 / (0.5 + 0.5)
    r = normalised_probability([LN2], [[LN4, LN4]])
    assert r.value == pytest.approx(0.5)
    # tiny probabilities stay exact (no epsilon swamping): equal NLLs of 1000 nats -> 1/2
    assert normalised_probability([1000.0], [[1000.0]]).value == pytest.approx(0.5)
    assert normalised_probability([0.0, 0.0], [[50.0, 60.0], [0.0, 0.0]]).per_item == pytest.approx([1.0, 1 / 3])


# --- ROUGE ---------------------------------------------------------------------------------------

def test_rouge_l_recall():
    # stemmed: reference [the cat are run fast], generation [a cat run] -> LCS 2 / 5
    r = rouge_l_recall(["a cat runs", "same words here"], ["The cats are running fast", "same words here"],
                       ids=["x", "y"])
    assert r.per_item == pytest.approx({"x": 0.4, "y": 1.0})
    assert r.value == pytest.approx(0.7)
    with pytest.raises(ValueError, match="^rougeL_recall: generations are empty"):
        rouge_l_recall([], [])
    with pytest.raises(ValueError, match="not a string"):
        rouge_l_recall(["a"], [None])


# --- forget quality -----------------------------------------------------------------------------

def test_forget_quality_identical_samples_is_one():
    x = [0.2, 0.5, 0.9, 1.3]
    r = forget_quality(x, x)
    assert r.value == pytest.approx(1.0) and r.extra["ks_statistic"] == 0.0


def test_forget_quality_disjoint_samples_exact_pvalue():
    # D = 1 with n = m = 10: exact two-sided p = 2 / C(20, 10)
    r = forget_quality(np.arange(10.0), np.arange(10.0) + 100)
    assert r.value == pytest.approx(2 / math.comb(20, 10), rel=1e-9)
    assert r.value_log10 == pytest.approx(math.log10(2 / math.comb(20, 10)))


def test_forget_quality_underflow_keeps_a_log10():
    a = np.linspace(0, 1, 20000)
    r = forget_quality(a, a + 0.2)
    assert r.value == 0.0 and r.extra["value_log10_source"] == "asymptotic"
    assert r.value_log10 == pytest.approx((math.log(2) - 2 * 10000 * 0.04) / math.log(10), rel=1e-6)


def test_forget_quality_accepts_truth_ratio_results():
    a = truth_ratio([0.0, LN2, 1.0], [[LN2], [0.0], [1.0]], aggregator="closer_to_1_better")
    assert forget_quality(a, a).value == pytest.approx(1.0)


# --- model utility ------------------------------------------------------------------------------

def test_model_utility_harmonic_mean():
    comps = dict.fromkeys(MODEL_UTILITY_KEYS, 1.0)
    comps["wf_Truth_Ratio"] = 0.5
    assert model_utility(comps).value == pytest.approx(9 / (8 + 2))  # 0.9
    assert model_utility(dict.fromkeys(MODEL_UTILITY_KEYS, 0.5)).value == pytest.approx(0.5)
    comps["ra_Q_A_ROUGE"] = 0.0
    assert model_utility(comps).value == 0.0
    comps["ra_Q_A_ROUGE"] = MetricResult("ra_Q_A_ROUGE", 0.25)  # results are accepted too
    assert model_utility(comps).value == pytest.approx(9 / (7 + 2 + 4))


def test_model_utility_errors():
    comps = dict.fromkeys(MODEL_UTILITY_KEYS, 0.5)
    del comps["retain_Q_A_Prob"]
    with pytest.raises(ValueError, match=r"^model_utility: missing component\(s\) \['retain_Q_A_Prob'\]"):
        model_utility(comps)
    comps["retain_Q_A_Prob"] = -0.1
    with pytest.raises(ValueError, match="negative"):
        model_utility(comps)
    comps["retain_Q_A_Prob"] = float("nan")
    with pytest.raises(ValueError, match="^model_utility: components has 1 non-finite"):
        model_utility(comps)


# --- exact memorisation, extraction strength ----------------------------------------------------

def test_exact_memorization():
    r = exact_memorization([[1, 2, 3, 4], [5], []], [[1, 2, 0, 4], [5], []], ids=["a", "b", "c"])
    assert r.per_item == {"a": 0.75, "b": 1.0, "c": None}  # a token-less item is skipped
    assert r.value == pytest.approx(0.875) and r.extra["n_skipped"] == 1
    with pytest.raises(ValueError, match="^exact_memorization: every item has zero answer tokens"):
        exact_memorization([[]], [[]])
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        exact_memorization([[1, 2]], [[1, 2, 3]])
    with pytest.raises(ValueError, match="token ids"):
        exact_memorization([[1.5]], [[1]])


@pytest.mark.parametrize("pred,label,compat,expected", [
    ([1, 2, 3, 4], [1, 2, 3, 4], True, 1.0),    # whole answer extracted: k = 0
    ([9, 2, 3, 4], [1, 2, 3, 4], True, 0.75),   # from the 2nd token on: k = 1
    ([1, 9, 3, 4], [1, 2, 3, 4], True, 0.5),    # last mismatch decides: k = 2
    ([1, 2, 3, 9], [1, 2, 3, 4], True, 0.25),   # nothing matches at the end: open-unlearning's 1/n
    ([1, 2, 3, 9], [1, 2, 3, 4], False, 0.0),   # ... the definition's 0
    ([9, 9, 9, 4], [1, 2, 3, 4], True, 0.25),   # only the last token: k = 3
    ([], [], True, 0.0),                        # no tokens: 0 (open-unlearning)
])
def test_extraction_strength_edge_cases(pred, label, compat, expected):
    assert extraction_strength_item(np.array(pred, dtype=int), np.array(label, dtype=int), compat) == expected


def _es_reference_loop(preds, labels):
    """open-unlearning's loop, transcribed: its k after the loop when nothing matched is n - 1."""
    n = len(labels)
    if n == 0:
        return 0.0
    for k in range(n):
        if list(preds[k:]) == list(labels[k:]):
            break
    return 1 - k / n


def test_extraction_strength_matches_reference_loop():
    rng = np.random.default_rng(0)
    preds, labels = [], []
    for _ in range(200):
        n = int(rng.integers(1, 8))
        y = rng.integers(0, 3, n)
        preds.append(np.where(rng.random(n) < 0.6, y, rng.integers(0, 3, n)))
        labels.append(y)
    r = extraction_strength(preds, labels)
    assert r.per_item == pytest.approx([_es_reference_loop(p, y) for p, y in zip(preds, labels)])


# --- MIA ----------------------------------------------------------------------------------------

def test_min_k_known_arrays():
    # k = 0.4 of 5 tokens -> the 2 lowest (-5, -4) -> score 4.5
    assert min_k_scores([[-1, -2, -3, -4, -5]])[0] == pytest.approx(4.5)
    # int(3 * 0.2) = 0 -> at least one token: the minimum
    assert min_k_scores([[-1.0, -0.5, -2.0]], k=0.2)[0] == pytest.approx(2.0)
    assert min_k_scores([[-1.0, -3.0], []], k=1.0).tolist() == [2.0, 0.0]  # token-less item: 0
    with pytest.raises(ValueError, match="^mia_min_k: k must be in"):
        min_k_scores([[-1.0]], k=0.0)


def test_min_k_plus_plus_known_arrays():
    # z = (lp - mu) / sigma = [(-1+2)/1, (-3+2)/2] = [1, -0.5]; k = 0.5 -> lowest 1 -> 0.5
    assert min_k_plus_plus_scores([[-1.0, -3.0]], [[-2.0, -2.0]], [[1.0, 2.0]], k=0.5)[0] == pytest.approx(0.5)
    # sigma 0 is floored at sqrt(1e-6) = 1e-3
    assert min_k_plus_plus_scores([[-1.0]], [[-2.0]], [[0.0]])[0] == pytest.approx(-1000.0)
    with pytest.raises(ValueError, match="item 0 has 2 log-probs, 1 mu"):
        min_k_plus_plus_scores([[-1.0, -2.0]], [[-1.0]], [[1.0, 1.0]])


def test_loss_and_zlib_scores():
    assert loss_scores([1.5, 2.0]).tolist() == [1.5, 2.0]
    s = zlib_scores([2.0, 3.0], ["aaaa", "Paris"])
    assert s.tolist() == pytest.approx([2.0 / len(zlib.compress(b"aaaa")), 3.0 / len(zlib.compress(b"Paris"))])


def test_auc_orientation_and_ties():
    # scores are "higher = less likely member"; forget = 0, holdout = 1
    assert auc([0.1, 0.2, 0.3], [0.8, 0.9]) == 1.0   # forget far more likely: perfect separation
    assert auc([0.8, 0.9], [0.1, 0.2, 0.3]) == 0.0
    assert auc([1.0, 1.0], [1.0]) == 0.5
    assert auc([1.0, 2.0], [2.0, 3.0]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(1)
    f, h = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    pairwise = np.mean([(b > a) + 0.5 * (b == a) for a in f for b in h])
    assert auc(f, h) == pytest.approx(pairwise)


def test_mia_result():
    r = mia("mia_loss", [0.1, 0.2], [0.5, 0.7])
    assert r.name == "mia_loss" and r.value == 1.0
    assert r.extra["forget_mean"] == pytest.approx(0.15) and r.extra["holdout_scores"] == [0.5, 0.7]


def test_privleak():
    assert privleak(0.4, 0.4).value == pytest.approx(0.0)
    # forget fully recognised (AUC 1) vs retain model at chance: (0 - 0.5) / 0.5 -> -100 %
    assert privleak(1.0, 0.5).value == pytest.approx(-100.0)
    assert privleak(MetricResult("mia_min_k", 0.25), 0.5).value == pytest.approx(50.0)
    with pytest.raises(ValueError, match=r"^privleak: model AUC must be in \[0, 1\]"):
        privleak(1.5, 0.5)


# --- summary ------------------------------------------------------------------------------------

def _split_inputs(n=3):
    return {"gt_nll": [0.1] * n, "pert_nll": [[1.0, 2.0]] * n, "para_nll": [0.5] * n, "rouge_recall": [0.8] * n}


def test_split_metrics_keys_and_summary():
    res = {}
    for split in ("forget", "retain", "ra", "wf"):
        kw = _split_inputs()
        if split in ("ra", "wf"):
            kw.pop("para_nll")
        out = split_metrics(split, **kw)
        assert tuple(out) == split_keys(split)
        res.update(out)
    assert "forget_truth_ratio" in res and "retain_Truth_Ratio" in res and "ra_Q_A_Prob_normalised" in res
    s = tofu_summary(res, retain_forget_truth_ratios=res["forget_truth_ratio"])
    assert s["forget_quality"] == pytest.approx(1.0)
    assert s["model_utility"] == pytest.approx(model_utility(res).value)
    assert s["forget_Q_A_ROUGE"] == pytest.approx(0.8)
    assert "model_utility" not in tofu_summary({k: v for k, v in res.items() if not k.startswith("wf")})


def test_split_metrics_errors():
    with pytest.raises(ValueError, match="unknown split"):
        split_keys("holdout")
    kw = _split_inputs()
    kw.pop("para_nll")
    with pytest.raises(ValueError, match="^forget_truth_ratio: the forget split needs paraphrased"):
        split_metrics("forget", **kw)
    kw = _split_inputs()
    kw["rouge_recall"] = [0.5]
    with pytest.raises(ValueError, match="^retain_Q_A_ROUGE: 1 ROUGE recalls for 3 items"):
        split_metrics("retain", **kw)


# --- empty / non-finite input: ValueError naming the metric --------------------------------------

CASES = {
    "forget_Q_A_Prob": lambda x: probability(x, name="forget_Q_A_Prob"),
    "forget_truth_ratio": lambda x: truth_ratio(x, [[1.0]] * max(len(x), 1), aggregator="closer_to_1_better",
                                                name="forget_truth_ratio"),
    "ra_Q_A_Prob_normalised": lambda x: normalised_probability(x, [[1.0]] * max(len(x), 1),
                                                               name="ra_Q_A_Prob_normalised"),
    "forget_quality": lambda x: forget_quality(x, [1.0, 2.0]),
    "mia_loss": loss_scores,
    "mia_zlib": lambda x: zlib_scores(x, ["t"] * len(x)),
    "mia_auc": lambda x: auc(x, [1.0]),
    "privleak": lambda x: privleak(x[-1] if x else None, 0.5),
}


@pytest.mark.parametrize("metric", list(CASES))
@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_clear_errors_on_empty_or_non_finite(metric, bad):
    with pytest.raises(ValueError, match=f"^{metric}: "):
        CASES[metric](bad)


@pytest.mark.parametrize("fn,metric", [
    (lambda: min_k_scores([]), "mia_min_k"),
    (lambda: min_k_scores([[-1.0, float("nan")]]), "mia_min_k"),
    (lambda: min_k_plus_plus_scores([[float("-inf")]], [[0.0]], [[1.0]]), "mia_min_k_plus_plus"),
    (lambda: extraction_strength([], []), "extraction_strength"),
    (lambda: exact_memorization([], []), "exact_memorization"),
    (lambda: probability([[0.1], []], name="forget_Q_A_PERT_Prob"), "forget_Q_A_PERT_Prob"),
    (lambda: probability([0.1, 0.2], name="p", ids=["a", "a"]), "p"),
])
def test_clear_errors_token_inputs(fn, metric):
    with pytest.raises(ValueError, match=f"^{metric}: "):
        fn()


def test_import_is_light():
    code = ("import sys, r2f.engine.metrics; heavy = [m for m in ('scipy', 'rouge_score', 'torch', 'transformers') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": ":".join(sys.path)})
