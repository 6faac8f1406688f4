"""bench/tofu.py's run journal: a later session resumes an unfinished table only from runs whose code,
parameters and model weights are the same, so a retrain that is not bit-identical never mixes its
runs with an earlier model's."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

from conftest import ROOT, tiny_config

sys.path.insert(0, str(ROOT / "bench"))


def _tofu_bench():
    spec = importlib.util.spec_from_file_location("tofu_bench", ROOT / "bench" / "tofu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_journal_key_covers_the_model_weights(tiny_cfg, tiny_models, tmp_path):
    from r2f.engine.zoo import models_dir

    bench = _tofu_bench()
    state = tmp_path / "state"
    cfg = tiny_config(state)
    shutil.copytree(models_dir(tiny_cfg), models_dir(cfg))  # the same models, retrained elsewhere
    split = cfg.data.forget_split
    key = bench._run_key(cfg, split)
    assert key == bench._run_key(tiny_cfg, split)  # bit-identical models: the same key
    journal = tmp_path / "t.runs.jsonl"
    journal.write_text(json.dumps({"key": key, "method": "npo", "seed": 0, "forget_quality": 0.5}) + "\n")
    assert set(bench._journal(journal, key)) == {("npo", 0)}

    weights = next((models_dir(cfg) / "target").glob("*.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1  # one bit of the target's last weight differs
    weights.write_bytes(bytes(blob))
    changed = bench._run_key(cfg, split)
    assert changed != key
    assert bench._journal(journal, changed) == {}
    # another setting the engine reads: another key
    assert bench._run_key(tiny_config(state, **{"unlearn.eta.calibration_items": 9}), split) != changed
