import pytest
import torch

from r2f.engine.grads import target_modules
from r2f.engine.models.io import load_model
from r2f.engine.models.nll import mean_nll
from r2f.engine.unlearn import METHODS, UnlearnContext, UnlearnError, get_method
from r2f.engine.unlearn.apply import calibrate_and_apply


def _ctx(cfg, models, tofu, decoder="analytic"):
    model, tok = load_model(models.path("target"))
    return UnlearnContext(model, tok, cfg, tofu.split(cfg.data.forget_split), tofu.authors(range(20, 22)),
                          tofu.idontknow(), decoder, models.path("retain"), unseen=tofu.authors(range(100, 102)))


def test_unknown_method():
    with pytest.raises(UnlearnError, match="unknown method 'sgd'"):
        get_method("sgd")


def test_method_registry_agrees_with_config():
    """Adding a method = one file in r2f/engine/unlearn/ (registered in base.METHODS) + its name in
    r2f.config.MethodName (+ a section of that name in UnlearnConfig if it has settings)."""
    from pydantic import BaseModel

    from r2f.config import METHOD_NAMES, UnlearnConfig

    assert not set(METHODS) - set(METHOD_NAMES), "add these methods to r2f.config.MethodName"
    missing = set(METHOD_NAMES) - set(METHODS)
    assert not missing, f"{sorted(missing)}: add a file per method in r2f/engine/unlearn/ and register it in METHODS"
    for name in METHODS:
        assert get_method(name).name == name
    sections = {n for n, f in UnlearnConfig.model_fields.items() if isinstance(f.default, BaseModel)} - {"eta"}
    assert sections and not sections - set(METHOD_NAMES), "a method section of UnlearnConfig is named after no method"


def test_nan_update_refused_model_unchanged(tiny_cfg, tiny_models, tofu):
    ctx = _ctx(tiny_cfg, tiny_models, tofu)
    before = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    infos = target_modules(ctx.model, tiny_cfg.lora.target_modules)
    direction = {i.name: torch.zeros_like(dict(ctx.model.named_modules())[i.name].weight) for i in infos}
    direction[infos[0].name] += 1.0
    direction[infos[-1].name][0, 0] = float("nan")
    with pytest.raises(UnlearnError, match="NaN/Inf"):
        calibrate_and_apply(ctx, direction)
    zero = {k: torch.zeros_like(v) for k, v in direction.items()}
    with pytest.raises(UnlearnError, match="zero"):
        calibrate_and_apply(ctx, zero)
    for n, p in ctx.model.named_parameters():
        assert torch.equal(p, before[n])


def test_update_for_another_model_is_refused_model_unchanged(tiny_cfg, tiny_models, tofu):
    """An update whose module names or shapes are not the target's (a direction or decoder made for
    another model) is refused before anything is written."""
    from r2f.engine.unlearn.apply import LowRank

    ctx = _ctx(tiny_cfg, tiny_models, tofu)
    before = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    infos = target_modules(ctx.model, tiny_cfg.lora.target_modules)
    mods = dict(ctx.model.named_modules())
    good = {i.name: torch.ones_like(mods[i.name].weight) for i in infos}
    out, inn = mods[infos[0].name].weight.shape
    wrong = LowRank()
    wrong.add(1.0, torch.ones(out, 2), torch.ones(2, inn + 8))  # a wider model's input dimension
    with pytest.raises(UnlearnError, match=r"has shape .* the target's weight is"):
        calibrate_and_apply(ctx, {**good, infos[0].name: wrong})
    with pytest.raises(UnlearnError, match="the target has no such module"):
        calibrate_and_apply(ctx, {**good, "model.layers.99.mlp.up_proj": torch.ones(3, 3)})
    for n, p in ctx.model.named_parameters():
        assert torch.equal(p, before[n])


def test_decoder_of_another_model_family_is_refused(tiny_cfg, tiny_models, tofu):
    from r2f.engine.decoder import DecoderError, LearnedDecoder
    from r2f.engine.unlearn.r2f import r2f_direction

    # trained weights decode only with peft's random A (lora.init peft); they are checked
    peft = tiny_cfg.model_copy(update={"lora": tiny_cfg.lora.model_copy(update={"init": "peft"})})
    ctx = _ctx(peft, tiny_models, tofu)
    dec = LearnedDecoder(hidden=8)
    dec.meta = {"model_type": "gpt_neox", "pairs": 64, "steps": 40}
    with pytest.raises(DecoderError, match="trained on a 'gpt_neox' proxy cannot decode gradients of a 'llama'"):
        r2f_direction(ctx, dec)
    dec.meta["model_type"] = "llama"  # same family: accepted (and still width-agnostic)
    assert r2f_direction(ctx, dec)
    # with the activation basis the decode is the projection and no weights decode: any family runs
    dec.meta["model_type"] = "gpt_neox"
    assert r2f_direction(_ctx(tiny_cfg, tiny_models, tofu), dec)


def _with_eta(cfg, **eta):
    ec = cfg.unlearn.eta.model_copy(update=eta)
    return cfg.model_copy(update={"unlearn": cfg.unlearn.model_copy(update={"eta": ec})})


def test_calibration_respects_budget(tiny_cfg, tiny_models, tofu):
    # a grid whose smallest step is negligible, so some eta always fits and the checks always run
    cfg = _with_eta(tiny_cfg, grid=[1e-9, *tiny_cfg.unlearn.eta.grid])
    ctx = _ctx(cfg, tiny_models, tofu)
    res = get_method("fullgrad").run(ctx)
    trials = res.info["trials"]
    assert res.info["within_budget"] is True
    assert trials and res.eta in cfg.unlearn.eta.grid
    chosen = [t for t in trials if t["eta"] == res.eta]
    assert chosen and chosen[0]["within_budget"]
    limit = res.info["base_retain_nll"] * (1 + cfg.unlearn.eta.retain_budget)
    assert chosen[0]["retain_nll"] <= limit
    assert all(not t["within_budget"] and t["retain_nll"] > limit for t in trials if t["eta"] > res.eta)


def test_over_budget_step_is_refused_model_unchanged(tiny_cfg, tiny_models, tofu):
    """No eta keeps the retain NLL within budget: the step is refused like a NaN update (nothing
    written), not applied at the smallest eta."""
    from r2f.engine.unlearn.base import OverBudgetError

    cfg = _with_eta(tiny_cfg, grid=[50.0, 100.0], retain_budget=1e-6)
    ctx = _ctx(cfg, tiny_models, tofu)
    before = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
    with pytest.raises(OverBudgetError, match="retain_budget"):
        get_method("fullgrad").run(ctx)
    for n, p in ctx.model.named_parameters():
        assert torch.equal(p, before[n])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_raises_forget_nll(name, tiny_cfg, tiny_models, tofu):
    if name == "fused":  # cannot calibrate: needs a fixed eta
        eta = tiny_cfg.unlearn.eta.model_copy(update={"value": 0.003})
        tiny_cfg = tiny_cfg.model_copy(update={"unlearn": tiny_cfg.unlearn.model_copy(update={"eta": eta})})
    decoder = "analytic"
    if name == "r2f_paper":  # the paper's mode: its own configuration and a decoder trained on proxy pairs
        from r2f.engine.api import ensure_decoder
        from r2f.engine.decoder import LearnedDecoder
        from r2f.engine.unlearn import method_config

        tiny_cfg = method_config(tiny_cfg, name)
        decoder = LearnedDecoder.load(ensure_decoder(tiny_cfg)["decoder_dir"])
    ctx = _ctx(tiny_cfg, tiny_models, tofu, decoder)
    forget = ctx.forget
    before = mean_nll(ctx.model, ctx.tokenizer, forget, tiny_cfg.models.max_len)
    res = get_method(name).run(ctx)
    after = mean_nll(res.model, ctx.tokenizer, forget, tiny_cfg.models.max_len)
    assert after > before
    assert all(torch.isfinite(p).all() for p in res.model.parameters())


def test_multi_step_r2f_keeps_the_total_retain_budget(tiny_cfg, tiny_models, tofu):
    r2f = tiny_cfg.unlearn.r2f.model_copy(update={"steps": 3})
    cfg = tiny_cfg.model_copy(update={"unlearn": tiny_cfg.unlearn.model_copy(update={"r2f": r2f})})
    ctx = _ctx(cfg, tiny_models, tofu)
    retain = ctx.retain[:cfg.unlearn.eta.calibration_items]
    r_before = mean_nll(ctx.model, ctx.tokenizer, retain, cfg.models.max_len)
    f_before = mean_nll(ctx.model, ctx.tokenizer, ctx.forget, cfg.models.max_len)
    res = get_method("r2f").run(ctx)
    assert 1 <= res.info["steps"] <= 3 and len(res.info["etas"]) == res.info["steps"]
    assert mean_nll(res.model, ctx.tokenizer, ctx.forget, cfg.models.max_len) > f_before
    # every step is calibrated against the original model's retain NLL, so the steps together stay
    # within the one budget (however many were taken)
    r_after = mean_nll(res.model, ctx.tokenizer, retain, cfg.models.max_len)
    assert r_after <= r_before * (1 + cfg.unlearn.eta.retain_budget) + 1e-4


def test_r2f_batched_direction_equals_per_item_peft(tiny_cfg, tiny_models, tofu):
    """R2F's fast path (all items in one backward, onepass.one_pass_lora_gradients) gives the same
    decoded update as one peft LoRA backward per item decoded by the analytic decoder."""
    from r2f.engine.decoder import decode_factors, gram_weighting, make_sketch
    from r2f.engine.grads import lora_gradients, view_batches
    from r2f.engine.grams import activation_grams, top_bases
    from r2f.engine.unlearn.apply import LowRank
    from r2f.engine.unlearn.r2f import r2f_direction

    cfg = tiny_cfg
    ctx = _ctx(cfg, tiny_models, tofu)
    ctx.forget = ctx.forget[:3]
    fast = r2f_direction(ctx)
    infos = target_modules(ctx.model, cfg.lora.target_modules)
    grad_views, _ = ctx.views
    total = sum(len(v.questions) for v in grad_views)
    slow = {i.name: LowRank() for i in infos}
    for v in grad_views:
        b = view_batches(ctx.tokenizer, [v], cfg.models.max_len, cfg.unlearn.objective, ctx.refusals,
                         key_only=cfg.unlearn.key_only)
        grams = activation_grams(ctx.model, infos, b, gram_weighting(cfg, "analytic"), factored=True)
        lg = lora_gradients(ctx.model, infos, b, cfg.lora.rank, cfg.lora.alpha, cfg.unlearn.objective,
                            A_init=top_bases(grams, cfg.lora.rank))
        for i in infos:
            factors = decode_factors("analytic", make_sketch(i, lg[i.name], grams[i.name]))
            slow[i.name].add(len(v.questions) / total, *factors)
    for i in infos:
        want, got = slow[i.name].dense(), fast[i.name].dense()
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max())), i.name


def test_fused_step_equals_fullgrad_at_the_same_eta(tiny_cfg, tiny_models, tofu):
    """The fused exact step (update inside the backward, no gradient held) writes the same weights
    as FullGrad's materialised gradient at the same eta; without a fixed eta it refuses."""
    with pytest.raises(UnlearnError, match="unlearn.eta.value"):
        get_method("fused").run(_ctx(tiny_cfg, tiny_models, tofu))
    eta = tiny_cfg.unlearn.eta.model_copy(update={"value": 0.005})
    cfg = tiny_cfg.model_copy(update={"unlearn": tiny_cfg.unlearn.model_copy(update={"eta": eta})})
    a = get_method("fullgrad").run(_ctx(cfg, tiny_models, tofu)).model
    b = get_method("fused").run(_ctx(cfg, tiny_models, tofu)).model
    orig, _ = load_model(tiny_models.path("target"))
    pb, po = dict(b.named_parameters()), dict(orig.named_parameters())
    moved = 0
    for n, p in a.named_parameters():
        step = (p - po[n]).abs().max()
        moved += bool(step > 0)
        assert torch.allclose(p, pb[n], rtol=0, atol=1e-3 * float(step) + 1e-7), n
    assert moved > 0


def test_trial_hook_and_written_weights_agree_and_restore_exactly(tofu):
    """Calibration trials: a small-rank update runs as a hook, a large one is written into the
    weights; both give the forward of ``W - c D``, and remove() leaves every weight bit-identical."""
    from helpers import tiny_random

    from r2f.engine.models.encoding import collate, encode_qa
    from r2f.engine.models.nll import token_nll
    from r2f.engine.unlearn.apply import LowRank, Trial, _cheap_factors

    model, tok = tiny_random(tofu)
    mods = dict(model.named_modules())
    name = next(n for n, m in mods.items() if n.endswith("mlp.down_proj"))
    out, n_in = mods[name].weight.shape
    g = torch.Generator().manual_seed(0)
    small, large = LowRank(), LowRank()
    small.add(1.0, torch.randn(out, 1, generator=g), torch.randn(1, n_in, generator=g))
    k = out * n_in // (out + n_in)  # factors as big as the matrix: written, not hooked
    large.add(1.0, torch.randn(out, k, generator=g), torch.randn(k, n_in, generator=g))
    assert _cheap_factors(small) and not _cheap_factors(large)
    batch = collate([encode_qa(tok, q.question, q.answer, 64) for q in tofu.split("forget01")[:4]], tok.pad_token_id)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for d in (small, large):
        with torch.no_grad():
            w = mods[name].weight.detach().clone()
            mods[name].weight.copy_(w - 0.1 * d.dense())
            want = token_nll(model, batch)
            mods[name].weight.copy_(w)
        trial = Trial(mods, {name: d})
        trial.c = 0.1
        with torch.no_grad():
            got = token_nll(model, batch)
        trial.remove()
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
        assert float((got - token_nll(model, batch).detach()).abs().max()) > 1e-3  # the trial moved it
        for n, p in model.named_parameters():
            assert torch.equal(p, before[n])


def test_paper_mode_runs_the_papers_configuration(tiny_cfg, tiny_models, tofu):
    """r2f_paper: peft's random A, the learned decoder trained on proxy pairs, one step, whatever the
    params file says of lora.init / lora.weighting (reported as unused); refused without trained weights."""
    from r2f.engine.api import unlearn_model
    from r2f.engine.unlearn import method_config

    assert (tiny_cfg.lora.init, tiny_cfg.lora.weighting) == ("activation", "loss")  # the default, overridden
    rep = unlearn_model(tiny_cfg, "r2f_paper")
    dec = rep["decoder"]
    assert (dec["used"], dec["lora_init"], dec["trained_weights"]) == ("learned", "peft", True)
    assert dec["pairs"] >= tiny_cfg.decoder.pairs and dec["steps"] == tiny_cfg.decoder.steps
    assert {"lora.init", "lora.weighting"} <= set(rep["unused_settings"])
    assert "decoder.steps" not in rep["unused_settings"]  # the MLP is trained in this mode
    assert rep["info"]["steps"] == 1 and rep["info"]["mode"] == "paper"
    assert rep["nll_after"]["forget"] > rep["nll_before"]["forget"]
    # the method refuses a context not built under its configuration, or without trained weights
    with pytest.raises(UnlearnError, match="its own configuration"):
        get_method("r2f_paper").run(_ctx(tiny_cfg, tiny_models, tofu))
    with pytest.raises(UnlearnError, match="trained on proxy pairs"):
        get_method("r2f_paper").run(_ctx(method_config(tiny_cfg, "r2f_paper"), tiny_models, tofu, "analytic"))
