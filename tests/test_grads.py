import torch
from helpers import batches_for, tiny_random

from r2f.engine.decoder import KINDS
from r2f.engine.grads import full_gradients, lora_gradients, target_modules
from r2f.engine.grams import activation_grams, top_basis
from r2f.engine.models.nll import token_nll


def test_target_modules_and_depth(tofu):
    model, _ = tiny_random(tofu, layers=3)
    infos = target_modules(model, KINDS)
    assert len(infos) == 21
    assert {i.depth for i in infos} == {0.0, 0.5, 1.0}
    assert not any("lm_head" in i.name for i in infos)


def test_grad_b_identity_and_grad_a_zero(tofu):
    """With B = 0 and no dropout: grad_B = s * grad_W @ A^T (float precision), grad_A = 0."""
    model, tok = tiny_random(tofu)
    infos = target_modules(model, KINDS)
    b = batches_for(tofu, tok)
    full = full_gradients(model, infos, b)
    lora = lora_gradients(model, infos, b, rank=8, alpha=16)
    for i in infos:
        g = lora[i.name]
        assert g.scaling == 2.0
        assert g.grad_A is not None and not g.grad_A.any()
        pred = g.scaling * full[i.name] @ g.A.T
        assert torch.allclose(pred, g.grad_B, rtol=1e-4, atol=1e-6 * float(g.grad_B.abs().max()) + 1e-12)


def test_model_untouched_and_trainable_after_lora(tofu):
    model, tok = tiny_random(tofu)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = [n for n, _ in model.named_modules()]
    lora_gradients(model, target_modules(model, KINDS), batches_for(tofu, tok), 8, 16)
    assert [n for n, _ in model.named_modules()] == names
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.requires_grad and p.grad is None


def test_full_gradient_matches_autograd_sign(tofu):
    model, tok = tiny_random(tofu)
    infos = target_modules(model, KINDS)[:2]
    b = batches_for(tofu, tok, n_items=2)
    g = full_gradients(model, infos, b, "ascent")
    model.zero_grad()
    n = sum(x["input_ids"].shape[0] for x in b)
    sum(token_nll(model, x).sum() / n for x in b).backward()
    w = dict(model.named_modules())[infos[0].name].weight
    assert torch.allclose(g[infos[0].name], -w.grad, atol=1e-7)


def test_grams_and_top_basis(tofu):
    model, tok = tiny_random(tofu)
    infos = target_modules(model, ["q_proj"])
    b = batches_for(tofu, tok)
    grams = activation_grams(model, infos, b)
    k = grams[infos[0].name]
    assert torch.allclose(k, k.T, atol=1e-4) and k.shape == (32, 32)
    A = top_basis(k, 4)
    assert torch.allclose(A @ A.T, torch.eye(4), atol=1e-5)
    # the top eigenvector captures at least as much energy as any other unit vector we try
    e_top = float(A[0] @ k @ A[0])
    rnd = torch.nn.functional.normalize(torch.randn(10, 32), dim=1)
    assert all(float(v @ k @ v) <= e_top + 1e-4 for v in rnd)
    # single-pass grams inside lora_gradients agree with the separate forward
    out = {}
    lora_gradients(model, infos, b, 8, 16, grams_out=out)
    assert torch.allclose(out[infos[0].name], k, rtol=1e-4, atol=1e-3)


def test_factored_gram_gives_the_dense_top_basis():
    from r2f.engine.grams import GramFactor

    torch.manual_seed(0)
    x = torch.randn(12, 40) * torch.linspace(3, 0.1, 40)  # fewer tokens than inputs, distinct spectrum
    dense, fac = top_basis(x.T @ x, 4), top_basis(GramFactor(x), 4)
    assert torch.allclose(dense, fac, atol=1e-4)
    assert torch.allclose(GramFactor(x).dense(), x.T @ x)
    # fewer tokens than the rank: completed from the dense Gram, still orthonormal
    few = top_basis(GramFactor(x[:2]), 4)
    assert torch.allclose(few @ few.T, torch.eye(4), atol=1e-5)


def test_factored_activation_grams_match_dense(tofu):
    from r2f.engine.grams import GramFactor

    model, tok = tiny_random(tofu)
    infos = target_modules(model, ["q_proj", "down_proj"])
    b = batches_for(tofu, tok)[:1]
    b = [{k: v[:1, :12] for k, v in b[0].items()}]  # 12 tokens < 32 inputs
    dense = activation_grams(model, infos, b, (0.3, 0.5))
    fac = activation_grams(model, infos, b, (0.3, 0.5), factored=True)
    for i in infos:
        f = fac[i.name]
        assert isinstance(f, GramFactor)
        assert torch.allclose(f.dense(), dense[i.name], rtol=1e-4, atol=1e-4)


def test_grouped_lora_gradients_equal_peft_per_group(tofu):
    """One forward/backward for all items, hooks instead of a peft wrap per item: the same grad_B
    as peft on each item alone (weighted by the item's share of the sequences)."""
    from r2f.engine.grads import view_batches
    from r2f.engine.onepass import grouped_lora_gradients
    from r2f.engine.paraphrase import make_all_views

    model, tok = tiny_random(tofu)
    infos = target_modules(model, KINDS)
    views = make_all_views(tofu.split("forget01")[:3], 3)
    views[1] = type(views[1])(views[1].item_id, views[1].questions[:2], views[1].answer, views[1].repeated)
    gen = torch.Generator().manual_seed(0)
    bases = [{i.name: torch.linalg.qr(torch.randn(dict(model.named_modules())[i.name].in_features, 4,
                                                   generator=gen))[0].T.contiguous() for i in infos}
             for _ in views]
    groups = [g for g, v in enumerate(views) for _ in v.questions]
    batches = view_batches(tok, views, 64, chunk=4)  # batches straddle the groups
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    Y = grouped_lora_gradients(model, infos, batches, groups, bases)
    n = len(groups)
    for g, v in enumerate(views):
        ref = lora_gradients(model, infos, view_batches(tok, [v], 64), 4, 8, A_init=bases[g])
        for i in infos:
            want = ref[i.name].grad_B / ref[i.name].scaling * len(v.questions) / n
            got = Y[i.name][g]
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()) + 1e-12), i.name
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) and p.requires_grad and p.grad is None


def test_one_pass_bases_and_gradients_equal_the_two_pass_path(tofu):
    """R2F's one forward + one backward per batch gives the same per-item bases and LoRA gradients
    as a Gram forward per item followed by the batched LoRA backward."""
    from r2f.engine.grads import view_batches
    from r2f.engine.grams import top_bases
    from r2f.engine.onepass import group_batches, grouped_lora_gradients, one_pass_lora_gradients
    from r2f.engine.paraphrase import make_all_views

    model, tok = tiny_random(tofu)
    infos = target_modules(model, KINDS)
    groups = [[v] for v in make_all_views(tofu.split("forget01")[:4], 3)]
    weighting = (0.1, 1.0)
    batches, seq_groups = group_batches(tok, groups, 64, chunk=7)  # 2 groups per batch at most
    assert len(batches) == 2 and seq_groups == [g for g in range(4) for _ in range(3)]
    Y, bases = one_pass_lora_gradients(model, infos, batches, seq_groups, 4, weighting)
    ref_bases = [top_bases(activation_grams(model, infos, view_batches(tok, g, 64), weighting, factored=True), 4)
                 for g in groups]
    ref = grouped_lora_gradients(model, infos, batches, seq_groups, ref_bases)
    for g in range(4):
        for i in infos:  # the grad forward's activations differ from inference mode's by float noise
            assert torch.allclose(bases[g][i.name], ref_bases[g][i.name], atol=1e-3), (g, i.name)
            got, want = Y[i.name][g] @ bases[g][i.name], ref[i.name][g] @ ref_bases[g][i.name]
            assert float((got - want).norm() / want.norm()) < 1e-3, (g, i.name)


def test_low_memory_micro_batches_give_the_one_pass_result(tofu):
    """micro_batch below a group's size (a no-grad forward for the bases, then forward + backward
    over a few sequences at a time) gives the one-pass bases and gradients, also when a micro-batch
    straddles two groups."""
    from r2f.engine.onepass import group_batches, one_pass_lora_gradients
    from r2f.engine.paraphrase import make_all_views

    model, tok = tiny_random(tofu)
    infos = target_modules(model, KINDS)
    groups = [[v] for v in make_all_views(tofu.split("forget01")[:3], 3)]
    batches, seq_groups = group_batches(tok, groups, 64, chunk=9)
    assert len(batches) == 1
    for weighting, mb in (((0.1, 1.0), 1), ((0.1, 1.0), 2), (None, 2), (None, 4)):
        ref_Y, ref_bases = one_pass_lora_gradients(model, infos, batches, seq_groups, 4, weighting)
        Y, bases = one_pass_lora_gradients(model, infos, batches, seq_groups, 4, weighting, micro_batch=mb)
        for g in range(3):
            for i in infos:
                assert torch.allclose(bases[g][i.name], ref_bases[g][i.name], atol=1e-4), (mb, g, i.name)
                got, want = Y[i.name][g], ref_Y[i.name][g]
                assert float((got - want).norm() / want.norm()) < 1e-4, (mb, g, i.name)


def test_activation_budget_sets_the_micro_batch_and_keeps_the_result(tofu):
    """unlearn.activation_budget_mb: the bytes a forward keeps per token are measured on the model, a
    budget below one batch's activations lowers the sequences per forward + backward, and the bases and
    gradients stay those of the one-pass path; a budget they fit in changes nothing."""
    from r2f.engine.onepass import group_batches, one_pass_lora_gradients
    from r2f.engine.paraphrase import make_all_views

    model, tok = tiny_random(tofu)
    infos = target_modules(model, KINDS)
    groups = [[v] for v in make_all_views(tofu.split("forget01")[:3], 3)]
    batches, seq_groups = group_batches(tok, groups, 64, chunk=9)
    ref_Y, ref_bases = one_pass_lora_gradients(model, infos, batches, seq_groups, 4, (0.1, 1.0), micro_batch=9)
    mem: dict = {}
    one_pass_lora_gradients(model, infos, batches, seq_groups, 4, (0.1, 1.0), micro_batch=9,
                            activation_budget_mb=1e4, memory=mem)
    per_token = mem["activation_kb_per_token"] * 1024
    assert per_token > 0 and mem["micro_batch"] == 9  # everything fits: one pass per batch
    batch_bytes = per_token * batches[0]["input_ids"].numel()
    tight = 2.5 * batch_bytes / 9 / 2**20  # room for 2 of the 9 sequences
    mem = {}
    Y, bases = one_pass_lora_gradients(model, infos, batches, seq_groups, 4, (0.1, 1.0), micro_batch=9,
                                       activation_budget_mb=tight, memory=mem)
    assert mem["micro_batch"] == 2
    for g in range(3):
        for i in infos:
            assert torch.allclose(bases[g][i.name], ref_bases[g][i.name], atol=1e-4), (g, i.name)
            got, want = Y[i.name][g], ref_Y[i.name][g]
            assert float((got - want).norm() / want.norm()) < 1e-4, (g, i.name)


def test_one_capture_serves_every_weighting(tofu):
    """grams_of on one captured forward pass equals sum_t w_t x_t x_t^T formed from a fresh forward
    pass per weighting (hooked inputs, token_weights of that pass)."""
    from r2f.engine.grams import capture_activations, grams_of, token_weights
    from r2f.engine.models.head import answer_forward

    model, tok = tiny_random(tofu)
    infos = target_modules(model, ["q_proj", "down_proj"])
    b = batches_for(tofu, tok)
    cap = capture_activations(model, infos, b)
    mods = dict(model.named_modules())
    for weighting in (None, (0.0, 1.0), (0.3, 0.5)):
        got = grams_of(cap, weighting)
        for i in infos:
            ref, seen = 0, {}
            h = mods[i.name].register_forward_hook(lambda _m, inp, _o, seen=seen: seen.__setitem__("x", inp[0].detach()))
            try:
                for x in b:
                    with torch.no_grad():
                        w = token_weights(answer_forward(model, x), x, weighting).reshape(-1, 1)
                    xf = seen["x"].float().reshape(-1, seen["x"].shape[-1])
                    ref = ref + xf.T @ (w * xf)
            finally:
                h.remove()
            assert torch.allclose(got[i.name], ref, rtol=1e-4, atol=1e-4), (weighting, i.name)
        if weighting is not None:  # the prompt-token weight alpha changes the Gram
            assert not torch.allclose(got[infos[0].name], grams_of(cap, None)[infos[0].name])


def test_fit_weighting_scores_every_weighting_as_a_fresh_forward_would(tofu, tiny_cfg):
    """The weighting grid search captures each prompt once; its scores equal the projection cosines
    of a fresh activation_grams per (prompt, weighting), and it returns the best of them."""
    import statistics

    from r2f.engine.decoder import cosine
    from r2f.engine.fidelity import fit_weighting, item_batches
    from r2f.engine.grams import top_bases

    model, tok = tiny_random(tofu)
    cfg = tiny_cfg.model_copy(update={"decoder": tiny_cfg.decoder.model_copy(
        update={"weight_alphas": [0.0, 0.5], "weight_gammas": [1.0]})})
    items = tofu.split("forget01")[:2]
    best, scores = fit_weighting(model, tok, cfg, items)
    assert list(scores) == ["uniform", "alpha=0.0,gamma=1.0", "alpha=0.5,gamma=1.0"]
    infos = target_modules(model, cfg.lora.target_modules)
    for label, weighting in (("uniform", None), ("alpha=0.0,gamma=1.0", (0.0, 1.0)), ("alpha=0.5,gamma=1.0", (0.5, 1.0))):
        cos = []
        for item in items:
            batches = item_batches(tok, cfg, item)
            full = full_gradients(model, infos, batches, cfg.unlearn.objective)
            bases = top_bases(activation_grams(model, infos, batches, weighting, factored=True), cfg.lora.rank)
            cos.append(cosine(torch.cat([(full[i.name] @ bases[i.name].T @ bases[i.name]).flatten() for i in infos]),
                              torch.cat([full[i.name].flatten() for i in infos])))
        assert abs(scores[label] - statistics.fmean(cos)) < 1e-6, label
    top = max(scores, key=scores.get)
    grid = {"uniform": None, "alpha=0.0,gamma=1.0": (0.0, 1.0), "alpha=0.5,gamma=1.0": (0.5, 1.0)}
    assert best == grid[top]


def test_streamed_dense_grams_equal_the_captured_ones(tofu):
    """The uniform dense Gram summed inside the hooks (retain covariances: many tokens) equals the
    Gram of the captured rows, for every module kind, and modules reading one input share one Gram."""
    from r2f.engine.grads import qa_batches
    from r2f.engine.grams import capture_activations, grams_of

    model, tok = tiny_random(tofu)
    infos = target_modules(model, KINDS)
    b = qa_batches(tok, tofu.split("retain90")[:10], 64, chunk=4)
    assert len(b) == 3
    streamed = activation_grams(model, infos, b)
    ref = grams_of(capture_activations(model, infos, b, with_stats=False))
    for i in infos:
        assert torch.allclose(streamed[i.name], ref[i.name], rtol=1e-4, atol=1e-4), i.name
    by = {(i.layer, i.kind): streamed[i.name] for i in infos}
    assert by[(0, "q_proj")] is by[(0, "v_proj")] and by[(0, "gate_proj")] is by[(0, "up_proj")]
    assert by[(0, "q_proj")] is not by[(0, "o_proj")] and by[(0, "q_proj")] is not by[(1, "q_proj")]


def test_backward_passes_cut_to_the_budget_give_the_whole_batch_gradient(tofu):
    """budgeted_passes: the first pass (2 rows) measures the saved bytes per token, every later
    slice fits the budget; full and LoRA gradients equal the whole-batch ones (a sum over sequences)."""
    from r2f.engine.budget import budgeted_passes

    model, tok = tiny_random(tofu)
    infos = target_modules(model, KINDS)
    b = batches_for(tofu, tok)
    whole = full_gradients(model, infos, b, budget_mb=None)
    seen, memory = [], {}

    def run(mb):
        seen.append(mb["input_ids"].shape)
        token_nll(model, mb).sum().backward()

    budgeted_passes(model, b, run, budget_mb=1e-3, memory=memory)
    model.zero_grad(set_to_none=True)
    assert memory["activation_kb_per_token"] > 0 and memory["max_tokens"] >= 1
    assert seen[0][0] == 2 and len(seen) > 2  # the measured probe, then slices cut to the cap
    assert all(s[0] == 1 or s[0] * s[1] <= memory["max_tokens"] for s in seen[1:])
    assert sum(s[0] for s in seen) == sum(x["input_ids"].shape[0] for x in b)
    sliced = full_gradients(model, infos, b, budget_mb=1e-3)
    for i in infos:
        assert torch.allclose(sliced[i.name], whole[i.name], rtol=1e-4, atol=1e-6 * float(whole[i.name].abs().max()))
    lw = lora_gradients(model, infos, b, 8, 16, budget_mb=None)
    ls = lora_gradients(model, infos, b, 8, 16, budget_mb=1e-3)
    for i in infos:
        assert torch.allclose(ls[i.name].grad_B, lw[i.name].grad_B, rtol=1e-4,
                              atol=1e-6 * float(lw[i.name].grad_B.abs().max()))
