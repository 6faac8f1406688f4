import pytest
import torch
from helpers import tiny_random

from r2f.engine.decoder import KINDS, DecoderError, LearnedDecoder, cosine, decode, make_sketch, sketches, train_decoder
from r2f.engine.fidelity import collect_pairs, fidelity, fidelity_of, flatten, iter_pairs
from r2f.engine.grads import LoraGrad, ModuleInfo


def _sketch(out=12, inn=20, r=4, seed=0, aligned=False):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(50, inn, generator=g) * torch.linspace(3, 0.1, inn)
    gram = X.T @ X
    A = torch.linalg.qr(torch.randn(inn, r, generator=g))[0].T
    if aligned:
        from r2f.engine.grams import top_basis
        A = top_basis(gram, r)
    G = torch.randn(out, 50, generator=g) @ X
    info = ModuleInfo("m.layers.0.q_proj", "q_proj", 0, 0.0)
    return make_sketch(info, LoraGrad(A, 2.0 * G @ A.T, 2.0), gram), G


def test_analytic_exact_in_span():
    sk, _ = _sketch()
    G = torch.randn(12, 4) @ sk.lora.A  # gradient inside row-span(A)
    sk.lora.grad_B = 2.0 * G @ sk.lora.A.T
    assert cosine(decode("analytic", sk), G) > 0.9999


def test_prior_equals_analytic_when_aligned_and_beats_it_otherwise():
    sk, G = _sketch(aligned=True)
    assert torch.allclose(decode("prior", sk), decode("analytic", sk), atol=1e-4)
    wins = [cosine(decode("prior", s), g) > cosine(decode("analytic", s), g)
            for s, g in (_sketch(seed=i) for i in range(8))]
    assert sum(wins) >= 6


def test_lora_only_is_the_merged_step_direction():
    sk, _ = _sketch()
    assert torch.allclose(decode("lora_only", sk), sk.lora.scaling * sk.lora.grad_B @ sk.lora.A)
    with pytest.raises(DecoderError, match="unknown decoder"):
        decode("magic", sk)


def test_learned_decoder_trains_and_is_width_agnostic(tofu, tiny_cfg, tmp_path):
    small, tok = tiny_random(tofu, hidden=32, layers=1)
    cfg = tiny_cfg.model_copy(update={"lora": tiny_cfg.lora.model_copy(update={"init": "peft"})})
    pairs = collect_pairs(small, tok, cfg, tofu.split("retain90")[:4])
    dec, curve = train_decoder(flatten(pairs), hidden=16, steps=40, lr=3e-3, cosine_weight=1.0)
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5
    # the decoder trained on width 32 decodes a width-64, 3-layer model of the same family
    wide, _ = tiny_random(tofu, hidden=64, layers=3, intermediate=128, tokenizer=tok)
    wide_pairs = collect_pairs(wide, tok, cfg, tofu.split("forget01")[:2])
    for sk, g in flatten(wide_pairs):
        d = dec.decode(sk)
        assert d.shape == g.shape and torch.isfinite(d).all()
    assert fidelity(dec, wide_pairs)["n_prompts"] == 2
    dec.meta = {"kind": "learned"}
    dec.save(tmp_path / "dec")
    again = LearnedDecoder.load(tmp_path / "dec")
    sk = flatten(wide_pairs)[0][0]
    assert torch.allclose(again.decode(sk), dec.decode(sk))


def test_modules_of_one_input_share_one_decomposition_and_decode_as_alone(tofu, tiny_cfg):
    """q/k/v (gate/up) read one input: their sketches share one Spectrum, decomposed once; the
    decomposed Spectrum drops its Gram (its eigenpairs hold it), and every module decodes as it does
    from its own sketch."""
    model, tok = tiny_random(tofu, hidden=32, layers=2)
    cfg = tiny_cfg.model_copy(update={"lora": tiny_cfg.lora.model_copy(update={"init": "peft"})})
    pp = collect_pairs(model, tok, cfg, tofu.split("retain90")[:1])[0]
    sk = {s.info.name: s for s, _ in pp.pairs}
    q, k, o = (next(s for s in sk.values() if s.info.kind == m and s.info.layer == 0)
               for m in ("q_proj", "k_proj", "o_proj"))
    assert q.spectrum is k.spectrum and q.spectrum is not o.spectrum
    g = q.spectrum._gram
    dense = g.dense() if hasattr(g, "dense") else g.clone()
    alone = make_sketch(k.info, k.lora, dense)
    assert torch.allclose(decode("prior", k), decode("prior", alone), rtol=1e-3, atol=1e-6)
    assert q.spectrum._gram is None and q.spectrum._eig is not None  # decomposed once, Gram dropped
    evals, evecs = q.spectrum.eig()  # the eigenpairs hold the Gram
    assert torch.allclose((evecs * evals) @ evecs.T, dense, rtol=1e-3, atol=1e-4 * float(dense.abs().max()))
    own = sketches([q.info, o.info], {q.info.name: q.lora, o.info.name: o.lora}, {q.info.name: dense, o.info.name: dense})
    assert own[q.info.name].spectrum is own[o.info.name].spectrum  # one tensor, one Spectrum


def test_streamed_fidelity_equals_held_fidelity(tofu, tiny_cfg):
    model, tok = tiny_random(tofu, hidden=32, layers=1)
    cfg = tiny_cfg.model_copy(update={"lora": tiny_cfg.lora.model_copy(update={"init": "peft"})})
    items = tofu.split("forget01")[:2]
    held = collect_pairs(model, tok, cfg, items)
    dec = LearnedDecoder(8)
    streamed = fidelity_of({"analytic": "analytic", "learned": dec}, iter_pairs(model, tok, cfg, items))
    for label, d in (("analytic", "analytic"), ("learned", dec)):
        ref = fidelity(d, held)
        assert streamed[label]["n_prompts"] == 2
        for key in ("cosine_mean", "module_cosine_mean"):
            assert streamed[label][key] == pytest.approx(ref[key], abs=1e-5)


def test_decoder_load_refuses_bad_folders(tmp_path):
    with pytest.raises(DecoderError, match="not a decoder folder"):
        LearnedDecoder.load(tmp_path)
    dec = LearnedDecoder(8)
    dec.save(tmp_path / "d")
    meta = (tmp_path / "d" / "decoder.json")
    meta.write_text(meta.read_text().replace('"q_proj"', '"c_attn"'))
    with pytest.raises(DecoderError, match="module kinds"):
        LearnedDecoder.load(tmp_path / "d")
    sk, _ = _sketch()
    sk.info = ModuleInfo("x.c_fc", "c_fc", 0, 0.0)
    with pytest.raises(DecoderError, match="unknown to the decoder"):
        dec.decode(sk)
    assert "c_fc" not in KINDS
