"""Golden tests: r2f.engine.metrics recomputes TOFU's published numbers from TOFU's legacy eval logs.

``tests/data/reference_logs/`` holds TOFU's aggregated eval logs (locuslab/tofu, MIT) of the
fine-tuned Phi-1.5 and Llama-2-7b, trained on the full set and on retain90. Per file and item:
``gt_loss`` / ``paraphrased_loss`` / ``perturb_loss`` are *summed* answer-token NLLs,
``num_token_*`` the answer lengths, and ``avg_gt_loss`` / ``avg_paraphrased_loss`` /
``average_perturb_loss`` the *per-token means* (sum / tokens). The published numbers are
reproduced from the per-token means (what ``r2f.engine.metrics`` takes as ``*_nll``); the summed
losses give other numbers (model utility 0.535 / 0.551 / 0.819 / 0.804), checked below.

Published values (TOFU paper / leaderboard): model utility 0.522 (Phi full), 0.532 (Phi
retain90), 0.623 (Llama-2-7b full), 0.614 (Llama-2-7b retain90); forget quality of Phi full
against Phi retain90 on forget10 (300 items): 2.2e-16.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from r2f.engine.metrics import MODEL_UTILITY_KEYS, forget_quality, model_utility, split_metrics, tofu_summary, truth_ratio

LOGS = Path(__file__).resolve().parent / "data" / "reference_logs"
FILES = {
    "phi_full": "ft_epoch5_lr2e-05_phi_full_wd0.01__eval_log_aggregated.json",
    "phi_retain90": "ft_epoch5_lr2e-05_phi_retain90_wd0.01__eval_log_aggregated.json",
    "llama2_full": "ft_epoch5_lr1e-05_llama2-7b_full_wd0.01__eval_log_aggregated.json",
    "llama2_retain90": "ft_epoch5_lr1e-05_llama2-7b_retain90_wd0.01__eval_log_aggregated.json",
}
SPLIT_FILES = {"forget": "eval_log_forget.json", "retain": "eval_log.json",
               "ra": "eval_real_author_wo_options.json", "wf": "eval_real_world_wo_options.json"}
PUBLISHED_MODEL_UTILITY = {"phi_full": 0.522, "phi_retain90": 0.532, "llama2_full": 0.623, "llama2_retain90": 0.614}
PUBLISHED_FQ_PHI_FULL = 2.2e-16  # 2 significant figures


@pytest.fixture(scope="module")
def logs():
    return {k: json.loads((LOGS / f).read_text()) for k, f in FILES.items()}


def column(split_log: dict, key: str) -> list:
    """Per-item values of one field, in item order ('0', '1', ...)."""
    d = split_log[key]
    return [d[str(i)] for i in range(len(d))]


def metrics_of(log: dict, summed: bool = False) -> dict:
    """All split metrics of one legacy log (per-token mean NLLs, or the summed ones)."""
    out = {}
    for split, f in SPLIT_FILES.items():
        s = log[f]
        gt, para, pert = (("gt_loss", "paraphrased_loss", "perturb_loss") if summed
                          else ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss"))
        out.update(split_metrics(split, gt_nll=column(s, gt), pert_nll=column(s, pert),
                                 para_nll=column(s, para) if split in ("forget", "retain") else None,
                                 rouge_recall=column(s, "rougeL_recall")))
    return out


def test_log_structure_avg_is_sum_over_tokens(logs):
    s = logs["phi_full"]["eval_log_forget.json"]
    assert len(s["avg_gt_loss"]) == 300
    np.testing.assert_allclose(np.array(column(s, "gt_loss")) / column(s, "num_token_gt"),
                               column(s, "avg_gt_loss"), rtol=1e-6)
    pert = np.array(column(s, "perturb_loss")) / np.array(column(s, "num_token_perturb"))
    np.testing.assert_allclose(pert, column(s, "average_perturb_loss"), rtol=1e-6)


@pytest.mark.parametrize("model", list(FILES))
def test_model_utility_matches_published(logs, model):
    res = metrics_of(logs[model])
    mu = model_utility(res)
    assert mu.value == pytest.approx(PUBLISHED_MODEL_UTILITY[model], abs=1e-3)
    assert set(mu.extra["components"]) == set(MODEL_UTILITY_KEYS)
    # same number through the flat TOFU_SUMMARY-style dict
    assert tofu_summary(res)["model_utility"] == pytest.approx(mu.value, rel=1e-12)


@pytest.mark.parametrize("model", list(FILES))
def test_summed_losses_do_not_reproduce_model_utility(logs, model):
    mu = model_utility(metrics_of(logs[model], summed=True)).value
    assert abs(mu - PUBLISHED_MODEL_UTILITY[model]) > 0.01


def test_forget_quality_phi_full_vs_retain90(logs):
    model = metrics_of(logs["phi_full"])["forget_truth_ratio"]
    retain = metrics_of(logs["phi_retain90"])["forget_truth_ratio"]
    assert len(model.per_item) == len(retain.per_item) == 300
    fq = forget_quality(model, retain)
    # published 2.2e-16 has two significant figures: the exact value must round to it ...
    assert float(f"{fq.value:.1e}") == PUBLISHED_FQ_PHI_FULL
    # ... and scipy's exact two-sided KS p-value is 2.19427e-16 (pinned to 1e-3 relative)
    assert fq.value == pytest.approx(2.19427e-16, rel=1e-3)
    assert fq.value_log10 == pytest.approx(math.log10(2.19427e-16), abs=1e-3)
    assert fq.extra["ks_statistic"] == pytest.approx(104 / 300)
    # TOFU's aggregate_eval_stat.py feeds 1/R to the KS test: identical p-value
    tofu = forget_quality(1 / np.array(list(model.per_item)), 1 / np.array(list(retain.per_item)))
    assert tofu.value == pytest.approx(fq.value, rel=1e-9)
    assert tofu_summary(metrics_of(logs["phi_full"]), retain)["forget_quality"] == fq.value


def test_forget_quality_llama2_full_vs_retain90(logs):
    """Not a published number: a regression pin of the value these logs give (1.83e-21)."""
    fq = forget_quality(metrics_of(logs["llama2_full"])["forget_truth_ratio"],
                        metrics_of(logs["llama2_retain90"])["forget_truth_ratio"])
    assert fq.value == pytest.approx(1.834066e-21, rel=1e-3)


def test_per_item_values_match_the_logged_ones(logs):
    log = logs["phi_full"]
    res = metrics_of(log)
    # the logged per-item truth_ratio is R = P_pert_geomean / P_para
    np.testing.assert_allclose(res["forget_truth_ratio"].per_item, column(log["eval_log_forget.json"], "truth_ratio"),
                               rtol=1e-5)
    np.testing.assert_allclose(res["retain_Truth_Ratio"].per_item, column(log["eval_log.json"], "truth_ratio"),
                               rtol=1e-5)
    # real authors / world facts log normalized_gt_loss = -log(normalised probability)
    for split in ("ra", "wf"):
        logged = column(log[SPLIT_FILES[split]], "normalized_gt_loss")
        np.testing.assert_allclose(-np.log(res[f"{split}_Q_A_Prob_normalised"].per_item), logged, rtol=1e-5)


def test_forget_truth_ratio_aggregate(logs):
    s = logs["phi_full"]["eval_log_forget.json"]
    r = np.array(column(s, "truth_ratio"))
    tr = truth_ratio(column(s, "avg_paraphrased_loss"), column(s, "average_perturb_loss"),
                     aggregator="closer_to_1_better")
    assert tr.value == pytest.approx(np.mean(np.minimum(r, 1 / r)), rel=1e-5)
