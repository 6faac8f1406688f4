"""Scale-out (issue #9): the default request's multi-view R2F gradient step and its evaluation, in
process and as Prefect tasks on a DaskTaskRunner over a LocalCluster of 1 and 2 workers.

Same code paths as the flow with ``scale.executor: dask`` (flows/distributed.py): the gradient step
is ``r2f_direction`` with a ``DaskMapper`` (shards of whole batches, each loading a snapshot of the
weights), the evaluation is ``evaluation.evaluate`` with a ``DaskMapper`` (every set cut into one
shard per worker, the paper metrics as their own shards). Per configuration: the first call (cold:
the workers import torch and load the model) and ``--repeats`` more (warm). Speed-ups are against
1 worker with the same total threads (the fair baseline: same cores) and against the in-process
run, all measured in this run; each Dask result is checked against the in-process one.
Writes bench/results/scale.json and .md.
"""

from __future__ import annotations

import statistics
import time
from contextlib import ExitStack

from common import PIPELINE, load_cfg, parser, setup, write

CONFIGS = (  # (label, workers, threads per worker); None workers = in process
    ("in-process", None, None), ("dask 1x2", 1, 2), ("dask 1x1", 1, 1), ("dask 2x1", 2, 1))


def _timed(fn, repeats: int) -> tuple[float, list[float], object]:
    t0 = time.perf_counter()
    out = fn()
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        warm.append(time.perf_counter() - t0)
    return cold, warm, out


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    setup()
    from prefect import flow

    @flow(name="r2f-bench-scale")
    def bench_flow() -> tuple[list[dict], dict]:
        return run(args)

    rows, meta = bench_flow()
    notes = [
        "wall_s_cold: first call on a fresh cluster (worker imports + model load); wall_s_warm: median of "
        f"{args.repeats} more calls (the gradient step snapshots the weights and the workers load them on "
        "every call, as a flow run does).",
        "speedup_vs_1worker: same-step warm time of 'dask 1x2' (1 worker, 2 torch threads: all cores) over "
        "this row's; speedup_vs_1x1: of 'dask 1x1' (1 worker, 1 thread) over this row's; speedup_vs_inprocess: "
        "the in-process warm time (torch's default threads) over this row's.",
        "8 empty shards: a map of 8 payloads that do nothing (Prefect task runs on the DaskTaskRunner + Dask "
        "round trips): the orchestration cost a step pays on top of its compute.",
        "max_rel_diff: largest |dask - in-process| / |in-process| over the decoded direction's modules "
        "(gradient) or the summary metrics (evaluation).",
        f"machine: {meta['cpus']} CPU cores; request {meta['request']} ({meta['items']} rows x "
        f"{meta['views']} views = {meta['sequences']} sequences in {meta['batches']} batches).",
    ]
    cols = ["step", "config", "workers", "threads_per_worker", "shards", "wall_s_cold", "wall_s_warm",
            "speedup_vs_1worker", "speedup_vs_1x1", "speedup_vs_inprocess", "max_rel_diff"]
    write("scale", args, rows, cols, notes, meta, deps=PIPELINE)


def run(args) -> tuple[list[dict], dict]:
    import os

    import torch

    from flows.distributed import DaskMapper, dask_cluster
    from r2f.engine.api import calibration_items, ensure_decoder, reference_eval
    from r2f.engine.data import load_tofu
    from r2f.engine.decoder import LearnedDecoder
    from r2f.engine.evaluation import evaluate, to_json
    from r2f.engine.models.io import load_model
    from r2f.engine.onepass import group_batches
    from r2f.engine.unlearn.base import UnlearnContext, views_split
    from r2f.engine.unlearn.r2f import r2f_direction
    from r2f.engine.zoo import ensure_models
    from r2f.governance.requests import eval_split, read_request, resolve
    from r2f.governance.stage_io import request_rows

    cfg = load_cfg(args)
    log = print
    tofu = load_tofu(cfg.data.tofu_dir)
    req = read_request(cfg.pipeline.request)
    forget = resolve(req, tofu)
    split = eval_split(forget)
    models = ensure_models(cfg, log, splits=(split,))
    decoder = LearnedDecoder.load(ensure_decoder(cfg, log)["decoder_dir"])
    retain_eval = reference_eval(cfg, "retain", split, log)
    target_path = models.path("target")
    model, tok = load_model(target_path)
    calib = calibration_items(cfg, tofu)
    grad_views, _ = views_split(forget, cfg.paraphrase)
    batches, seqs = group_batches(tok, [[v] for v in grad_views], cfg.models.max_len, cfg.unlearn.objective,
                                  tofu.idontknow(), chunk=cfg.unlearn.micro_batch)
    forget_ids = request_rows(cfg, {"item_ids": [q.id for q in forget], "eval_split": split})

    def grad(mapper):
        ctx = UnlearnContext(model, tok, cfg, forget, calib, tofu.idontknow(), decoder, None, mapper=mapper)
        return r2f_direction(ctx)

    def ev(mapper):
        return evaluate(model, tok, cfg, split, retain_eval=retain_eval, original=None, forget_ids=forget_ids,
                        mapper=mapper, model_path=target_path)

    def empty(mapper):  # the orchestration cost alone: 8 shards that do nothing
        return mapper.map(_identity, list(range(8)), "empty")

    rows, ref = [], {}
    for label, workers, threads in CONFIGS:
        with ExitStack() as stack:  # a LocalCluster per configuration, closed after its rows
            mapper, thr = None, torch.get_num_threads()
            if workers is not None:
                scale = cfg.scale.model_copy(update={"workers": workers, "threads_per_worker": threads,
                                                     "address": None})
                address, n = stack.enter_context(dask_cluster(scale, log))
                mapper, thr = DaskMapper(address, n, threads), threads
            steps = [("gradient", grad), ("evaluation", ev)] + ([("8 empty shards", empty)] if mapper else [])
            for step, fn in steps:
                cold, warm, out = _timed(lambda fn=fn, mapper=mapper: fn(mapper), args.repeats)
                row = {"step": step, "config": label, "workers": workers or 0, "threads_per_worker": thr,
                       "wall_s_cold": round(cold, 2), "wall_s_warm": round(statistics.median(warm), 2)}
                if step == "gradient":
                    dense = {k: v.dense() for k, v in out.items()}
                    row["shards"] = min(cfg.scale.shards or workers, len(batches)) if workers else 1
                elif step == "evaluation":
                    dense = to_json(out)[1]
                    row["shards"] = out["_meta"].extra["shards"]
                else:
                    row["shards"] = len(out)
                if step != "8 empty shards":
                    ref.setdefault(step, dense)  # the in-process run comes first
                    row.update(warm_all=[round(w, 2) for w in warm], max_rel_diff=_max_rel(ref[step], dense, step))
                rows.append(row)
                print(row, flush=True)
    for r in rows:
        if r["step"] == "8 empty shards":
            continue
        base = next(x for x in rows if x["step"] == r["step"] and x["config"] == "dask 1x2")
        one = next(x for x in rows if x["step"] == r["step"] and x["config"] == "dask 1x1")
        inproc = next(x for x in rows if x["step"] == r["step"] and x["config"] == "in-process")
        r["speedup_vs_1worker"] = round(base["wall_s_warm"] / r["wall_s_warm"], 3)
        r["speedup_vs_1x1"] = round(one["wall_s_warm"] / r["wall_s_warm"], 3)
        r["speedup_vs_inprocess"] = round(inproc["wall_s_warm"] / r["wall_s_warm"], 3)
    meta = {"cpus": len(os.sched_getaffinity(0)), "request": req.request_id, "items": len(forget),
            "views": cfg.paraphrase.views, "sequences": len(seqs), "batches": len(batches), "split": split,
            "model_params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    return rows, meta


def _identity(x):
    return x


def _max_rel(ref: dict, got: dict, step: str) -> float:
    if step == "gradient":
        return float(max(((got[k] - ref[k]).norm() / ref[k].norm()).item() for k in ref))
    worst = 0.0
    for k, v in ref.items():
        if isinstance(v, (int, float)) and isinstance(got.get(k), (int, float)):
            worst = max(worst, abs(got[k] - v) / max(abs(v), 1e-12))
    return worst


if __name__ == "__main__":
    main()
