"""The deletion-request flow: every stage of ``r2f.governance.pipeline.STAGES`` as a Prefect task, in order.

The tasks call the same :func:`r2f.governance.pipeline.run_stage` that ``dvc.yaml`` runs through
``r2f stage <name>``; after each stage its outs are recorded in ``dvc.lock`` and pushed
(:mod:`r2f.governance.versioning`), so ``dvc repro`` afterwards finds the pipeline up to date. The DVC work of
stage N runs in a worker thread while stage N+1 computes (one ``dvc`` process at a time, in stage
order); ``promote`` waits for it, because it logs the DVC md5s from ``dvc.lock``.
Retries, caching and the wait for ``dvc.lock`` are the stage's own (``retries``, ``cached``, ``needs_lock``
in ``STAGES``); a cached stage is keyed by the hash of the params it and the cached stages upstream of it
declare (:func:`r2f.governance.pipeline.cache_params`, the same keys ``dvc.yaml`` lists), and the library
caches its artifacts by input hash too, so a rerun is cheap.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE


def _cache_key(context, parameters) -> str | None:
    """A cached stage (model training, decoder fitting): the hash of the params it depends on, the
    request's evaluation split and the state folder, as long as its outs are still on disk (otherwise
    run; the library's own cache makes it cheap)."""
    from r2f.governance.pipeline import cache_params, get_stage
    from r2f.governance.stage_io import request_info, stage_dir

    name = parameters["name"]
    if not get_stage(name).cached:
        return None
    cfg = _cfg(parameters["config"])
    if not stage_dir(cfg, name).is_dir():
        return None
    split = request_info(cfg)["eval_split"]
    return f"r2f-{name}-{cfg.section_hash(*cache_params(name))}-{split}-{cfg.state_dir}"


def _cfg(config: dict):
    from r2f.config import Config

    return Config.model_validate(config)


@task(name="stage", cache_key_fn=_cache_key)
def stage_task(config: dict, name: str, cluster: dict | None = None) -> dict:
    """One stage; ``cluster`` ({address, workers}): the Dask scheduler its shards run on."""
    from r2f.governance.pipeline import run_stage
    from r2f.progress import PlainProgress

    cfg = _cfg(config)
    _say(f"stage {name} started")
    mapper = None
    if cluster:
        from flows.distributed import DaskMapper

        mapper = DaskMapper(cluster["address"], cluster["workers"], cfg.scale.threads_per_worker)
    res = run_stage(cfg, name, log=_say, progress=PlainProgress(_say), mapper=mapper)
    _say(f"stage {name} finished in {res['stage_wall_s']} s")
    return res


@task(name="version", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def version_task(config: dict, root: str, name: str) -> None:
    from r2f.governance.versioning import commit, push

    cfg = _cfg(config)
    commit(cfg, Path(root), name)
    push(cfg, Path(root), name)


def _say(msg: str) -> None:
    """A line of R2F's own (marked ``r2f``, so the CLI can show it apart from Prefect's lines)."""
    _logger().info(msg, extra={"r2f": True})


def _logger():
    from prefect import get_run_logger

    return get_run_logger()


@flow(name="r2f-deletion-request")
def unlearning_flow(params: str = "params.yaml", overrides: dict | None = None,
                    stages: list[str] | None = None, inbox_ids: list[str] | None = None) -> dict:
    """Run the pipeline stages (default: all) for the request named in ``params.yaml``; returns
    ``{stage: result}``. A failing stage (bad data, gate error) stops the flow and raises.
    ``params.yaml`` is read once: every task gets the same validated configuration.
    ``inbox_ids``: the inbox requests this run serves; each moves through its states
    (validated, unlearned, evaluated, promoted | rejected) as the stages finish."""
    from r2f.config import load_config
    from r2f.governance.locks import pipeline_lock

    cfg = load_config(params, dict(overrides or {}))
    with pipeline_lock(cfg.state_dir):  # one run per state folder: no interleaved outs, one promotion
        return _run_stages(cfg, params, stages, inbox_ids)


def _run_stages(cfg, params: str, stages: list[str] | None, inbox_ids: list[str] | None) -> dict:
    from r2f.governance.versioning import ensure_repo, find_root

    config = cfg.model_dump(mode="json")
    root = find_root(Path(params).resolve().parent)
    version = bool(cfg.versioning.enabled and root)
    if version:
        ensure_repo(cfg, root)
    with ExitStack() as stack:  # a Dask LocalCluster started for the run is closed at its end
        return _run_todo(cfg, config, root, version, stages, inbox_ids, stack)


def _run_todo(cfg, config: dict, root, version: bool, stages, inbox_ids, stack: ExitStack) -> dict:
    from r2f.governance.inbox import advance
    from r2f.governance.pipeline import NAMES, get_stage
    from r2f.governance.recovery import recover, results_on_disk

    results, pending, held, cluster = {}, [], [], None
    todo = list(stages or NAMES)
    plan = recover(cfg, _say) if stages is None else {}
    if "done" in plan:  # already processed (exactly once): nothing to do
        for rid in inbox_ids or ():
            advance(cfg, rid, "promote", plan["done"])
        return {"already_processed": plan["done"]}
    if "stages" in plan:  # an earlier run of this request died inside promote: finish that only
        todo, results = plan["stages"], results_on_disk(cfg)
    if cfg.scale.executor == "dask" and any(get_stage(n).sharded for n in todo):
        # before any stage: an unreachable scheduler fails the run with nothing changed
        from flows.distributed import dask_cluster

        address, workers = stack.enter_context(dask_cluster(cfg.scale, _say))
        cluster = {"address": address, "workers": workers}
    for name in todo:
        stage = get_stage(name)
        if stage.needs_lock:
            _wait(pending)
        opts = {"name": name, "retries": stage.retries, "retry_delay_seconds": 2}
        state = stage_task.with_options(**opts)(config, name, cluster if stage.sharded else None,
                                                return_state=True)
        results[name] = state.result()
        if state.name == "Cached":  # the stage's own lines did not run
            _say(f"stage {name} finished (cached)")
        for rid in inbox_ids or ():
            advance(cfg, rid, name, results[name])
        if version:
            # a request is versioned only once its data passed validation: a rejected request
            # leaves no DVC commit (its GX results stay in the validation folder for the operator)
            held = held + [name] if name == "prepare" and "validate" in todo else held
            if name in held:
                continue
            for n in held + [name]:
                pending.append(version_task.with_options(name=f"version-{n}")
                               .submit(config, str(root), n, wait_for=pending[-1:]))
            held = []
    _wait(pending)
    return results


def _wait(futures: list) -> None:
    """Block until the queued DVC commits/pushes are done; re-raise the first failure."""
    for f in futures:
        f.result()
    futures.clear()


@flow(name="r2f-scheduled-tick")
def tick_flow(params: str = "params.yaml", overrides: dict | None = None) -> dict:
    """One scheduled tick: every pending inbox request through the pipeline, oldest first, each
    from the then-current champion (``schedule.mode: sequential``), or all of them as one
    unlearning (``batch``). A failing request is marked ``failed`` with the reason and the others
    go on; a tick with nothing pending does nothing; a second tick while one runs is refused.
    Every tick then enforces retention (r2f.governance.retention): final requests past
    ``privacy.retention_days`` are crypto-shredded; ``shredded`` lists them."""
    from r2f.config import load_config
    from r2f.governance.inbox import process_pending
    from r2f.governance.retention import enforce

    cfg = load_config(params, dict(overrides or {}))
    res = process_pending(cfg, lambda request, ids: unlearning_flow(
        params, {**(overrides or {}), "pipeline.request": str(request)}, inbox_ids=ids), _say)
    if not res["busy"]:  # a tick that could not take the inbox lock leaves retention to the one that did
        res["shredded"] = [r["request_id"] for r in enforce(cfg, log=_say)]
    return res


def tick_deployment(params: str = "params.yaml", overrides: dict | None = None, cron: str = "0 2 * * *"):
    """The scheduled deployment ``r2f-deletion-requests`` of :func:`tick_flow` (``r2f serve`` serves it)."""
    return tick_flow.to_deployment(name="r2f-deletion-requests", cron=cron,
                                   parameters={"params": params, "overrides": dict(overrides or {})},
                                   description="Process pending deletion requests (r2f inbox).")
