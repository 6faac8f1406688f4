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


def test_bf16_scoring_is_close_to_fp32_and_generation_stays_fp32(tiny_cfg, tiny_models, tofu):
    """eval.precision bf16: scored NLLs stay close to fp32's; generation never runs under it, so
    the evaluation's generations are identical."""
    from r2f.engine.evaluation import SetJob
    from r2f.engine.models.io import load_model
    from r2f.engine.scoring import scoring_precision

    model, tok = load_model(tiny_models.path("target"))
    pairs = [(q.question, q.answer) for q in tofu.split("forget01")[:8]]
    fp32 = score(model, tok, pairs, 64)
    with scoring_precision("bf16"):
        bf16 = score(model, tok, pairs, 64)
    assert max(abs(a.nll - b.nll) / max(a.nll, 1e-3) for a, b in zip(fp32, bf16)) < 0.1
    assert any(a.nll != b.nll for a, b in zip(fp32, bf16))  # bf16 really ran
    cfgs = {p: tiny_cfg.model_copy(update={"eval": tiny_cfg.eval.model_copy(update={"precision": p})})
            for p in ("fp32", "bf16")}
    outs = {p: SetJob("retain", 0, 4).run(model, tok, c, "forget01", None) for p, c in cfgs.items()}
    assert outs["fp32"]["gens"] == outs["bf16"]["gens"]
    assert outs["fp32"]["gt"] != outs["bf16"]["gt"]
