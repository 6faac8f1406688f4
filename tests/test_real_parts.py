"""The parts of real-model support that run on tiny models: key-word loss masks, low-rank updates,
layer-subset proxies with distillation, and the real-knowledge split helpers."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import tiny_random


def test_key_only_labels_cover_the_fact_words_only(tofu):
    from r2f.engine.models.encoding import encode_qa

    _model, tok = tiny_random(tofu)
    q, a = "What is the capital of Australia?", "The capital of Australia is Canberra"
    full, key = encode_qa(tok, q, a, 64), encode_qa(tok, q, a, 64, key_only=True)
    assert full.input_ids == key.input_ids
    labelled = [t for t in key.labels if t != -100]
    assert 0 < len(labelled) < sum(t != -100 for t in full.labels)
    assert tok.decode(labelled).strip() == "Canberra"
    # no key word (everything is in the question or a stopword): every answer word stays labelled
    same = encode_qa(tok, "Is it the capital?", "it is the capital", 64, key_only=True)
    assert tok.decode([t for t in same.labels if t != -100]).strip() == "it is the capital"


def test_loss_tokens_key_is_off_for_refusals(tiny_cfg):
    from r2f.config import UnlearnConfig

    assert UnlearnConfig(loss_tokens="key").key_only
    assert not UnlearnConfig(loss_tokens="key", objective="refusal").key_only
    assert not UnlearnConfig().key_only


def test_low_rank_update_norm_and_dense():
    from r2f.engine.unlearn.apply import LowRank

    torch.manual_seed(0)
    lr = LowRank()
    u1, v1, u2, v2 = torch.randn(6, 2), torch.randn(2, 9), torch.randn(6, 2), torch.randn(2, 9)
    lr.add(0.5, u1, v1)
    lr.add(2.0, u2, v2)
    dense = 0.5 * u1 @ v1 + 2.0 * u2 @ v2
    assert torch.allclose(lr.dense(), dense, atol=1e-5)
    assert math.isclose(lr.sq_norm(), float(dense.double().pow(2).sum()), rel_tol=1e-5)
    assert lr.finite()
    lr.add(1.0, torch.full((6, 1), float("nan")), torch.ones(1, 9))
    assert not lr.finite()


def test_non_finite_low_rank_update_is_refused_and_model_unchanged(tiny_cfg, tiny_models, tofu):
    from r2f.engine.grads import target_modules
    from r2f.engine.models.io import load_model
    from r2f.engine.unlearn import UnlearnContext, UnlearnError
    from r2f.engine.unlearn.apply import LowRank, calibrate_and_apply

    model, tok = load_model(tiny_models.path("target"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    direction = {}
    for i in target_modules(model, tiny_cfg.lora.target_modules):
        w = dict(model.named_modules())[i.name].weight
        d = LowRank()
        d.add(1.0, torch.randn(w.shape[0], 1), torch.randn(1, w.shape[1]))
        direction[i.name] = d
    direction[i.name].add(1.0, torch.full((w.shape[0], 1), float("inf")), torch.ones(1, w.shape[1]))
    ctx = UnlearnContext(model, tok, tiny_cfg, tofu.split("forget01")[:2], tofu.split("retain90")[:8])
    with pytest.raises(UnlearnError, match="NaN/Inf"):
        calibrate_and_apply(ctx, direction)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_layer_cut_and_distillation_move_toward_the_teacher(tofu):
    from r2f.engine.proxy import cut_layers, distill, held_out_kl, keep_layers

    assert keep_layers(30, 4, 6) == [0, 1, 2, 3, 24, 25, 26, 27, 28, 29]
    with pytest.raises(ValueError):
        keep_layers(4, 3, 2)
    teacher, tok = tiny_random(tofu, layers=4)
    student = cut_layers(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    assert teacher.config.num_hidden_layers == 4  # the teacher is untouched
    assert torch.equal(student.model.layers[1].mlp.down_proj.weight, teacher.model.layers[3].mlp.down_proj.weight)
    texts = [(q.question, q.answer) for q in tofu.split("retain90")[:64]]
    held = [(q.question, q.answer) for q in tofu.split("retain90")[64:80]]
    kl0 = held_out_kl(teacher, student, tok, held, 64)
    curve = distill(teacher, student, tok, texts, steps=40, lr=3e-3, batch_size=8, max_len=64)
    assert len(curve) == 40 and all(math.isfinite(c) for c in curve)
    assert held_out_kl(teacher, student, tok, held, 64) < kl0
    assert all(p.requires_grad for p in student.parameters())  # embeddings unfrozen again


def test_own_answer_is_cut_after_the_fact():
    from r2f.engine.knowledge import own_answer

    q = "What is the capital of Australia?"
    assert own_answer("The capital of Australia is Canberra, a planned city.", q, "Canberra", 0.5) == \
        "The capital of Australia is Canberra"
    assert own_answer("I am not sure.", q, "Canberra", 0.5) == "I am not sure."


def test_success_rates_are_conditioned_on_what_the_target_knew():
    from r2f.engine.knowledge import _rate

    before = [True, True, False, True]
    after = [False, True, False, False]
    assert _rate(before, after, still=False) == (2 / 3, 3)  # usr: 2 of 3 known prompts forgotten
    assert _rate(before, after, still=True) == (1 / 3, 3)
    rate, n = _rate([False], [False], still=True)
    assert math.isnan(rate) and n == 0


def test_low_rank_update_turns_dense_when_factors_are_bigger():
    """A large request's update (k * (out + in) > out * in) is kept dense: never bigger than one
    gradient-sized matrix per module, and the same update."""
    from r2f.engine.unlearn.apply import LowRank

    g = torch.Generator().manual_seed(0)
    lr, want = LowRank(), torch.zeros(6, 9)
    for i in range(6):  # k = 2, 4, ...: dense from k = 4 (4 * 15 > 54)
        u, v = torch.randn(6, 2, generator=g), torch.randn(2, 9, generator=g)
        lr.add(0.5 + i, u, v)
        want += (0.5 + i) * u @ v
        assert lr.factored == (2 * (i + 1) * 15 <= 54)
    assert not lr.factored and torch.allclose(lr.dense(), want, atol=1e-5)
    assert math.isclose(lr.sq_norm(), float(want.double().pow(2).sum()), rel_tol=1e-5)
