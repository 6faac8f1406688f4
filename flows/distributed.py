"""Shards as Prefect tasks on a ``DaskTaskRunner`` (``scale.executor: dask``, docs/deployment.md).

:func:`dask_cluster` gives the scheduler address for a flow run: ``scale.address``, else
``$DASK_SCHEDULER_ADDRESS``, else a ``LocalCluster`` started for the run (``scale.workers``
processes, default one per CPU core, ``scale.threads_per_worker`` torch threads each; its workers
report to the flow's Prefect API). :class:`DaskMapper` is the :class:`r2f.engine.parallel.Mapper` the
stage tasks hand to the library: each ``map`` submits one ``shard-<label>`` task per payload to a
``DaskTaskRunner`` on that scheduler, so every shard is a Prefect task run with its own state.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

QUIET = ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker", "distributed.core",
         "distributed.http.proxy", "prefect.task_runner.dask", "bokeh", "tornado")


def machine_workers() -> int:
    """Worker processes of a default LocalCluster: one per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _quiet() -> None:
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def _api_url() -> str | None:
    """The Prefect API this process talks to (the flow's temporary server when none is configured),
    so LocalCluster workers report there instead of starting servers of their own."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def worker_environ(threads: int) -> dict:
    """What a Dask nanny sets before starting a worker process: the BLAS/OpenMP threads of
    ``scale.threads_per_worker`` and *not* Dask's default ``MALLOC_TRIM_THRESHOLD_=65536``, which
    turns off glibc's dynamic mmap threshold so every activation-sized tensor is mmapped and
    unmapped again: torch ran 1.7x slower in such a worker (measured, docs/deployment.md)."""
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}


def _warm() -> None:
    """Import what the shards need (torch, transformers, the model and metric code, Prefect's task
    engine): ~5 s a worker, otherwise paid by the first shard."""
    import importlib

    for name in ("torch", "transformers", "prefect.task_engine", "r2f.engine.models.io", "r2f.engine.unlearn.r2f",
                 "r2f.engine.evaluation"):
        importlib.import_module(name)


def warm_up(address: str) -> None:
    """Start :func:`_warm` on every worker and return at once: the imports overlap the stages before
    the first sharded one (prepare, validate, training or its cache)."""
    from distributed import Client, fire_and_forget

    with Client(address, timeout="15s") as client:
        for worker in client.scheduler_info(n_workers=-1)["workers"]:
            fire_and_forget(client.submit(_warm, pure=False, workers=[worker], allow_other_workers=False))


def _restore_environ(saved: dict) -> None:
    """Undo what the LocalCluster's nannies (which live in this process) wrote into ``os.environ``
    for their workers: left in place, ``OMP_NUM_THREADS=1`` made torch in the flow's own process
    single-threaded (its unlearn stage ran 1.8x slower, measured)."""
    for k in set(os.environ) - set(saved):
        del os.environ[k]
    for k, v in saved.items():
        if os.environ.get(k) != v:
            os.environ[k] = v


@contextmanager
def dask_cluster(scale, log: Callable[[str], None] = lambda _m: None) -> Iterator[tuple[str, int]]:
    """(scheduler address, workers) for this run; a LocalCluster is closed on exit."""
    _quiet()
    address = scale.address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address:
        from distributed import Client

        from r2f.governance.stage_io import PipelineError

        try:
            with Client(address, timeout="15s") as client:
                workers = len(client.scheduler_info(n_workers=-1)["workers"])
        except (OSError, TimeoutError, ValueError) as exc:
            source = "scale.address" if scale.address else "$DASK_SCHEDULER_ADDRESS"
            raise PipelineError(f"{source}: no Dask scheduler answered at {address!r}: {exc}") from None
        if not workers:
            raise PipelineError(f"Dask scheduler {address}: no workers connected")
        warm_up(address)
        log(f"Dask scheduler {address}: {workers} workers")
        yield address, workers
        return
    import dask
    from distributed import LocalCluster

    n = scale.workers or machine_workers()
    # the workers inherit this process's environment (offline/telemetry switches, PREFECT_HOME);
    # they only need the API of the flow's temporary Prefect server, which is not in it
    env = {"PREFECT_API_URL": _api_url() or "", "DASK_LOGGING__DISTRIBUTED": "warning"}
    saved = dict(os.environ)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ(scale.threads_per_worker)}), \
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                         silence_logs=logging.WARNING, env=env) as cluster:
        _restore_environ(saved)
        warm_up(cluster.scheduler_address)
        log(f"Dask LocalCluster: {n} workers x {scale.threads_per_worker} threads at {cluster.scheduler_address}")
        yield cluster.scheduler_address, n


@task(name="shard", cache_policy=NO_CACHE)
def shard_task(fn: Callable[[Any], Any], payload: Any, threads: int = 1) -> Any:
    """One shard on a Dask worker (its torch threads set first)."""
    import torch

    torch.set_num_threads(threads)
    return fn(payload)


class DaskMapper:
    """:class:`r2f.engine.parallel.Mapper` on a Dask scheduler: each payload a ``shard-<label>`` Prefect task
    submitted to a ``DaskTaskRunner`` connected to ``address`` (from inside the stage's task, so
    the shards show in Prefect as its nested task runs); results in payload order."""

    local = False

    def __init__(self, address: str, workers: int, threads: int = 1) -> None:
        self.address, self.workers, self.threads = address, workers, threads

    def map(self, fn: Callable[[Any], Any], payloads: Sequence[Any], label: str) -> list:
        from prefect_dask import DaskTaskRunner

        _quiet()
        shard = shard_task.with_options(name=f"shard-{label}")
        with DaskTaskRunner(address=self.address) as runner:
            futures = [runner.submit(shard, parameters={"fn": fn, "payload": p, "threads": self.threads})
                       for p in payloads]
            return [f.result() for f in futures]
