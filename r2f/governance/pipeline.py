"""The pipeline: one definition (``STAGES``, a :class:`Stage` record per stage), two runners.

``dvc.yaml`` is generated from ``STAGES`` (``r2f stage --dvc-yaml``; a test checks the committed
file matches) and runs each stage as ``r2f stage <name>``; the Prefect flow in ``flows/`` runs the
same :func:`run_stage` as tasks, with the retries, caching and ``dvc.lock`` wait the record declares.
A stage reads its inputs from the outs of earlier stages under ``<state_dir>/pipeline/``
(:mod:`r2f.governance.stage_io`) and writes its own outs atomically, so either runner can resume the
other. The stage bodies are in :mod:`r2f.governance.stages`.

prepare → validate → train_models → train_decoder → unlearn → evaluate → gate → promote
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from r2f.config import Config
from r2f.governance.stage_io import OUTS, Log, PipelineError
from r2f.governance.stages import (
    evaluate,
    gate,
    prepare,
    promote,
    train_decoder,
    train_models,
    unlearn,
    validate,
)


def dvc_yaml() -> str:
    """``dvc.yaml`` text for ``STAGES`` (values interpolated by DVC from params.yaml)."""
    import yaml

    stages = {s.name: {"cmd": f"r2f stage {s.name}", "deps": list(s.deps), "params": list(s.params),
                       "outs": list(s.outs)} for s in STAGES}
    head = ("# Generated from r2f/governance/pipeline.py STAGES by `r2f stage --dvc-yaml > dvc.yaml`; "
            "tests/test_pipeline.py checks it matches.\n")
    return head + yaml.safe_dump({"stages": stages}, sort_keys=False)


P = "${state_dir}/pipeline"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: what ``dvc.yaml``, the Prefect flow and ``r2f stage`` know about it."""
    name: str
    help: str
    fn: Callable  # (cfg, log, progress[, mapper]) -> a small JSON-able result
    reads: tuple[str, ...]  # earlier stages whose outs it reads
    params: tuple[str, ...]  # params.yaml keys it reads: whole sections ("gate") or dotted keys ("unlearn.objective")
    data: tuple[str, ...] = ()  # other inputs: paths (``${...}`` = params.yaml values, DVC templating)
    sharded: bool = False  # takes a mapper (r2f.engine.parallel): its shards may run elsewhere
    retries: int = 0  # the flow's retries (I/O-bound stages: files, MLflow registry)
    cached: bool = False  # the flow caches it by the hash of cache_params (the library caches its artifacts too)
    needs_lock: bool = False  # reads dvc.lock (the flow waits for the DVC records of earlier stages)

    @property
    def out(self) -> str:
        """Its folder under <state_dir>/pipeline/ (the stage's one out; ``stage_io.OUTS``)."""
        return OUTS[self.name]

    @property
    def deps(self) -> tuple[str, ...]:
        return self.data + tuple(f"{P}/{get_stage(n).out}" for n in self.reads)

    @property
    def outs(self) -> tuple[str, ...]:
        return (f"{P}/{self.out}",)


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "resolve the deletion request to concrete TOFU rows (the forget set)", prepare,
          reads=(), params=("pipeline",), data=("data/tofu", "${pipeline.request}"), retries=2),
    Stage("validate", "Great Expectations suites on the request, forget, retain and holdout data", validate,
          reads=("prepare",), params=("validation",), data=("data/tofu",)),
    Stage("train_models", "tokenizer, target, proxy and the split's retain model (cached by config hash)",
          train_models, reads=("prepare",), params=("data", "models"), data=("data/tofu",),
          cached=True),
    # params: every key of the decoder's identity (r2f.engine.api.decoder_dir) besides the models'
    Stage("train_decoder", "fit the gradient decoder on the proxy (cached by config hash)", train_decoder,
          reads=("train_models",),
          params=("lora", "paraphrase", "decoder", "unlearn.method", "unlearn.objective", "unlearn.loss_tokens"),
          cached=True),
    Stage("unlearn", "apply the configured method to the target on the forget set", unlearn,
          reads=("prepare", "validate", "train_models", "train_decoder"), params=("unlearn",),
          sharded=True),
    Stage("evaluate", "TOFU + paper metrics of the unlearned model (references cached)", evaluate,
          reads=("unlearn", "train_models"), params=("eval",), sharded=True),
    Stage("gate", "promotion rules on the evaluation", gate, reads=("evaluate",), params=("gate",)),
    Stage("promote", "register the candidate; move the champion alias only if the gate passed", promote,
          reads=("gate",), params=("tracking",), retries=2, needs_lock=True),
)
NAMES = tuple(s.name for s in STAGES)


def get_stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise PipelineError(f"unknown stage '{name}'; expected one of {', '.join(NAMES)}")


def cache_params(name: str) -> tuple[str, ...]:
    """The params.yaml keys a cached stage's result depends on: its own and those of the cached stages
    upstream of it (the decoder is fitted on the models), in stage order."""
    todo, seen = [name], set()
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(get_stage(n).reads)
    keys = [k for s in STAGES if s.name in seen and (s.cached or s.name == name) for k in s.params]
    return tuple(dict.fromkeys(keys))


def run_stage(cfg: Config, name: str, log: Log = print, progress=None, mapper=None) -> dict:
    """Run one stage. ``mapper`` (:mod:`r2f.engine.parallel`): where the shards of the sharded stages
    run; None (``r2f stage``, DVC): in this process."""
    import time

    s = get_stage(name)
    t0 = time.perf_counter()
    kwargs = {"mapper": mapper} if s.sharded and mapper is not None else {}
    res = s.fn(cfg, log, progress, **kwargs)  # every stage: (cfg, log, progress[, mapper])
    return {**res, "stage_wall_s": round(time.perf_counter() - t0, 2)}
