"""Sequential deletions: 5 deletion requests (forget01-sized TOFU author pairs) submitted to the
inbox and processed by one scheduled tick, each unlearned from the champion the previous one left.

    python bench/sequential.py [--quick] [--requests 5] [--default-gate] [--set gate.min_forget_quality=0 ...]

The real pipeline runs (inbox, Prefect tick flow, GX, DVC, MLflow registry) in a throwaway project
that borrows the main project's model / decoder / reference caches. After the tick, every model
version the tick produced is evaluated once on forget05 (the 10 authors 190-199, which contain every
request's rows); each request's forget metrics are read off that evaluation on its own rows
(forget quality against the retain-forget05 model on the same rows).

Columns: ``request`` (in order), ``state``, ``version``, ``model_utility``, ``forget_quality`` /
``forget_Q_A_Prob`` / ``usr`` on the request's own rows right after it, and
``earlier_still_forgotten``: true when, for every earlier request, its rows' answer probability
has not risen by more than 10 % over its value right after that request and its USR has not
dropped by more than 0.05 (no "unforgetting"), and its forget quality still meets the *default*
gate's ``min_forget_quality`` (params.yaml, never the relaxed bench gate).
Writes bench/results/sequential[_<world>][_quick].json / .md / .png; ``--params params-smollm2-tofu.yaml``
runs it on the pretrained world (its own world split, forget05, which holds every pair).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from common import PIPELINE, overrides_of, parser, peak_rss_mb, setup, world_of, write

PAIRS = ((198, 199), (196, 197), (194, 195), (192, 193), (190, 191))
EVAL_SPLIT = "forget05"
PROB_SLACK, USR_SLACK = 1.10, 0.05
# the default gate rejects R2F on forget quality (docs/pipeline.md), and a rejected request leaves
# the champion where it was: nothing would be sequential. The bench gates on utility only, unless
# --default-gate. "Still forgotten" is always judged by the default gate's forget-quality threshold.
BENCH_GATE = {"gate.min_forget_quality": 0.0, "gate.min_usr": 0.0, "gate.max_abs_privleak": 1000.0,
              "gate.min_utility_ratio": 0.95}


def _request(root: Path, k: int, pair: tuple[int, int]) -> Path:
    p = root / f"seq-{k}.yaml"
    p.write_text(f"request_id: seq-{k}\nsubject: TOFU authors {pair[0]} and {pair[1]}\n"
                 f"selectors: {{authors: [{pair[0]}, {pair[1]}]}}\nrequester: bench/sequential.py\n"
                 f"legal_basis: benchmark\ncreated_at: 2026-11-29T10:0{k}:00Z\n")
    return p


def _per_request(ev: dict, ref: dict, ids: list[str]) -> dict:
    from r2f.engine.evaluation import reference_on
    from r2f.engine.metrics.tofu import forget_quality

    tr = ev["forget_truth_ratio"]["per_item"]
    ref_tr, _ = reference_on(ref, ids)
    fq = forget_quality([tr[i] for i in ids], ref_tr)
    return {"forget_quality": fq.value, "forget_quality_log10": fq.value_log10,
            "forget_Q_A_Prob": statistics.fmean(ev["forget_Q_A_Prob"]["per_item"][i] for i in ids),
            "usr": statistics.fmean(ev["usr"]["per_item"][i] for i in ids)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--requests", type=int, default=len(PAIRS))
    p.add_argument("--default-gate", action="store_true", help="gate every request with params.yaml's gate")
    args = p.parse_args()
    setup()
    from pipeline import temp_project  # bench/pipeline.py

    from r2f.config import load_config as _load

    base = _load(args.params, overrides_of(args))
    hold_fq = base.gate.min_forget_quality
    gate = {} if args.default_gate else BENCH_GATE
    # the toy world is trained for forget10 here (its authors 180-199 hold every pair); a pretrained
    # world keeps the split it was fine-tuned on (params-smollm2-tofu.yaml: forget05, authors 190-199),
    # so its cached target is the one the bench starts from
    world = {} if base.models.pretrained is not None else {"data.world_split": "forget10"}
    if world == {} and base.data.world_split not in ("forget05", "forget10"):
        raise SystemExit(f"{args.params}: data.world_split {base.data.world_split} does not hold the request "
                         f"authors {PAIRS[0][0]}-{PAIRS[-1][1]}; use forget05 or forget10")
    overrides = overrides_of(args, {**world, **gate})
    stem = "sequential" + (f"_{world_of(args.params)}" if world_of(args.params) else "")
    pairs = PAIRS[:args.requests]
    with temp_project(overrides) as proj:
        from flows.unlearning import tick_flow
        from r2f.config import load_config
        from r2f.engine.api import evaluate_model, reference_eval
        from r2f.engine.data import load_tofu
        from r2f.governance.inbox import inbox
        from r2f.governance.tracking_setup import make_tracker

        cfg = load_config(proj / "params.yaml")
        tofu = load_tofu(cfg.data.tofu_dir)
        ib = inbox(cfg)
        for k, pair in enumerate(pairs, 1):
            ib.submit(_request(proj, k, pair), tofu)
        t0 = time.perf_counter()
        tick_flow(str(proj / "params.yaml"), {})
        tick_s = time.perf_counter() - t0
        ref = reference_eval(cfg, "retain", EVAL_SPLIT)
        tracker = make_tracker(cfg)
        rows, first = [], {}
        history: list[dict] = []
        for k, pair in enumerate(pairs, 1):
            rec = ib.get(f"seq-{k}")
            version = rec.result.get("model_version")
            row = {"request": rec.request_id, "authors": list(pair), "state": rec.state, "version": version,
                   "champion_after": rec.result.get("champion_version")}
            champ = row["champion_after"]
            if champ is None:
                rows.append({**row, "error": (rec.history[-1].get("reason") or "")[:300]})
                continue
            with tempfile.TemporaryDirectory(dir=proj / ".r2f") as dl:
                path = tracker.download_model(cfg.tracking.target_model_name, int(champ), dl)
                ev = evaluate_model(cfg, path, EVAL_SPLIT, out=Path(dl) / "eval")
                full = json.loads((Path(dl) / "eval/TOFU_EVAL.json").read_text())
            now = {j: _per_request(full, ref, [q.id for q in tofu.authors(list(pairs[j - 1]))])
                   for j in range(1, k + 1)}
            first[k] = now[k]
            held = {}
            for j in range(1, k):
                a, b = first[j], now[j]
                held[f"seq-{j}"] = bool(b["forget_Q_A_Prob"] <= a["forget_Q_A_Prob"] * PROB_SLACK + 1e-6
                                        and b["usr"] >= a["usr"] - USR_SLACK
                                        and (b["forget_quality"] or 0) >= hold_fq)
            history.append({"after": rec.request_id, "per_request": now})
            row.update({"model_utility": ev["summary"]["model_utility"], **now[k],
                        "earlier_still_forgotten": all(held.values()) if held else None,
                        "earlier": held, "wall_s": rec.result.get("wall_s")})
            rows.append(row)
    notes = [
        f"{len(pairs)} requests (TOFU author pairs {', '.join(f'{a}-{b}' for a, b in pairs)}) submitted together "
        f"and processed by one scheduled tick (schedule.mode sequential), each from the champion the previous "
        f"one left; tick wall time {tick_s:.0f} s.",
        ("Gate: the default (params.yaml)." if args.default_gate else
         "Gate for this bench: " + ", ".join(f"{k.split('.')[1]}={v}" for k, v in BENCH_GATE.items()) +
         " (utility only: the default gate rejects R2F on forget quality, and a rejected request leaves the "
         "champion unchanged, so nothing would be sequential; --default-gate uses params.yaml's gate)."),
        f"Metrics per request on its own rows, from one {EVAL_SPLIT} evaluation of the champion after it "
        "(forget quality vs the retain-forget05 model on the same rows). earlier_still_forgotten: every earlier "
        f"request's answer probability <= {PROB_SLACK:.2f}x its value right after it, USR >= its value - {USR_SLACK}, "
        f"and forget quality >= {hold_fq} (the default gate's min_forget_quality).",
    ]
    cols = ["request", "state", "version", "model_utility", "forget_quality", "forget_Q_A_Prob", "usr",
            "earlier_still_forgotten"]
    out = write(stem, args, rows, cols, notes,
                {"tick_s": round(tick_s, 1), "overrides": overrides, "history": history,
                 "peak_rss_mb": peak_rss_mb()},
                deps=[*PIPELINE, "bench/pipeline.py", "tests/reliability_lib.py"], cfg=cfg)
    _plot(history, rows, out.with_suffix(".png"))


def _plot(history: list[dict], rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [h["after"] for h in history]
    names = sorted({j for h in history for j in h["per_request"]})
    for j in names:
        xs = [i for i, h in enumerate(history) if j in h["per_request"]]
        ax1.plot([steps[i] for i in xs], [history[i]["per_request"][j]["forget_Q_A_Prob"] for i in xs],
                 marker="o", label=f"rows of seq-{j}")
    ax1.set_ylabel("forget answer probability (lower = forgotten)")
    ax1.set_xlabel("after request")
    ax1.legend(fontsize=7)
    ok = [r for r in rows if r.get("model_utility") is not None]
    ax2.plot([r["request"] for r in ok], [r["model_utility"] for r in ok], marker="o")
    ax2.set_ylabel("model_utility")
    ax2.set_xlabel("after request")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
