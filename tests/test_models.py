import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from helpers import tiny_random

from r2f.atomic import atomic_dir
from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.models.io import ModelError, load_model, save_model
from r2f.engine.models.nll import token_nll
from r2f.engine.zoo import ensure_models


def test_encode_masks_prompt(tofu):
    _, tok = tiny_random(tofu)
    qa = tofu.split("forget01")[0]
    e = encode_qa(tok, qa.question, qa.answer, 256)
    n_prompt = sum(1 for x in e.labels if x == -100)
    assert 0 < n_prompt < len(e.input_ids) and e.labels[-1] == tok.eos_token_id
    assert tok.decode(e.labels[n_prompt:-1]).strip() == qa.answer
    short = encode_qa(tok, qa.question, qa.answer, 40)
    assert len(short.input_ids) == 40 and any(x != -100 for x in short.labels)


def test_save_load_roundtrip(tofu, tmp_path):
    model, tok = tiny_random(tofu)
    save_model(model, tok, tmp_path / "m", {"role": "test"})
    again, tok2 = load_model(tmp_path / "m")
    batch = collate([encode_qa(tok, "Who?", "Me.", 32)], tok.pad_token_id)
    with torch.inference_mode():
        assert torch.allclose(token_nll(model, batch), token_nll(again, batch), atol=1e-6)
    assert tok2("Who wrote it?")["input_ids"] == tok("Who wrote it?")["input_ids"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_atomic_dir_keeps_old_on_error(tmp_path):
    target = tmp_path / "art"
    target.mkdir()
    (target / "v").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "v").write_text("new")
        raise RuntimeError("crash mid-write")
    assert (target / "v").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["art"]


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing")
    (tmp_path / "f").mkdir()
    with pytest.raises(ModelError, match=r"f: no \*.safetensors"):
        load_model(tmp_path / "f")


def test_default_models_cached_and_learned(tiny_cfg, tiny_models):
    stamp = {p: p.stat().st_mtime_ns for p in tiny_models.root.rglob("*.safetensors")}
    again = ensure_models(tiny_cfg, log=lambda _m: pytest.fail("retrained despite cache"))
    assert again.root == tiny_models.root
    assert {p: p.stat().st_mtime_ns for p in again.root.rglob("*.safetensors")} == stamp
    rep = tiny_models.report()["roles"]
    assert rep["target"]["loss_curve"][-1] < rep["target"]["loss_curve"][0]
    m, _ = load_model(tiny_models.path("proxy"))
    t, _ = load_model(tiny_models.path("target"))
    assert m.config.hidden_size < t.config.hidden_size and m.config.num_hidden_layers < t.config.num_hidden_layers


def test_retain_model_per_split_excludes_only_that_split(tofu):
    from r2f.engine.zoo import training_items

    cfg = tiny_config(Path("unused"), **{"data.world_split": "forget10", "data.retain_authors": 2})
    target = {q.author for q in training_items(cfg, tofu, "target")}
    assert target == {0, 1} | set(range(180, 200))
    for split, n in (("forget01", 2), ("forget05", 10), ("forget10", 20)):
        retain = {q.author for q in training_items(cfg, tofu, "retain", split)}
        assert retain == target - set(tofu.forget_authors(split)) and len(target - retain) == n


def test_forget_split_must_lie_within_world():
    from r2f.config import ConfigError

    with pytest.raises(ConfigError, match="world_split"):
        tiny_config(Path("unused"), **{"data.forget_split": "forget10", "data.world_split": "forget05"})
