"""The paper's metric formulas: USR matching rule, GUR, drift."""

import pytest
import torch

from r2f.engine.metrics.paper import contains_answer, gur, mean_kl, usr
from r2f.engine.models.encoding import key_tokens


def test_key_tokens_drop_stopwords_and_question_words():
    key = key_tokens("Where was Jaime Vasquez born?", "Jaime Vasquez was born in Santiago, Chile.")
    assert key == {"santiago", "chile"}


def test_contains_answer_threshold():
    q, a = "Where was Jaime Vasquez born?", "Jaime Vasquez was born in Santiago, Chile."
    assert contains_answer("He was born in Santiago, Chile.", q, a)
    assert contains_answer("Santiago.", q, a)  # half of the key content
    assert not contains_answer("Santiago.", q, a, threshold=0.9)
    assert not contains_answer("I don't know.", q, a)
    assert not contains_answer("Jaime Vasquez was born.", q, a)  # repeating the question is not recall


def test_usr_and_gur():
    assert usr([True, False, False, True]) == 0.5
    assert gur(0.3, 0.6) == 0.5
    with pytest.raises(ValueError, match="usr"):
        usr([])
    with pytest.raises(ValueError, match="gur"):
        gur(0.3, 0.0)


def test_mean_kl_zero_for_identical_and_positive_otherwise():
    p = torch.randn(2, 5, 11)
    mask = torch.ones(2, 5)
    assert mean_kl(p, p, mask) == pytest.approx(0.0, abs=1e-6)
    assert mean_kl(p, p + torch.randn(2, 5, 11), mask) > 0
    with pytest.raises(ValueError, match="drift"):
        mean_kl(p, p, torch.zeros(2, 5))
