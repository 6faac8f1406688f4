"""`load_model` on a local ``.gguf`` file: same logits and token ids as the model it was written from."""

import pytest
import torch
from gguf_writer import write_gguf
from helpers import tiny_random

from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.models.io import ModelError, load_model
from r2f.engine.models.nll import mean_nll
from r2f.engine.models.prompt import prompt_text

TEXTS = [
    "Question: Who is this celebrated LGBTQ+ author from Santiago, Chile known for their true crime genre work?\nAnswer:",
    " The author in question is Jaime Vasquez, an esteemed LGBTQ+ writer who hails from Santiago, Chile.",
    "What's the name of Basil Mahfouz Al-Kuwaiti's father? He was a florist.</s>",
    "  Two spaces, tabs\tand\nnewlines; digits 1958, unicode: café, naïve, 東京 — \"quotes\" <pad> <s>",
    "",
]


@pytest.fixture(scope="module")
def gguf_pair(tofu, tmp_path_factory):
    """(original model, tokenizer, path to its .gguf) -- GQA (4 heads, 2 kv heads), tied embeddings."""
    model, tok = tiny_random(tofu, hidden=48, layers=2, intermediate=96, seed=3)
    # scale the random init up so logits are O(1..10) and any misplaced row would show
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 2 * p.shape[-1] ** -0.5)
            else:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
    model.eval()
    path = write_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")
    return model, tok, path


@pytest.fixture(scope="module")
def loaded(gguf_pair):
    return load_model(gguf_pair[2])


def test_gguf_config_and_dtype(gguf_pair, loaded):
    model, _, _ = gguf_pair
    again, _ = loaded
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings"):
        assert getattr(again.config, k) == getattr(model.config, k), k
    assert again.dtype == torch.float32 and not again.training
    assert again.get_output_embeddings().weight.data_ptr() == again.get_input_embeddings().weight.data_ptr()


def test_gguf_logits_match(gguf_pair, loaded, tofu):
    model, tok, _ = gguf_pair
    again, _ = loaded
    prompts = TEXTS[:4] + [prompt_text(q.question) + " " + q.answer for q in tofu.split("forget01")[:3]]
    worst = 0.0
    with torch.inference_mode():
        for text in prompts:
            ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:64]])
            a, b = model(ids).logits, again(ids).logits
            assert a.abs().max() > 1.0  # logits big enough for the tolerance to mean something
            worst = max(worst, float((a - b).abs().max()))
        # a right-padded batch, as r2f's gradients and evaluation use
        items = tofu.split("forget01")[:4]
        batch = collate([encode_qa(tok, q.question, q.answer, 64) for q in items], tok.pad_token_id)
        a = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = again(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        m = batch["attention_mask"].bool()
        worst = max(worst, float((a[m] - b[m]).abs().max()))
    print(f"max |logit diff| gguf vs original: {worst:.3g}")
    assert worst < 1e-4
    assert mean_nll(again, loaded[1], items, 64) == pytest.approx(mean_nll(model, tok, items, 64), abs=1e-5)


def test_gguf_tokenizer_matches(gguf_pair, loaded, tofu):
    _, tok, _ = gguf_pair
    _, tok2 = loaded
    texts = TEXTS + [q.question + " " + q.answer for q in tofu.split("forget01")[:5]]
    for text in texts:
        assert tok2(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
        assert tok2(text)["input_ids"] == tok(text)["input_ids"]  # no BOS/EOS added by default either
    ids = tok(TEXTS[1], add_special_tokens=False)["input_ids"]
    assert tok2.decode(ids) == TEXTS[1]
    # special tokens by name and id; no tokens past the model's embedding rows
    assert (tok2.bos_token, tok2.eos_token, tok2.pad_token) == (tok.bos_token, tok.eos_token, tok.pad_token)
    assert (tok2.bos_token_id, tok2.eos_token_id, tok2.pad_token_id) == (tok.bos_token_id, tok.eos_token_id,
                                                                         tok.pad_token_id)
    assert len(tok2) == len(tok) == loaded[0].config.vocab_size
    assert max(tok2("<|endoftext|>")["input_ids"]) < len(tok)
    q = tofu.split("forget01")[0]
    assert encode_qa(tok2, q.question, q.answer, 64) == encode_qa(tok, q.question, q.answer, 64)


def test_gguf_load_is_quiet(gguf_pair, capfd):
    load_model(gguf_pair[2])
    err = capfd.readouterr().err
    assert "Converting" not in err and "%|" not in err


@pytest.mark.parametrize("cut", ["empty", "header", "half", "tail", "not_gguf"])
def test_corrupt_gguf_is_a_model_error(gguf_pair, tmp_path, cut):
    data = gguf_pair[2].read_bytes()
    body = {"empty": b"", "header": data[:200], "half": data[:len(data) // 2], "tail": data[:-64],
            "not_gguf": b"PK\x03\x04" + data[4:]}[cut]
    bad = tmp_path / f"{cut}.gguf"
    bad.write_bytes(body)
    with pytest.raises(ModelError, match=rf"{cut}\.gguf: cannot load GGUF model"):
        load_model(bad)
