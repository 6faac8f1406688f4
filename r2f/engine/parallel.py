"""Shards of a stage that may run in other processes (docs/deployment.md, "Dask").

The library only knows the :class:`Mapper` interface: ``map(fn, payloads, label)`` returns
``[fn(p) for p in payloads]`` in order. ``None`` (the default, and what ``r2f stage`` / DVC use)
means "in this process, on the objects at hand"; the Prefect flow injects a mapper that runs each
payload as a Prefect task on a ``DaskTaskRunner`` (``flows/distributed.py``). Payloads name models
by folder, never by object: a worker loads each folder once per process (:func:`load_cached`), so
on a cluster the state folder must be on storage the workers share (a LocalCluster always does).

A stage hands over only its per-shard function and arguments: :func:`map_on_models` (models already
in folders) or :func:`map_on_snapshot` (the in-memory model saved for the shards) builds the payloads
and, on the worker, :func:`run_shard` validates the config, loads the models and calls the function.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from r2f.config import Config
from r2f.engine.models.io import load_model, save_model


class Mapper(Protocol):
    workers: int  # how many shards can run at once
    local: bool  # True: runs in this process (shards only pay off with workers > 1)

    def map(self, fn: Callable[[Any], Any], payloads: Sequence[Any], label: str) -> list: ...


class SerialMapper:
    """Every payload in this process, in order. ``workers > 1`` makes callers build their shards
    anyway (tests of the sharding itself, without a cluster)."""

    local = True

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers

    def map(self, fn, payloads, label: str) -> list:
        return [fn(p) for p in payloads]


def distributed(mapper: Mapper | None) -> bool:
    """True when shards should be built: a mapper that runs elsewhere (even on one worker), or an
    in-process one asked for more than one shard; otherwise the caller runs its ordinary in-process
    code path unchanged."""
    return mapper is not None and (not mapper.local or mapper.workers > 1)


def split_even(n: int, k: int) -> list[range]:
    """``range(n)`` cut into at most ``k`` contiguous, non-empty parts of near-equal size."""
    if n < 0 or k < 1:
        raise ValueError(f"split_even: n={n}, k={k}")
    k = min(k, n) or 1
    q, r = divmod(n, k)
    cuts = [0]
    for i in range(k):
        cuts.append(cuts[-1] + q + (1 if i < r else 0))
    return [range(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


@contextmanager
def model_snapshot(model, tokenizer, state_dir: str | Path) -> Iterator[Path]:
    """The in-memory ``model`` saved (safetensors) under ``<state_dir>/shards/`` for workers to load;
    removed afterwards."""
    path = Path(state_dir).resolve() / "shards" / f"model-{uuid.uuid4().hex[:12]}"
    try:
        save_model(model, tokenizer, path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


_CACHE: dict[tuple, tuple] = {}
_CACHE_SIZE = 2  # the evaluated model and the original (identity drift)


def load_cached(path: str | Path):
    """``load_model(path)`` once per worker process (keyed by folder and its weights' mtime)."""
    path = Path(path)
    weights = sorted(path.glob("*.safetensors"))
    key = (str(path.resolve()), tuple(f.stat().st_mtime_ns for f in weights))
    if key not in _CACHE:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = load_model(path)
    return _CACHE[key]


@dataclass(frozen=True)
class Shard:
    """One payload of :func:`map_on_models`: the per-shard function (module level, so it is pickled
    by reference), the model folder, further model folders by keyword (None: no model), the run's
    config as JSON, and the function's own keyword arguments."""

    fn: Callable[..., Any]
    model: str
    extra_models: Mapping[str, str | None]
    config: dict
    args: dict


def run_shard(shard: Shard) -> Any:
    """Worker side of :func:`map_on_models`: ``shard.fn(model, tokenizer, cfg, **extra_models, **args)``
    with the config validated and each model folder loaded once per process (:func:`load_cached`)."""
    cfg = Config.model_validate(shard.config)
    model, tok = load_cached(shard.model)
    extra = {k: load_cached(p)[0] if p else None for k, p in shard.extra_models.items()}
    return shard.fn(model, tok, cfg, **extra, **shard.args)


def map_on_models(mapper: Mapper, model_path: str | Path, cfg: Config, shard_fn: Callable[..., Any],
                  per_shard_args: Sequence[dict], label: str,
                  extra_models: Mapping[str, str | Path | None] | None = None) -> list:
    """``[shard_fn(model, tokenizer, cfg, **extra, **args) for args in per_shard_args]`` on ``mapper``,
    each shard loading the model folder ``model_path`` (and ``extra_models``, passed by keyword as
    models without their tokenizers) itself; results in order."""
    config = cfg.model_dump(mode="json")
    extra = {k: str(p) if p is not None else None for k, p in (extra_models or {}).items()}
    payloads = [Shard(shard_fn, str(model_path), extra, config, dict(args)) for args in per_shard_args]
    return mapper.map(run_shard, payloads, label)


def map_on_snapshot(mapper: Mapper, model, tokenizer, cfg: Config, shard_fn: Callable[..., Any],
                    per_shard_args: Sequence[dict], label: str) -> list:
    """:func:`map_on_models` on a snapshot of the in-memory ``model`` (:func:`model_snapshot` under
    ``cfg.state_dir``, removed afterwards)."""
    with model_snapshot(model, tokenizer, cfg.state_dir) as path:
        return map_on_models(mapper, path, cfg, shard_fn, per_shard_args, label)
