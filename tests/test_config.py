from pathlib import Path

import pytest

from r2f.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_default_params_load():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.lora.rank == 8 and cfg.paraphrase.views == 5
    assert cfg.models.proxy.arch.hidden < cfg.models.target.arch.hidden


def test_unknown_key_rejected_with_path(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text() + "\nbogus_section: 1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: bogus_section"):
        load_config(p)


def test_nested_unknown_key_and_bad_value():
    with pytest.raises(ConfigError, match=r"lora.rnk"):
        load_config(ROOT / "params.yaml", {"lora.rnk": 4})
    with pytest.raises(ConfigError, match=r"lora.rank"):
        load_config(ROOT / "params.yaml", {"lora.rank": 0})
    with pytest.raises(ConfigError, match=r"hidden must be divisible"):
        load_config(ROOT / "params.yaml", {"models.target.arch.heads": 3})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_section_hash_changes_with_section_only():
    a = load_config(ROOT / "params.yaml")
    b = load_config(ROOT / "params.yaml", {"unlearn.objective": "refusal"})
    c = load_config(ROOT / "params.yaml", {"models.seed": 1})
    assert a.section_hash("models") == b.section_hash("models")
    assert a.section_hash("models") != c.section_hash("models")


def test_section_hash_of_dotted_keys():
    import hashlib
    import json

    a = load_config(ROOT / "params.yaml")
    b = load_config(ROOT / "params.yaml", {"unlearn.objective": "refusal"})
    c = load_config(ROOT / "params.yaml", {"unlearn.seed": 1})
    assert a.section_hash("unlearn.objective") != b.section_hash("unlearn.objective")
    assert a.section_hash("lora", "unlearn.objective") == c.section_hash("lora", "unlearn.objective")
    assert a.section_hash("unlearn") != c.section_hash("unlearn")
    # whole sections hash as they always did (the cache folders of models, decoders and evals)
    old = {s: getattr(a, s).model_dump(mode="json") for s in ("lora", "paraphrase", "decoder")}
    assert a.section_hash("lora", "paraphrase", "decoder") == hashlib.sha256(
        json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    for bad in ("bogus", "unlearn.bogus", "unlearn.objective.x"):
        with pytest.raises(ConfigError, match=bad):
            a.section_hash(bad)
