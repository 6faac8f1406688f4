"""Sharded execution (r2f.engine.parallel, flows/distributed.py): the shards give the single-process
result, in process (the sharding arithmetic) and as Prefect tasks on a real 2-worker Dask
LocalCluster (the whole flow)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY

KEYS = ("forget_quality", "model_utility", "forget_truth_ratio", "retain_Q_A_Prob", "privleak", "usr", "rap",
        "drift_kl", "exact_memorization", "mia_min_k")


def test_split_even_covers_in_order():
    from r2f.engine.parallel import split_even

    for n in range(0, 30):
        for k in range(1, 8):
            parts = split_even(n, k)
            assert [i for r in parts for i in r] == list(range(n))
            assert len(parts) == min(n, k) and all(len(r) > 0 for r in parts)
            assert max(map(len, parts), default=0) - min(map(len, parts), default=0) <= 1
    with pytest.raises(ValueError):
        split_even(3, 0)


def test_shard_batches_keep_batches_and_groups_whole(tofu):
    from helpers import tiny_random

    from r2f.engine.onepass import group_batches, shard_batches
    from r2f.engine.paraphrase import make_all_views

    _model, tok = tiny_random(tofu)
    groups = [[v] for v in make_all_views(tofu.split("forget01")[:7], 3)]
    batches, seq_groups = group_batches(tok, groups, 64, chunk=6)  # 2 groups per batch
    shards = shard_batches(batches, seq_groups, 3)
    assert len(shards) == 3 and [b for s in shards for b in s["batches"]] == batches
    rebuilt = [g + s["offset"] for s in shards for g in s["seq_groups"]]
    assert rebuilt == list(seq_groups)
    assert all(s["seq_groups"][0] == 0 for s in shards)


def _ctx(cfg, models, tofu, mapper=None):
    from r2f.engine.models.io import load_model
    from r2f.engine.unlearn.base import UnlearnContext

    model, tok = load_model(models.path("target"))
    return UnlearnContext(model, tok, cfg, tofu.split(cfg.data.forget_split), tofu.authors(range(20, 22)),
                          tofu.idontknow(), "analytic", models.path("retain"), mapper=mapper)


class PicklingMapper:
    """Runs here, but like a cluster: not local, and every payload and result goes through
    cloudpickle (what Dask does), so an unpicklable shard fails here too."""

    local = False

    def __init__(self, workers: int) -> None:
        self.workers, self.calls = workers, []

    def map(self, fn, payloads, label):
        import cloudpickle

        self.calls.append((label, len(payloads)))
        return [cloudpickle.loads(cloudpickle.dumps(fn(cloudpickle.loads(cloudpickle.dumps(p))))) for p in payloads]


def test_shards_only_when_they_can_run_elsewhere_or_in_parts():
    from r2f.engine.parallel import SerialMapper, distributed

    assert not distributed(None) and not distributed(SerialMapper())
    assert distributed(SerialMapper(workers=2)) and distributed(PicklingMapper(1))  # a cluster of one worker too
    assert SerialMapper(2).map(lambda x: x * 2, [1, 2, 3], "t") == [2, 4, 6]


FITTED = SimpleNamespace(meta={"weighting": [0.3, 1.0]})  # a learned decoder's fitted token weighting


@pytest.mark.parametrize("init,objective,decoder", [("activation", "ascent", "analytic"),
                                                    ("activation", "refusal", FITTED),
                                                    ("peft", "ascent", "analytic")])
def test_sharded_r2f_direction_equals_single_process(tiny_cfg, tiny_models, tofu, init, objective, decoder):
    """R2F's gradients in 3 shards decode to the single-process direction: the one-pass path
    (shards of whole batches, the loss normalised by the whole request; also with refusal answers
    and the fitted token weighting, whose prompt weight depends on the batch) and the per-group
    path (peft-initialised LoRA: shards of whole items). Each shard loads a snapshot of the weights,
    which is removed afterwards."""
    from r2f.engine.unlearn.r2f import r2f_direction

    cfg = tiny_cfg.model_copy(update={"unlearn": tiny_cfg.unlearn.model_copy(update={"micro_batch": 12,
                                                                                    "objective": objective}),
                                      "lora": tiny_cfg.lora.model_copy(update={"init": init})})
    ref = r2f_direction(_ctx(cfg, tiny_models, tofu), decoder)
    mapper = PicklingMapper(3)
    got = r2f_direction(_ctx(cfg, tiny_models, tofu, mapper), decoder)
    assert mapper.calls == [("r2f-gradients", 3)]
    assert ref.keys() == got.keys()
    for name in ref:
        want, have = ref[name].dense(), got[name].dense()
        assert float((have - want).norm() / want.norm()) < 1e-5, name
    assert not any((Path(cfg.state_dir) / "shards").glob("model-*"))


def test_sharded_evaluation_equals_single_process(tiny_cfg, tiny_models):
    """The evaluation jobs cut into 2 shards per set and run on models loaded from their folders
    (payloads and results pickled) give the in-process evaluation's metrics."""
    from r2f.engine.evaluation import evaluate, to_json
    from r2f.engine.models.io import load_model

    cfg = tiny_cfg.model_copy(update={"eval": tiny_cfg.eval.model_copy(update={
        "max_items": 10, "max_new_tokens": 8, "rap_steps": 2, "batch_size": 4})})
    path, orig_path = tiny_models.path("retain"), tiny_models.path("target")
    model, tok = load_model(path)
    original = load_model(orig_path)[0]
    ref = to_json(evaluate(model, tok, cfg, "forget01", retain_eval=None, original=original))[1]
    res = evaluate(model, tok, cfg, "forget01", retain_eval=None, original=original, mapper=PicklingMapper(2),
                   model_path=path, original_path=orig_path)
    assert res["_meta"].extra["workers"] == 2 and res["_meta"].extra["shards"] == 13
    got = to_json(res)[1]
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-6), k


# -- the flow on a real LocalCluster ----------------------------------------------------------------
@pytest.fixture(scope="module")
def harness():  # one temporary Prefect server for the module (~8 s)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_flow_on_a_two_worker_local_cluster_gives_the_single_process_update(tmp_path, harness, monkeypatch):
    """The whole flow with ``scale.executor: dask`` on a 2-worker LocalCluster (gradient and
    evaluation shards as Prefect tasks on a DaskTaskRunner) writes the same unlearned weights, eta
    and metrics as the single-process run of the same request from the same model."""
    from reliability_lib import EASY_GATE, FAST_EVAL, make_project

    from flows.unlearning import unlearning_flow
    from r2f.engine.models.io import load_model

    project = make_project(tmp_path, {**TINY, **FAST_EVAL})
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    params = str(project / "params.yaml")
    base = {**EASY_GATE, "pipeline.start_from": "target", "pipeline.rerun": True}
    runs = {}
    for executor in ("serial", "dask"):
        res = unlearning_flow(params, {**base, "scale.executor": executor, "scale.workers": 2})
        out = project / ".r2f/pipeline"
        report = json.loads((out / "unlearned/report.json").read_text())
        meta = json.loads((out / "eval/TOFU_EVAL.json").read_text())["_meta"]["extra"]
        runs[executor] = (load_model(out / "unlearned/model")[0].state_dict(), report["eta"],
                          json.loads((out / "eval/TOFU_SUMMARY.json").read_text()), meta, res)
    (w1, eta1, s1, m1, res1), (w2, eta2, s2, m2, res2) = runs["serial"], runs["dask"]
    assert m1["workers"] == 1 and m2["workers"] == 2 and m2["shards"] > m1["shards"]
    assert eta1 == eta2
    base_w = load_model(project / ".r2f/pipeline/models/target")[0].state_dict()
    moved = 0
    for name, p in w1.items():
        step = float((p - base_w[name]).abs().max())
        moved += step > 0
        assert torch.allclose(w2[name], p, rtol=0, atol=1e-4 * step + 1e-7), name
    assert moved > 0
    for k in KEYS:
        assert s2[k] == pytest.approx(s1[k], rel=1e-3, abs=1e-5), k
    assert res2["promote"]["version"] == res1["promote"]["version"] + 1  # both candidates registered


@pytest.mark.slow
def test_unreachable_scheduler_fails_the_run_before_any_stage(tmp_path, harness, monkeypatch):
    """``scale.address`` pointing at nothing: the flow stops before its first stage with an error
    naming the setting; no stage out, no registry entry."""
    from reliability_lib import FAST_EVAL, free_port, make_project

    from flows.unlearning import unlearning_flow
    from r2f.governance.stage_io import PipelineError

    project = make_project(tmp_path, {**TINY, **FAST_EVAL})
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port()
    with pytest.raises(PipelineError, match="scale.address: no Dask scheduler answered"):
        unlearning_flow(str(project / "params.yaml"), {"scale.executor": "dask",
                                                       "scale.address": f"tcp://127.0.0.1:{port}"})
    assert not (project / ".r2f/pipeline/request").exists()
    assert not (project / ".r2f/models").exists()


def _square(x: int) -> tuple[int, int]:
    import os

    return x * x, os.getpid()


def test_scheduler_address_from_the_environment_and_default_sizing(harness, monkeypatch):
    """``$DASK_SCHEDULER_ADDRESS`` (no ``scale.address``): the flow's cluster is that scheduler with
    its workers; shards run there as Prefect tasks, results in payload order. Without either, the
    LocalCluster has one worker per CPU core and leaves this process's environment as it was."""
    import os

    import dask
    from distributed import LocalCluster

    from flows.distributed import DaskMapper, dask_cluster, machine_workers, worker_environ
    from r2f.config import ScaleConfig

    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ(1)}), \
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as external:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", external.scheduler_address)
        with dask_cluster(ScaleConfig()) as (address, workers):
            assert address == external.scheduler_address and workers == 2
            out = DaskMapper(address, workers).map(_square, list(range(6)), "test")
    assert [v for v, _ in out] == [x * x for x in range(6)]
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with dask_cluster(ScaleConfig()) as (address, workers):
        assert workers == machine_workers() and address != external.scheduler_address
        # the nannies' worker environment does not leak into this process (torch would go 1-thread)
        assert "OMP_NUM_THREADS" not in os.environ and "MALLOC_TRIM_THRESHOLD_" not in os.environ
