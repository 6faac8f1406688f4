"""The chunked output layer (r2f.engine.models.head) gives what the model's own logits give: the
per-token NLL and its gradient, the scoring statistics, the Gram's token weights, the WGA loss and
the identity drift; for a soft-capped family too; and a model it cannot reproduce falls back to
its own logits."""

import pytest
import torch
from helpers import batches_for, tiny_random

from r2f.engine.models import head as head_mod
from r2f.engine.models.head import AnswerStates, answer_forward, chunked_ok, masked_states, mean_kl_chunked


def _reference(model, b):
    """(log-softmax at answer positions [N, V], labels [N], rows [N]) from the model's full logits."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    lab = b["labels"][:, 1:]
    m = lab != -100
    return torch.log_softmax(logits[m].float(), -1), lab[m], m.nonzero()[:, 0]


@pytest.fixture
def small_chunks(monkeypatch):
    """A budget of 3 vocabulary rows per chunk: every batch is cut into many chunks."""
    monkeypatch.setattr(head_mod, "LOGIT_BUDGET", 3 * 400)


def test_token_nll_and_its_gradient_match_the_full_logits(tofu, small_chunks):
    from r2f.engine.models.nll import token_nll

    model, tok = tiny_random(tofu)
    assert chunked_ok(model)
    b = batches_for(tofu, tok)[0]
    st = answer_forward(model, b)
    assert st.chunk == 3 and st.h.shape[0] > 10 * st.chunk and st.h.shape[1] == 32  # hidden states, not logits
    got = token_nll(model, b)
    got.sum().backward()
    g_got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    lp, y, rows = _reference(model, b)
    nll = -lp.gather(-1, y[:, None])[:, 0]
    want = torch.zeros(b["input_ids"].shape[0]).index_add(0, rows, nll) / torch.bincount(rows).clamp(min=1)
    want.sum().backward()
    assert torch.allclose(got, want, atol=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(g_got[n], p.grad, atol=1e-5), n


def test_stats_and_token_weights_match_the_full_log_softmax(tofu, small_chunks):
    from r2f.engine.grams import token_weights

    model, tok = tiny_random(tofu)
    b = batches_for(tofu, tok)[0]
    with torch.no_grad():
        st = answer_forward(model, b)
        got = st.stats(("logp", "sq", "mu", "sigma", "argmax"))
        lp, y, _ = _reference(model, b)
    p = lp.exp()
    mu = (p * lp).sum(-1)
    assert torch.allclose(got["logp"], lp.gather(-1, y[:, None])[:, 0], atol=1e-5)
    assert torch.allclose(got["sq"], p.square().sum(-1), atol=1e-6)
    assert torch.allclose(got["mu"], mu, atol=1e-5)
    assert torch.allclose(got["sigma"], ((p * lp.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt(), atol=2e-3)
    assert torch.equal(got["argmax"], lp.argmax(-1))
    # the Gram's token weights: ||p - e_y||^2 ** gamma at answer-predicting positions, alpha x mean elsewhere
    w = token_weights(st, b, (0.5, 2.0))
    g = (p.square().sum(-1) - 2 * lp.gather(-1, y[:, None])[:, 0].exp() + 1).clamp(min=0) ** 2
    predicts = torch.zeros_like(b["attention_mask"], dtype=torch.bool)
    predicts[:, :-1] = b["labels"][:, 1:] != -100
    assert torch.allclose(w[predicts], g, atol=1e-5)
    others = b["attention_mask"].bool() & ~predicts
    assert torch.allclose(w[others], torch.full((int(others.sum()),), 0.5 * float(g.mean())), atol=1e-5)
    assert torch.equal(token_weights(st, b, None), b["attention_mask"].float())


def test_wga_objective_weights_each_token_by_its_probability():
    from r2f.engine.onepass import objective_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 11, generator=g)  # 5 answer tokens: 3 in row 0, 2 in row 1
    labels = torch.tensor([3, 4, 5, 7, 2])
    rows = torch.tensor([0, 0, 0, 1, 1])
    st = AnswerStates(logits, labels, rows, 2, lambda x: x.float(), 11)
    nll = -torch.log_softmax(logits, -1).gather(-1, labels[:, None])[:, 0]
    plain = objective_loss(st, "ascent")
    assert torch.allclose(plain, -(nll[:3].mean() + nll[3:].mean()))
    assert torch.allclose(objective_loss(st, "descent"), -plain)
    assert torch.allclose(objective_loss(st, "ascent", 1e-9), plain, atol=1e-6)  # beta -> 0: the plain loss
    w = (-nll).exp() ** 2  # p^2
    want = -((w * nll)[:3].sum() / 3 + (w * nll)[3:].sum() / 2)
    assert torch.allclose(objective_loss(st, "ascent", 2.0), want, atol=1e-6)
    with pytest.raises(ValueError, match="token_beta"):
        objective_loss(st, "refusal", 2.0)


def test_drift_kl_matches_the_full_logits(tofu, small_chunks):
    from r2f.engine.metrics.paper import mean_kl

    a, tok = tiny_random(tofu, seed=0)
    c, _ = tiny_random(tofu, seed=1, tokenizer=tok)
    b = batches_for(tofu, tok)[0]
    kw = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
    with torch.no_grad():
        want = mean_kl(a(**kw).logits, c(**kw).logits, b["attention_mask"])
        got = float(mean_kl_chunked(masked_states(a, b), masked_states(c, b)))
        same = float(mean_kl_chunked(masked_states(a, b), masked_states(a, b)))
    assert want > 0.01 and got == pytest.approx(want, rel=1e-4)
    assert same == pytest.approx(0.0, abs=1e-6)


def test_soft_capped_family_goes_through_the_chunked_path(tofu, small_chunks):
    """Gemma-2 caps its logits after the output layer (final_logit_softcapping): rebuilt, and the
    probe confirms it."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    _, tok = tiny_random(tofu)
    torch.manual_seed(0)
    conf = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.5,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = Gemma2ForCausalLM(conf).eval()
    assert chunked_ok(model)
    b = batches_for(tofu, tok)[0]
    with torch.no_grad():
        st = answer_forward(model, b)
        lp, y, _ = _reference(model, b)
    assert st.h.shape[1] == 32
    assert lp.exp().max() < 0.5  # the cap really bites: logits within +-0.5 over 400 tokens
    assert torch.allclose(st.stats(("logp",))["logp"], lp.gather(-1, y[:, None])[:, 0], atol=1e-5)


def test_a_model_the_chunked_path_cannot_reproduce_uses_its_own_logits(tofu, small_chunks):
    from r2f.engine.models.nll import token_nll

    model, tok = tiny_random(tofu)

    class Doubled(type(model)):  # post-processes its logits in a way head.py does not know
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    model.__class__ = Doubled
    assert not chunked_ok(model)
    b = batches_for(tofu, tok)[0]
    with torch.no_grad():
        lp, y, rows = _reference(model, b)
        got = token_nll(model, b)
    nll = -lp.gather(-1, y[:, None])[:, 0]
    want = torch.zeros(b["input_ids"].shape[0]).index_add(0, rows, nll) / torch.bincount(rows).clamp(min=1)
    assert torch.allclose(got, want, atol=1e-5)


def test_the_probe_reaches_no_caller_hook(tofu):
    """The probe's forwards run with every hook set aside: a collector registered by the caller
    sees only the caller's own forward."""
    model, tok = tiny_random(tofu)
    seen = []
    h = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda _m, i, _o: seen.append(i[0].shape))
    try:
        answer_forward(model, batches_for(tofu, tok)[0])
    finally:
        h.remove()
    assert len(seen) == 1
