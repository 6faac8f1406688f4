"""One pipeline definition, two runners: dvc.yaml, the stage list, the gate, deletion requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from r2f.config import GateConfig

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_is_generated_from_the_stage_list():
    from r2f.governance.pipeline import NAMES, STAGES, dvc_yaml
    from r2f.governance.stage_io import OUTS

    # every stage has one out folder, and no folder is shared (stage_dir is the only way to find one)
    assert list(OUTS) == list(NAMES) and len(set(OUTS.values())) == len(OUTS)
    committed = (ROOT / "dvc.yaml").read_text()
    assert committed == dvc_yaml(), "dvc.yaml is stale: run `r2f stage --dvc-yaml > dvc.yaml`"
    stages = yaml.safe_load(committed)["stages"]
    assert list(stages) == list(NAMES)
    for s in STAGES:
        assert stages[s.name]["cmd"] == f"r2f stage {s.name}"
        assert stages[s.name]["outs"] == list(s.outs) == [f"${{state_dir}}/pipeline/{s.out}"]
        assert stages[s.name]["params"] == list(s.params)
    # every stage reads only earlier stages (a DAG in order); every other dep is data or the request
    seen = set()
    for s in STAGES:
        assert set(s.reads) <= seen, f"{s.name} reads {set(s.reads) - seen} before it is made"
        assert not any(d.startswith("${state_dir}") for d in s.data)
        seen.add(s.name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for s in STAGES:
        for p in s.params:
            node = params
            for k in p.split("."):
                assert isinstance(node, dict) and k in node, f"stage {s.name} reads {p}, missing from params.yaml"
                node = node[k]


def test_stage_record_drives_both_runners(tiny_cfg):
    """The flow and run_stage read retries, caching, the dvc.lock wait and sharding from STAGES."""
    import flows.unlearning as fl
    from r2f.governance.pipeline import cache_params, get_stage, run_stage
    from r2f.governance.stage_io import PipelineError, stage_dir

    src = Path(fl.__file__).read_text()
    assert "run_stage(" in src and "NAMES" in src and "get_stage(" in src
    assert fl.unlearning_flow.fn.__name__ == "unlearning_flow"
    assert [n for n in ("prepare", "promote") if get_stage(n).retries] == ["prepare", "promote"]
    assert get_stage("promote").needs_lock and get_stage("unlearn").sharded and get_stage("evaluate").sharded
    assert stage_dir(tiny_cfg, "train_decoder") == Path(tiny_cfg.state_dir) / "pipeline" / "decoder"
    # a cached stage's key covers its params and those of the cached stages upstream (the models)
    assert cache_params("train_models") == ("data", "models")
    assert set(cache_params("train_decoder")) == {"data", "models", *get_stage("train_decoder").params}
    assert fl._cache_key(None, {"name": "gate", "config": {}}) is None
    with pytest.raises(PipelineError, match="unknown stage 'nope'"):
        run_stage(tiny_cfg, "nope")


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _literals(key: str) -> list[str]:
    """The string values a ``Literal`` field at ``key`` accepts (unlearn methods: their names)."""
    import typing

    from pydantic import BaseModel

    from r2f.config import Config
    from r2f.engine.unlearn.base import METHODS

    model, ann = Config, None
    for k in key.split("."):
        ann = model.model_fields[k].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    todo, out = [ann], list(METHODS)
    while todo:
        a = todo.pop()
        args = typing.get_args(a)
        out += [x for x in args if isinstance(x, str)] if typing.get_origin(a) is typing.Literal else []
        todo += [x for x in args if typing.get_origin(x) is not None or typing.get_args(x)]
    return out


def _changed(dump: dict, key: str, value):
    """The config ``dump`` with ``key`` set to a valid other value, or None when no candidate is valid."""
    from pydantic import ValidationError

    from r2f.config import Config

    if isinstance(value, bool):
        cands = [not value]
    elif isinstance(value, (int, float)):
        cands = [value + 1, value * 2, value / 2, value + 0.01, value - 1]
    elif isinstance(value, str):
        cands = [value + "x", *_literals(key), "pkg.mod:Store", None]  # a "module:Class" setting; an optional literal
    elif isinstance(value, list):
        cands = [value[:-1], value + value[-1:]] if value else [["/tmp"]]
    elif isinstance(value, dict):
        cands = [{"endpointurl": "x"}]
    else:  # None: a number, a flag, a string, a section of defaults (models.pretrained) or a literal
        cands = [1, 0.5, True, "x", {}, *_literals(key)]
    for c in cands:
        if c == value:
            continue
        d = json.loads(json.dumps(dump))
        *parents, leaf = key.split(".")
        node = d
        for k in parents:
            node = node[k]
        node[leaf] = c
        try:
            return Config.model_validate(d)
        except ValidationError:
            pass
    return None


def test_decoder_identity_is_declared_by_its_stage():
    """Every config value the decoder's cache folder name depends on is a params key of train_decoder or
    of the cached stages upstream (what dvc.yaml and the flow's cache key hash), and changing any key
    train_decoder declares gives another decoder folder."""
    from r2f.config import load_config
    from r2f.engine.api import decoder_dir
    from r2f.engine.unlearn import method_config
    from r2f.governance.pipeline import cache_params, get_stage

    cfg = load_config(ROOT / "params.yaml", {"data.forget_split": "forget01"})  # world_split may change
    dump = cfg.model_dump(mode="json")

    def identity(c) -> str:  # the stage fits the decoder of the configured method (r2f_paper: its own)
        return decoder_dir(method_config(c)).name

    name = identity(cfg)
    declared, own = cache_params("train_decoder"), get_stage("train_decoder").params
    tried, untried = [], []
    for key, value in _leaves(dump):
        other = _changed(dump, key, value)
        if key == "unlearn.method":  # only a method with its own configuration changes the decoder
            other = cfg.model_copy(update={"unlearn": cfg.unlearn.model_copy(update={"method": "r2f_paper"})})
        if other is None:
            untried.append(key)
            continue
        tried.append(key)
        changed = identity(other) != name
        if any(key == k or key.startswith(k + ".") for k in own):
            assert changed, f"{key} is declared by train_decoder but does not change the decoder folder"
        elif changed:
            assert any(key == k or key.startswith(k + ".") for k in declared), \
                f"the decoder folder depends on {key}, which train_decoder does not declare (dvc.yaml params)"
    assert len(tried) > 50 and untried == ["paraphrase.paraphraser"], untried  # it has one value


def test_gate_rules_are_independent_and_missing_values_fail():
    from r2f.governance.gate import decide

    cfg = GateConfig(min_forget_quality=0.05, min_utility_ratio=0.95, max_abs_privleak=50, min_usr=0.5)
    good = {"forget_quality": 0.2, "model_utility": 0.5, "privleak": -10.0, "usr": 0.9}
    d = decide(good, 0.5, cfg, 0.5)
    assert d.passed and not d.reasons
    assert [r.name for r in d.rules] == ["forget_quality", "model_utility", "model_utility_vs_base", "privleak", "usr"]
    bad = decide({**good, "forget_quality": 1e-5, "privleak": -80.0}, 0.5, cfg, 0.5)
    assert not bad.passed
    assert {r.name for r in bad.rules if not r.passed} == {"forget_quality", "privleak"}
    assert any("forget_quality" in r for r in bad.reasons)
    # utility ratio against the champion; unknown champion utility fails, never passes silently
    assert not decide({**good, "model_utility": 0.4}, 0.5, cfg, 0.5).passed
    missing = decide({**good, "usr": None}, None, cfg)
    assert {r.name for r in missing.rules if not r.passed} == {"usr", "model_utility", "model_utility_vs_base"}
    # a champion with utility 0 cannot be undercut: the rule passes (no division)
    assert decide(good, 0.0, cfg, 0.0).passed
    assert decide({**good, "forget_quality": float("nan")}, 0.5, cfg, 0.5).passed is False


H = "subject: s\nrequester: r\nlegal_basis: x\ncreated_at: 2026-01-01\n"


def test_request_parsing_and_resolution(tmp_path, tofu):
    from r2f.governance.privacy import rows_hmac
    from r2f.governance.requests import RequestError, eval_split, read_request, resolve

    req = read_request(ROOT / "requests/forget01-authors.yaml")
    items = resolve(req, tofu)
    assert [q.id for q in items] == [q.id for q in tofu.split("forget01")]
    assert eval_split(items) == "forget01"
    assert len(rows_hmac(b"k" * 32, items)) == 64 and rows_hmac(b"k" * 32, items) != rows_hmac(b"j" * 32, items)
    one = tmp_path / "one.yaml"
    one.write_text("request_id: r1\n" + H + "selectors: {question_ids: [tofu-3990]}\n")
    assert eval_split(resolve(read_request(one), tofu)) == "forget01"
    wide = tmp_path / "wide.yaml"
    wide.write_text("request_id: r2\n" + H + "selectors: {authors: [185, Nikolai Abilov]}\n")
    assert eval_split(resolve(read_request(wide), tofu)) == "forget10"
    good = "request_id: r\n" + H
    bad_id = good.replace("request_id: r", "request_id: 'bad id'")
    for text, field in [(bad_id + "selectors: {authors: [1]}\n", "request_id"),
                        (good + "selectors: {}\n", "selectors"),
                        (good + "selectors: {authors: [1]}\nextra: 1\n", "extra"),
                        (good + "selectors: {authors: [1], names: [x]}\n", "selectors.names"),
                        (good.replace("requester: r\n", "") + "selectors: {authors: [1]}\n", "requester"),
                        (good.replace("2026-01-01", "yesterday") + "selectors: {authors: [1]}\n", "created_at")]:
        p = tmp_path / "bad.yaml"
        p.write_text(text)
        with pytest.raises(RequestError, match=field) as ei:
            read_request(p)
        assert str(p) in str(ei.value)
    retain = tmp_path / "retain.yaml"
    retain.write_text("request_id: r3\n" + H + "selectors: {authors: [3]}\n")
    with pytest.raises(RequestError, match="forget10"):
        eval_split(resolve(read_request(retain), tofu))
    # a name that matches nothing: the error names the selector's position, not the name
    nobody = tmp_path / "nobody.yaml"
    nobody.write_text("request_id: r4\n" + H + "selectors: {authors: [Nikolai Abilov, Jane Nobody]}\n")
    with pytest.raises(RequestError, match=r"selectors.authors\[1\]: matches no TOFU author") as ei:
        resolve(read_request(nobody), tofu)
    assert "Nobody" not in str(ei.value)


def test_author_names_are_derived_from_the_data(tofu):
    names = tofu.author_names()
    assert names[198] == "Basil Mahfouz Al-Kuwaiti" and names[199] == "Nikolai Abilov"
    assert names[0] == "Jaime Vasquez" and 88 not in names  # 88 is never named in TOFU
    assert len(names) == 199 and len(set(names.values())) == 199
    full = tofu.split("full")
    for a, n in names.items():  # each name is in at least 5 of its own author's rows
        assert sum(n in q.question + q.answer for q in full[a * 20:(a + 1) * 20]) >= 5, (a, n)
    assert tofu.authors_named("  nikolai   ABILOV ") == [199] and tofu.authors_named("Nobody") == []


def test_reference_cut_to_the_request_rows():
    from r2f.engine.evaluation import reference_on
    from r2f.engine.metrics import auc

    ids = ["tofu-3960", "tofu-3961", "tofu-3962", "tofu-3963"]
    ref = {"forget_truth_ratio": {"per_item": dict(zip(ids, [0.1, 0.2, 0.3, 0.4]))},
           "mia_min_k": {"value": 0.9, "extra": {"forget_scores": [1.0, 5.0, 2.0, 6.0],
                                                 "holdout_scores": [3.0, 4.0, 7.0]}}}
    assert reference_on(ref, ids) == ([0.1, 0.2, 0.3, 0.4], 0.9)  # the whole split: as recorded
    tr, a = reference_on(ref, ["tofu-3963", "tofu-3961"])
    assert tr == [0.4, 0.2] and a == auc([6.0, 5.0], [3.0, 4.0, 7.0], "mia_min_k")
    with pytest.raises(Exception, match="tofu-9999"):
        reference_on(ref, ["tofu-9999"])
