"""Batched scoring and generation agree with one-at-a-time computation."""

import math

import torch
from helpers import tiny_random

from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.models.nll import token_nll
from r2f.engine.scoring import generate, score


def test_score_matches_token_nll_and_token_stats(tofu):
    model, tok = tiny_random(tofu)
    items = tofu.split("forget01")[:5]
    pairs = [(q.question, q.answer) for q in items]
    got = score(model, tok, pairs, 64, batch_size=2)
    ref = token_nll(model, collate([encode_qa(tok, q, a, 64) for q, a in pairs], tok.pad_token_id))
    for s, r in zip(got, ref.tolist()):
        assert math.isclose(s.nll, r, rel_tol=1e-4)
        assert s.n_tokens == len(s.logprobs) == len(s.mu) == len(s.sigma) == len(s.argmax_hit) == len(s.labels)
        assert math.isclose(-sum(s.logprobs) / s.n_tokens, s.nll, rel_tol=1e-4)
        assert all(sg >= 0 for sg in s.sigma) and all(m <= 0 for m in s.mu)
    quick = score(model, tok, pairs, 64, detail=False)
    assert [round(q.nll, 4) for q in quick] == [round(s.nll, 4) for s in got] and quick[0].logprobs == ()


def test_argmax_hits_of_a_model_that_copies_labels(tofu):
    model, tok = tiny_random(tofu)
    q = tofu.split("forget01")[0]
    enc = encode_qa(tok, q.question, q.answer, 64)
    with torch.no_grad():  # make the model always predict the answer's first token
        model.lm_head.weight.zero_()
        model.model.norm.weight.zero_()
        model.lm_head.bias = None
    s = score(model, tok, [(q.question, q.answer)], 64)[0]
    assert s.n_tokens == sum(1 for x in enc.labels if x != -100)
    assert math.isclose(s.nll, math.log(len(tok)), rel_tol=1e-3)  # uniform prediction


def test_generation_does_not_depend_on_batching(tofu):
    model, tok = tiny_random(tofu, seed=3)
    qs = [q.question for q in tofu.split("forget01")[:6]]
    one = [generate(model, tok, [q], 64, max_new_tokens=8)[0] for q in qs]
    many = generate(model, tok, qs, 64, max_new_tokens=8, batch_size=4)
    assert one == many and any(one)
