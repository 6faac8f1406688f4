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
    again = ensure_models(tiny_cfg, log=lambda _m: pytest.fail("retrained despite cache"),
                          splits=(tiny_cfg.data.forget_split,))
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
    general = {q.id for s in ("real_authors", "world_facts") for q in tofu.split(s)}

    def authors_and_general(items):
        return {q.author for q in items if q.author is not None}, {q.id for q in items if q.author is None}

    target, target_general = authors_and_general(training_items(cfg, tofu, "target"))
    assert target == {0, 1} | set(range(180, 200))
    for split, n in (("forget01", 2), ("forget05", 10), ("forget10", 20)):
        retain, retain_general = authors_and_general(training_items(cfg, tofu, "retain", split))
        assert retain == target - set(tofu.forget_authors(split)) and len(target - retain) == n
        # the general knowledge (real authors, world facts) is learned by the target and every retain model
        assert retain_general == target_general == general
    off = tiny_config(Path("unused"), **{"data.retain_authors": 2, "models.general_knowledge": False})
    assert all(q.author is not None for q in training_items(off, tofu, "target"))


def test_forget_split_must_lie_within_world():
    from r2f.config import ConfigError

    with pytest.raises(ConfigError, match="world_split"):
        tiny_config(Path("unused"), **{"data.forget_split": "forget10", "data.world_split": "forget05"})


def test_only_the_models_a_request_needs(tmp_path):
    """A forget01 deletion trains the target, the proxy and retain-forget01, not the retain model of
    data.forget_split (forget05 here; forget10 in params.yaml)."""
    from r2f.engine.zoo import ensure_models

    cfg = tiny_config(tmp_path, **{"data.world_split": "forget05", "data.forget_split": "forget05",
                                   "models.target.train.epochs": 1, "models.proxy.train.epochs": 1})
    trained = []
    models = ensure_models(cfg, log=trained.append, splits=("forget01",))
    assert sorted(p.name for p in models.root.iterdir()) == ["proxy", "retain-forget01", "target", "tokenizer"]
    assert [m.split(":")[0] for m in trained if m.startswith("training")] == [
        "training target", "training proxy", "training retain-forget01"]
    # target and proxy alone (the decoder, a model's evaluation against the original) train no retain model
    again = ensure_models(cfg, log=lambda m: pytest.fail(f"trained something: {m}"))
    assert again.root == models.root


def test_training_resumes_from_its_epoch_checkpoint(tiny_cfg, tiny_models, tmp_path):
    """A fine-tuning killed after its first epoch resumes from the checkpoint and ends with the same
    weights and losses as an uninterrupted run."""
    import torch

    from r2f.config import TrainConfig
    from r2f.engine.models.encoding import encode_qa
    from r2f.engine.models.training import build_model, train_model

    _, tok = load_model(tiny_models.path("target"))
    enc = [encode_qa(tok, q.question, q.answer, 64) for q in load_tofu_items(tiny_cfg)[:64]]
    arch, train = tiny_cfg.models.proxy.arch, TrainConfig(epochs=3, lr=3e-3, batch_size=16)

    def fresh():
        return build_model(arch, len(tok), 64, tok, 0)

    whole = fresh()
    losses = train_model(whole, enc, train, tok.pad_token_id, 0)
    ckpt, steps = tmp_path / "ckpt.pt", {"n": 0}

    def crash_in_epoch_two():
        steps["n"] += 1
        if steps["n"] == 6:  # 4 steps per epoch: dies in the middle of the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(fresh(), enc, train, tok.pad_token_id, 0, crash_in_epoch_two, checkpoint=ckpt)
    assert ckpt.is_file()
    resumed = fresh()
    assert train_model(resumed, enc, train, tok.pad_token_id, 0, checkpoint=ckpt) == pytest.approx(losses)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_top_layer_bf16_fine_tuning_trains_only_the_top_layers(tiny_cfg, tiny_models):
    """``models.pretrained.train_layers`` + ``precision: bf16``: the lower layers and the embeddings keep
    their weights bit for bit, the top layer learns (its loss falls), and the weights stay float32."""
    import torch

    from r2f.config import TrainConfig
    from r2f.config.ml import PretrainedConfig
    from r2f.engine.models.encoding import encode_qa
    from r2f.engine.models.training import train_model
    from r2f.engine.zoo import _freeze_below

    model, tok = load_model(tiny_models.path("target"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    enc = [encode_qa(tok, q.question, q.answer, 64) for q in load_tofu_items(tiny_cfg)[:32]]
    _freeze_below(model, 1)
    losses = train_model(model, enc, TrainConfig(epochs=3, lr=3e-3, batch_size=16), tok.pad_token_id, 0,
                         precision="bf16")
    assert losses[-1] < losses[0]
    after = model.state_dict()
    top = f"model.layers.{len(model.model.layers) - 1}."
    for k, v in before.items():
        assert after[k].dtype == torch.float32, k
        if k.startswith(top):
            continue
        if "norm" in k and not k.startswith("model.layers."):
            continue  # the final norm trains with the top layers
        assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith(top))
    with pytest.raises(ValueError, match="train_layers"):
        _freeze_below(model, len(model.model.layers) + 1)
    with pytest.raises(ValueError, match="method: full only"):
        PretrainedConfig(method="lora", train_layers=2)


def load_tofu_items(cfg):
    from r2f.engine.data import load_tofu

    return load_tofu(cfg.data.tofu_dir).authors(range(4))
