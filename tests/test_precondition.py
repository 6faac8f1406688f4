"""Retain-curvature preconditioning (r2f.engine.unlearn.precondition) on the tiny target's real inputs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def setup(tiny_cfg, tiny_models, tofu):
    from r2f.engine.grads import qa_batches, target_modules
    from r2f.engine.models.io import load_model

    model, tok = load_model(tiny_models.path("target"))
    infos = target_modules(model, tiny_cfg.lora.target_modules)
    batches = qa_batches(tok, tofu.authors(range(20, 22)), tiny_cfg.models.max_len)
    return model, infos, batches


def _shape(model, info):
    return tuple(dict(model.named_modules())[info.name].weight.shape)


def _moved(x, m) -> float:
    """How far the outputs of inputs ``x`` move per unit (Frobenius) norm of the update ``m``."""
    return float((x @ m.T).norm() / m.norm())


def _inputs(model, info, batches):
    """The module's real input rows (non-pad tokens) on ``batches``."""
    import torch

    rows = []
    mod = dict(model.named_modules())[info.name]
    h = mod.register_forward_hook(lambda _m, i, _o: rows.append(i[0].detach()))
    try:
        with torch.inference_mode():
            for b in batches:
                n = len(rows)
                model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                rows[n] = rows[n][b["attention_mask"].bool()]
    finally:
        h.remove()
    return torch.cat(rows).float()


def test_nullspace_leaves_retain_inputs_almost_unchanged(setup):
    import torch

    from r2f.engine.unlearn.precondition import precondition, retain_transforms

    model, infos, batches = setup
    energy = 0.9
    tr = retain_transforms(model, infos, batches, "nullspace", 1e-3, energy)
    info = infos[0]
    x = _inputs(model, info, batches)
    d = torch.randn(*_shape(model, info), generator=torch.Generator().manual_seed(0))
    dp = precondition({info.name: d.clone()}, {info.name: tr[info.name]})[info.name]
    # the retain inputs' energy left after projecting out the top directions holding `energy` of it
    left = float((x @ tr[info.name]).pow(2).sum() / x.pow(2).sum())
    assert left <= 1 - energy + 1e-4
    # per unit of update, the retain outputs move less than under the plain direction
    assert _moved(x, dp) < 0.5 * _moved(x, d)


def test_input_preconditioner_damps_what_retain_inputs_use(setup):
    import torch

    from r2f.engine.unlearn.precondition import precondition, retain_transforms

    model, infos, batches = setup
    tr = retain_transforms(model, infos, batches, "input", 1e-3, 0.99)
    for info in infos[:3]:
        x = _inputs(model, info, batches)
        d = torch.randn(*_shape(model, info), generator=torch.Generator().manual_seed(1))
        dp = precondition({info.name: d.clone()}, {info.name: tr[info.name]})[info.name]
        assert _moved(x, dp) < 0.5 * _moved(x, d), info.name
    # q/k/v read one input: one shared transform
    names = [i.name for i in infos if i.name.endswith(("q_proj", "k_proj", "v_proj"))][:3]
    assert len({id(tr[n]) for n in names}) == 1


def test_low_rank_direction_stays_factored_and_equals_dense(setup):
    import torch

    from r2f.engine.unlearn.apply import LowRank
    from r2f.engine.unlearn.precondition import precondition, retain_transforms

    model, infos, batches = setup
    tr = retain_transforms(model, infos, batches, "input", 1e-3, 0.99)
    info = infos[0]
    g = torch.Generator().manual_seed(2)
    out, inp = _shape(model, info)
    u, v = torch.randn(out, 4, generator=g), torch.randn(4, inp, generator=g)
    lr = LowRank()
    lr.add(1.0, u, v)
    precondition({info.name: lr}, tr)
    assert lr.factored
    assert torch.allclose(lr.dense(), (u @ v) @ tr[info.name], atol=1e-5)


def test_r2f_pc_keeps_a_probability_budget_for_all_steps(tiny_cfg, tiny_models, tofu):
    import math

    from test_unlearn import _ctx

    from r2f.engine.models.nll import mean_nll
    from r2f.engine.unlearn.base import get_method

    pc = tiny_cfg.unlearn.r2f_pc.model_copy(update={"steps": 2, "retain_prob_drop": 0.05, "covariance_items": 16,
                                                    "forget_level": None})  # spend the budget: its bound is the test
    cfg = tiny_cfg.model_copy(update={"unlearn": tiny_cfg.unlearn.model_copy(update={"r2f_pc": pc})})
    ctx = _ctx(cfg, tiny_models, tofu)
    retain = ctx.retain[:get_method("r2f_pc").own(cfg).unlearn.eta.calibration_items]  # what its steps are sized on
    r_before = mean_nll(ctx.model, ctx.tokenizer, retain, cfg.models.max_len)
    f_before = mean_nll(ctx.model, ctx.tokenizer, ctx.forget, cfg.models.max_len)
    res = get_method("r2f_pc").run(ctx)
    assert res.info["budget_unit"] == "probability" and res.info["covariance_items"] == 16
    assert mean_nll(res.model, ctx.tokenizer, ctx.forget, cfg.models.max_len) > f_before
    # the two steps together: the retain answers' probability dropped by at most 5 %
    r_after = mean_nll(res.model, ctx.tokenizer, retain, cfg.models.max_len)
    assert math.exp(r_before - r_after) >= 0.95 - 1e-4


def test_kfac_output_factor_is_the_sampled_fisher_and_stays_factored(setup):
    import torch

    from r2f.engine.unlearn.apply import LowRank
    from r2f.engine.unlearn.precondition import output_grad_covariances, precondition, retain_transforms

    model, infos, batches = setup
    info = infos[-1]
    mod = dict(model.named_modules())[info.name]
    # one pass over the whole batch (no micro-batches), to compare with the hand computation below
    s = output_grad_covariances(model, [info], batches[:1], seed=5, budget_mb=None)[info.name]
    assert all(p.grad is None for p in model.parameters())  # no weight gradient formed
    # the same statistic by hand: the module's output made a leaf, labels sampled with the same seed
    b = batches[0]
    outs = []
    def keep(_m, _i, o):
        o.retain_grad()
        outs.append(o)

    h = mod.register_forward_hook(keep)
    emb = model.get_input_embeddings().register_forward_hook(lambda _m, _i, o: o.requires_grad_(True))
    try:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        logits = logits[b["labels"][:, 1:] != -100]
        y = torch.multinomial(torch.softmax(logits.detach().float(), -1), 1,
                              generator=torch.Generator().manual_seed(5))[:, 0]
        torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum").backward()
    finally:
        h.remove()
        emb.remove()
        model.zero_grad(set_to_none=True)
    g = outs[0].grad.reshape(-1, outs[0].shape[-1])[b["attention_mask"].reshape(-1).bool()].double()
    ref = g.T @ g / int(b["attention_mask"].sum())
    assert float(ref.trace()) > 0
    assert torch.allclose(s.double(), ref, rtol=1e-4, atol=1e-10 * float(ref.abs().max()))
    # two-sided: L (U V) P, kept as factors
    tr = retain_transforms(model, infos, batches, "kfac", 1e-3, 0.99)
    left, right = tr[info.name]
    out, inp = _shape(model, info)
    gen = torch.Generator().manual_seed(3)
    u, v = torch.randn(out, 4, generator=gen), torch.randn(4, inp, generator=gen)
    lr = LowRank()
    lr.add(1.0, u, v)
    precondition({info.name: lr}, tr)
    assert lr.factored
    assert torch.allclose(lr.dense(), left @ (u @ v) @ right, atol=1e-5)


def test_contrast_basis_prefers_what_retain_text_does_not_use():
    """onepass._run_bases with a whitening W = (A_r + lam I)^-1/2: the generalised top direction has a
    larger item-to-retain energy ratio than the item's plain top eigenvector; W = I gives the plain basis."""
    import torch

    from r2f.engine.onepass import _run_bases

    g = torch.Generator().manual_seed(0)
    d, t = 24, 10
    shared = torch.randn(d, generator=g)  # a direction both the item and retain text use a lot
    x = torch.randn(1, t, d, generator=g) + 4.0 * shared  # the item's inputs
    retain = torch.randn(200, d, generator=g) + 4.0 * torch.randn(200, 1, generator=g) * shared
    a_r = retain.T.double() @ retain.double() / 200
    evals, evecs = torch.linalg.eigh(a_r)
    lam = 1e-3 * float(evals.mean())
    w_half = ((evecs * (evals + lam).rsqrt()) @ evecs.T).float()
    w = torch.ones(1, t)
    runs = [(0, 0, 1)]
    plain = _run_bases({"m": x}, runs, w, 3)["m"][0]
    same = _run_bases({"m": x}, runs, w, 3, {"m": torch.eye(d)})["m"][0]
    assert torch.allclose(plain.abs(), same.abs(), atol=1e-4)
    contrast = _run_bases({"m": x}, runs, w, 3, {"m": w_half})["m"][0]
    assert torch.allclose(contrast @ contrast.T, torch.eye(3), atol=1e-5)  # orthonormal rows
    k = x[0].T.double() @ x[0].double()

    def ratio(a):
        a = a.double()
        return float((a @ k @ a) / (a @ a_r @ a))

    assert ratio(contrast[0]) > 2 * ratio(plain[0])


def test_projection_makes_the_update_orthogonal_to_every_retain_gradient():
    """GRU's projection, generalised: with a negligible ridge the projected update has no component
    along any retain direction (all modules together), stays factored, and changes."""
    import torch

    from r2f.engine.unlearn.apply import LowRank
    from r2f.engine.unlearn.precondition import inner, project_out

    g = torch.Generator().manual_seed(0)

    def update(rank):
        out = {}
        for name, (o, i) in {"a": (12, 20), "b": (30, 10)}.items():
            out[name] = LowRank()
            out[name].add(1.0, torch.randn(o, rank, generator=g), torch.randn(rank, i, generator=g))
        return out

    basis = [update(1) for _ in range(3)]
    d = update(2)
    before = inner(d, d)
    project_out(d, basis, 1e-9)
    for r in basis:
        assert abs(inner(r, d)) < 1e-6 * (inner(r, r) * before) ** 0.5
    assert all(x.factored and x.us[0].shape[1] == 2 + 3 for x in d.values())
    assert inner(d, d) < before  # a projection only removes


def test_retain_projection_moves_the_projected_retain_items_less(tiny_cfg, tiny_models, tofu):
    """r2f_pc's GRU projection (one group per covariance item): at the same fixed step the covariance
    items' answer NLL moves less than without it, and the forget NLL still rises."""
    from test_unlearn import _ctx, _with_eta

    from r2f.engine.models.nll import mean_nll
    from r2f.engine.unlearn.base import get_method

    moved = {}
    for groups in (0, 16):
        pc = tiny_cfg.unlearn.r2f_pc.model_copy(update={"steps": 1, "covariance_items": 16,
                                                        "retain_projection": groups})
        cfg = _with_eta(tiny_cfg.model_copy(update={"unlearn": tiny_cfg.unlearn.model_copy(update={"r2f_pc": pc})}),
                        value=3e-3)
        ctx = _ctx(cfg, tiny_models, tofu)
        first = get_method("r2f_pc").own(cfg).unlearn.eta.calibration_items
        cov = ctx.retain[first:first + 16]
        ml = cfg.models.max_len
        c0, f0 = mean_nll(ctx.model, ctx.tokenizer, cov, ml), mean_nll(ctx.model, ctx.tokenizer, ctx.forget, ml)
        res = get_method("r2f_pc").run(ctx)
        assert res.info["retain_projection"] == groups
        assert mean_nll(res.model, ctx.tokenizer, ctx.forget, ml) > f0
        moved[groups] = abs(mean_nll(res.model, ctx.tokenizer, cov, ml) - c0)
    assert moved[16] < moved[0]


def test_fisher_micro_batches_cover_the_batch_within_the_token_budget(setup):
    """The sampled Fisher's backward passes run on row slices of at most max_tokens padded tokens,
    trailing pad trimmed, covering every non-pad token once (so the peak does not grow with the batch)."""
    import torch

    from r2f.engine.budget import micro_batches
    from r2f.engine.unlearn.precondition import output_grad_covariances

    model, infos, batches = setup
    b = batches[0]
    n, t = b["input_ids"].shape
    parts = list(micro_batches(b, 3 * t))
    assert len(parts) == -(-n // 3) and all(p["input_ids"].numel() <= 3 * t for p in parts)
    assert sum(int(p["attention_mask"].sum()) for p in parts) == int(b["attention_mask"].sum())
    assert all(bool(p["attention_mask"][:, -1].any()) for p in parts)  # no all-pad trailing column
    row = 0
    for p in parts:
        k = p["input_ids"].shape[0]
        width = p["input_ids"].shape[1]
        assert torch.equal(p["input_ids"], b["input_ids"][row:row + k, :width])
        row += k
    assert len(list(micro_batches(b, 1))) == n  # at least one row each
    # a micro-batched Fisher is the same statistic: positive, symmetric, near the one-pass value
    info = infos[-1]
    small = output_grad_covariances(model, [info], batches[:1], seed=5, budget_mb=1e-3)[info.name]  # ~1 row per pass
    whole = output_grad_covariances(model, [info], batches[:1], seed=5, budget_mb=None)[info.name]
    assert torch.allclose(small, small.T) and float(small.trace()) > 0
    assert abs(float(small.trace()) / float(whole.trace()) - 1) < 0.5


def test_forget_target_takes_the_smallest_eta_that_reaches_it(tiny_cfg, tiny_models, tofu):
    """calibrate_and_apply(forget_target=...): of the etas within budget, the smallest whose held-out
    forget NLL reaches the target (every smaller one tried falls short); an unreachable target
    takes the largest within budget and says so."""
    from test_unlearn import _ctx

    from r2f.engine.unlearn.apply import calibrate_and_apply
    from r2f.engine.unlearn.r2f import r2f_direction

    eta_cfg = tiny_cfg.unlearn.eta.model_copy(update={"retain_budget": 10.0})  # the budget is not the limit here
    cfg = tiny_cfg.model_copy(update={"unlearn": tiny_cfg.unlearn.model_copy(update={"eta": eta_cfg})})
    results = {}
    for name, rise in (("near", 0.05), ("far", 1e6)):
        ctx = _ctx(cfg, tiny_models, tofu)
        eta, info = calibrate_and_apply(ctx, r2f_direction(ctx), forget_target=lambda f, r=rise: f + r)
        results[name] = eta, info
    eta, info = results["near"]
    assert info["reached"] and info["forget_nll"] >= info["forget_target"] - 1e-6
    tried = [t for t in info["trials"] if "forget_nll" in t]
    assert all(t["forget_nll"] < info["forget_target"] for t in tried if t["eta"] < eta)
    assert all(t["forget_nll"] >= info["forget_target"] for t in tried if t["eta"] >= eta)
    eta_far, info_far = results["far"]
    budget_max = max(t["eta"] for t in info_far["trials"] if t.get("within_budget"))
    assert not info_far["reached"] and eta_far == budget_max >= eta


def test_forget_first_search_checks_the_budget_once_and_falls_back_below(tiny_cfg, tiny_models, tofu):
    """The forget target is searched first: when its smallest reaching eta is within budget, one
    retain trial decides; when it is over budget, the step takes the largest eta within budget
    below it (short of the target, ``reached`` False), as a budget-first search would."""
    from test_unlearn import _ctx

    from r2f.engine.unlearn.apply import calibrate_and_apply
    from r2f.engine.unlearn.r2f import r2f_direction

    def run(budget: float, rise: float):
        eta_cfg = tiny_cfg.unlearn.eta.model_copy(update={"retain_budget": budget})
        cfg = tiny_cfg.model_copy(update={"unlearn": tiny_cfg.unlearn.model_copy(update={"eta": eta_cfg})})
        ctx = _ctx(cfg, tiny_models, tofu)
        return calibrate_and_apply(ctx, r2f_direction(ctx), forget_target=lambda f: f + rise)

    eta, info = run(10.0, 0.05)
    retain = [t for t in info["trials"] if "retain_nll" in t]
    assert info["reached"] and len(retain) == 1 and retain[0]["eta"] == eta and retain[0]["within_budget"]
    # a target far past what the budget allows: the largest eta within budget, every larger tried one over it
    eta, info = run(0.02, 1e6)
    retain = [t for t in info["trials"] if "retain_nll" in t]
    assert not info["reached"] and info["within_budget"]
    assert all(t["within_budget"] for t in retain if t["eta"] <= eta)
    assert all(not t["within_budget"] for t in retain if t["eta"] > eta) and any(t["eta"] > eta for t in retain)


def test_r2f_pc_forget_level_stops_at_the_unseen_level(tiny_cfg, tiny_models, tofu):
    """forget_level: unseen reads the model's NLL on never-seen QA as the level, records whether the
    steps reached it, and refuses a context without such QA before any work."""
    from test_unlearn import _ctx

    from r2f.engine.unlearn.base import UnlearnError, get_method

    pc = tiny_cfg.unlearn.r2f_pc.model_copy(update={"steps": 2, "retain_prob_drop": 0.5, "covariance_items": 16,
                                                    "forget_level": "unseen", "level_scale": 0.5})
    cfg = tiny_cfg.model_copy(update={"unlearn": tiny_cfg.unlearn.model_copy(update={"r2f_pc": pc})})
    ctx = _ctx(cfg, tiny_models, tofu)
    unseen, ctx.unseen = ctx.unseen, []
    with pytest.raises(UnlearnError, match="forget_level"):
        get_method("r2f_pc").run(ctx)
    ctx.unseen = unseen
    res = get_method("r2f_pc").run(ctx)
    info = res.info
    assert info["level_items"] == 40 and info["forget_level"] > info["forget_nll_before"]
    # its own views per step and calibration items, not the shared ones
    assert info["views"] == pc.views != cfg.paraphrase.views and info["calibration_items"] == pc.calibration_items
    goal = info["forget_nll_before"] + 0.5 * (info["forget_level"] - info["forget_nll_before"])
    assert info["level_reached"] == (info["forget_nll_steps"][-1] >= goal)
    # every step before the last fell short of the goal (a step that reaches it is the last one)
    assert all(f < goal for f in info["forget_nll_steps"][:-1]) and len(info["forget_nll_steps"]) == info["steps"]


def test_eta_grid_top_doubles_while_within_budget(tiny_cfg, tiny_models, tofu):
    """extend=k: a grid whose top is still within budget doubles (at most k times) before the
    bisection, so a preconditioned step is not capped by a grid sized for plain steps."""
    from test_unlearn import _ctx

    from r2f.engine.unlearn.apply import calibrate_and_apply
    from r2f.engine.unlearn.r2f import r2f_direction

    eta_cfg = tiny_cfg.unlearn.eta.model_copy(update={"grid": [1e-6, 2e-6], "retain_budget": 10.0})
    cfg = tiny_cfg.model_copy(update={"unlearn": tiny_cfg.unlearn.model_copy(update={"eta": eta_cfg})})
    plain, _ = calibrate_and_apply(_ctx(cfg, tiny_models, tofu), r2f_direction(_ctx(cfg, tiny_models, tofu)))
    ctx = _ctx(cfg, tiny_models, tofu)
    eta, info = calibrate_and_apply(ctx, r2f_direction(ctx), extend=6)
    assert plain == 2e-6
    assert info["grid_extended"] == 6 and eta == 2e-6 * 2 ** 6  # a tiny step: every doubling stays within budget
    assert all(t["within_budget"] for t in info["trials"])


def test_cholesky_damped_inverse_equals_the_eigendecomposition():
    """The Cholesky path (r2f_pc's input and output factors) gives lam (A + lam I)^-1 as the damped
    eigendecomposition does, for a rank-deficient A (most of a factor's eigenvalues near 0); an all-zero
    factor gives the identity, and bfloat16 storage stays within its precision."""
    import torch

    from r2f.engine.unlearn.precondition import _damped, _damped_inverse

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 96, generator=g, dtype=torch.float64) * torch.linspace(0.01, 3, 96, dtype=torch.float64)
    a = x.T @ x / 40  # rank 40 of 96
    evals, evecs = torch.linalg.eigh(a)
    ref = _damped(evals.clamp(min=0), evecs, 1e-3)
    got = _damped_inverse(a.clone(), 1e-3)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)
    half = _damped_inverse(a.clone(), 1e-3, torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert float((half.float() - ref).norm() / ref.norm()) < 1e-2
    assert torch.equal(_damped_inverse(torch.zeros(5, 5, dtype=torch.float64), 1e-3), torch.eye(5))


def test_kfac_factors_seeded_by_the_request_and_stored_in_bfloat16(setup):
    """The Fisher's sampled labels follow the seed passed (unlearn.seed), and factor_dtype bfloat16
    stores every factor in half the memory, equal to the float32 ones to bfloat16's precision."""
    import torch

    from r2f.engine.unlearn.precondition import retain_transforms, transform_memory_mb

    model, infos, batches = setup
    some = infos[:4]
    a = retain_transforms(model, some, batches, "kfac", 1e-3, 0.99, seed=0)
    b = retain_transforms(model, some, batches, "kfac", 1e-3, 0.99, seed=1)
    h = retain_transforms(model, some, batches, "kfac", 1e-3, 0.99, seed=0, dtype="bfloat16")
    assert any(not torch.equal(a[i.name][0], b[i.name][0]) for i in some)  # other labels, other S_r
    assert all(torch.equal(a[i.name][1], b[i.name][1]) for i in some)  # A_r has no sampling
    assert transform_memory_mb(h) == transform_memory_mb(a) / 2
    for i in some:
        for full, half in zip(a[i.name], h[i.name]):
            assert half.dtype == torch.bfloat16
            assert float((half.float() - full).norm() / full.norm()) < 1e-2


def test_reused_forget_nll_is_the_one_measured_after_the_step(tiny_cfg, tiny_models, tofu):
    """With trial weights written into every module (a dense direction), the forget NLL reported
    after the step is taken from the trial at the chosen eta: bit for bit what the updated model gives."""
    from test_unlearn import _ctx

    from r2f.engine.models.encoding import collate, encode_qa
    from r2f.engine.unlearn.apply import _nll, calibrate_and_apply
    from r2f.engine.unlearn.r2f import r2f_direction

    eta_cfg = tiny_cfg.unlearn.eta.model_copy(update={"retain_budget": 10.0})
    cfg = tiny_cfg.model_copy(update={"unlearn": tiny_cfg.unlearn.model_copy(update={"eta": eta_cfg})})
    ctx = _ctx(cfg, tiny_models, tofu)
    dense = {n: d.dense().clone() for n, d in r2f_direction(ctx).items()}  # no hook: every weight written
    eta, info = calibrate_and_apply(ctx, dense, forget_target=lambda f: f + 0.05)
    assert eta > 0 and any(t["eta"] == eta and "forget_nll" in t for t in info["trials"])
    tok, k = ctx.tokenizer, cfg.unlearn.eta.calibration_items
    enc = [encode_qa(tok, q, v.answer, cfg.models.max_len, cfg.unlearn.key_only) for v in ctx.views[1][:k]
           for q in v.questions]
    fresh = _nll(ctx.model, [collate(enc[i:i + 64], tok.pad_token_id) for i in range(0, len(enc), 64)])
    assert info["forget_nll_from_trial"] and info["forget_nll"] == fresh
