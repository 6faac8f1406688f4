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


def test_method_sections_keep_the_defaults():
    from r2f.config import UnlearnConfig

    u = UnlearnConfig()
    assert (u.r2f.steps, u.lora_mul.steps, u.lora_mul.lr) == (1, 10, 1e-3)
    for fc in (u.gradascent, u.graddiff, u.npo):
        assert (fc.epochs, fc.lr, fc.batch_size) == (5, 1e-3, 16)
    assert (u.graddiff.alpha, u.npo.alpha, u.npo.beta) == (1.0, 1.0, 0.1)
    cfg = load_config(ROOT / "params.yaml", {"unlearn.npo.beta": 0.2})
    assert cfg.unlearn.npo.beta == 0.2 and cfg.unlearn.gradascent.epochs == 10


@pytest.mark.parametrize(("old", "new"), [
    ("npo_beta", "unlearn.npo.beta"), ("r2f_steps", "unlearn.r2f.steps"), ("lora_mul_lr", "unlearn.lora_mul.lr"),
    ("baseline_lr", "unlearn.gradascent.lr, unlearn.graddiff.lr and unlearn.npo.lr"),
    ("graddiff_alpha", "unlearn.graddiff.alpha and unlearn.npo.alpha"),
])
def test_flat_method_key_names_its_new_place(tmp_path, old, new):
    with pytest.raises(ConfigError, match=f"unlearn.{old} moved to {new}"):
        load_config(ROOT / "params.yaml", {f"unlearn.{old}": 1})
    p = tmp_path / "params.yaml"
    p.write_text((ROOT / "params.yaml").read_text().replace("\nunlearn:\n", f"\nunlearn:\n  {old}: 1\n"))
    with pytest.raises(ConfigError, match=f"params.yaml: unlearn: .*unlearn.{old} moved to {new}"):
        load_config(p)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown method 'sgd'; expected one of r2f, r2f_pc, r2f_paper, fullgrad, "):
        load_config(ROOT / "params.yaml", {"unlearn.method": "sgd"})


def test_token_beta_is_refused_without_an_ascent_objective():
    assert load_config(ROOT / "params.yaml", {"unlearn.r2f_pc.token_beta": 1.0}).unlearn.r2f_pc.token_beta == 1.0
    with pytest.raises(ConfigError, match="unlearn.r2f_pc.token_beta .* unlearn.objective 'refusal'"):
        load_config(ROOT / "params.yaml", {"unlearn.r2f_pc.token_beta": 1.0, "unlearn.objective": "refusal"})


def test_a_params_file_extends_another(tmp_path):
    """``extends:`` reads a variant over its base section by section; cycles and bad values are refused
    naming the file."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "variant.yaml").write_text("extends: params.yaml\nmodels:\n  max_len: 256\n"
                                           "gate: {min_usr: 0.7}\nunlearn: {eta: {grid: [1.0e-5, 2.0e-5]}}\n")
    base, variant = load_config(tmp_path / "params.yaml"), load_config(tmp_path / "variant.yaml")
    assert variant.models.max_len == 256 and variant.gate.min_usr == 0.7
    assert variant.unlearn.eta.grid == (1e-5, 2e-5)  # a list replaces, it does not merge
    # everything it does not name comes from the base, untouched
    assert variant.models.target == base.models.target and variant.gate.min_forget_quality == base.gate.min_forget_quality
    assert load_config(tmp_path / "variant.yaml", {"models.max_len": 64}).models.max_len == 64  # --set wins
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="b.yaml: extends: a.yaml leads back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: 3\n")
    with pytest.raises(ConfigError, match="c.yaml: extends: must name another params file"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: ../params.yaml\n")
    with pytest.raises(ConfigError, match="outside the folder"):
        load_config(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "e.yaml")


def test_shipped_variants_load():
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "params-smollm2-tofu.yaml")
    assert cfg.models.pretrained is not None and cfg.models.pretrained.name == "smollm2-135m-instruct"


def test_precision_auto_resolves_by_the_cpus_native_bfloat16(tmp_path):
    """bf16 autocast is emulated, and many times slower than fp32, on CPUs without native bfloat16
    (bench/results/bf16_speed.md): ``auto`` picks bf16 only where the CPU has it, and is resolved at
    load so caches and results name the precision really used."""
    from r2f.config import load_config
    from r2f.config._base import native_bf16, resolve_precision

    for flags, native in (("fpu avx2 fma", False), ("fpu avx2 avx512f avx512_bf16", True), ("fp asimd bf16", True),
                          ("avx512f amx_tile amx_bf16", True)):
        f = tmp_path / "cpuinfo"
        f.write_text(f"processor\t: 0\nflags\t\t: {flags}\n" if "asimd" not in flags else f"Features\t: {flags}\n")
        assert native_bf16(str(f)) is native, flags
    assert native_bf16(str(tmp_path / "missing")) is False
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    here = "bf16" if native_bf16() else "fp32"
    assert resolve_precision("auto") == here
    cfg = load_config(ROOT / "params-smollm2-tofu.yaml")
    assert cfg.models.pretrained.precision == here and cfg.eval.precision == here
    assert load_config(ROOT / "params.yaml", {"eval.precision": "bf16"}).eval.precision == "bf16"  # explicit kept
