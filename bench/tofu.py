"""TOFU benchmark: every unlearning method (and the untouched target) on one forget split, evaluated
with the full TOFU suite plus the paper's metrics; mean and std over seeds (``unlearn.seed``).
Each (method, seed) runs in its own process, so wall time and peak RSS are the method's own.

    python bench/tofu.py --split forget10 [--seeds 3 [--seeded r2f,npo]] [--quick] [--methods r2f,npo,...]
    python bench/tofu.py --params params-smollm2-tofu.yaml --split forget01   # the pretrained world
    python bench/tofu.py ... --methods r2f,npo --keep-journal   # then the rest: resumes those runs

Writes bench/results/tofu_<split>[_quick].json / .md (another world's params file ``params-<world>.yaml``:
``tofu_<world>_<split>``, e.g. ``tofu_smollm2_forget01`` for ``params-smollm2-tofu.yaml``) and a
forget-quality vs model-utility plot (.png).
Every finished (method, seed) run is appended to ``tofu_<split>[_quick].runs.jsonl`` beside them at once;
a rerun of the same code with the same parameters resumes from it (a session that ends mid-table loses
only the run in progress). The journal is tracked by git, not ignored: commit it while a table is
unfinished and a later session on a fresh checkout resumes too: the cached models are retrained there
from the same configuration, and the journal key includes the sha256 of their weights, so runs are
reused only where the retrained models are bit-identical. The file is removed when the table is written
(kept with ``--keep-journal``).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from common import ENGINE, load_cfg, parser, peak_rss_mb, run_child, setup, world_of, write

from r2f.engine.metrics.tofu import MODEL_UTILITY_KEYS  # the nine components of model_utility

QUICK_EVAL_ITEMS = 40
METHODS = ("r2f", "r2f_pc", "r2f_paper", "fullgrad", "lora_sin", "lora_mul", "gradascent", "graddiff", "npo", "retrain")
METRICS = ("forget_quality", "forget_quality_log10", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob",
           "forget_Q_A_ROUGE", "privleak", "extraction_strength", "usr", "gur", "rap", "drift_kl", *MODEL_UTILITY_KEYS)


def one(args, method: str, seed: int) -> None:
    """Child process: unlearn (or not, for ``target``), evaluate, print one RESULT line."""
    import os

    from r2f.engine.api import evaluate_model, reference_eval, unlearn_model
    from r2f.engine.evaluation import summarize

    cfg = load_cfg(args, {**_split_cfg(args), "unlearn.seed": seed})
    # the 1-minute load when the run starts and when its unlearning ends: wall_s is only comparable
    # between runs on idle cores (load below about 2 on this 2-core machine)
    row = {"method": method, "seed": seed, "eta": None, "wall_s": 0.0, "load_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(dir=Path(cfg.state_dir)) as tmp:
        path = None
        if method != "target":
            # the before/after answer NLLs of the report are skipped: the evaluation below measures more
            rep = unlearn_model(cfg, method, out=Path(tmp) / "model", nll_report=False)
            row.update(eta=rep["eta"], wall_s=rep["wall_s"], forget_calib_nll=rep["info"].get("forget_nll"),
                       peak_rss_mb=rep["peak_rss_mb"])  # the method's own (model loaded included)
            path = Path(tmp) / "model"
        else:
            row["peak_rss_mb"] = peak_rss_mb()  # loading only
        row["load_end"] = round(os.getloadavg()[0], 2)
        if method == "retrain":
            # retrain loads the cached retain model: its evaluation is the retain reference evaluation
            # (same model, configuration and seed; its GUR against the target's is already added)
            summary = summarize(reference_eval(cfg, "retain", args.split))
        else:
            ev = evaluate_model(cfg, path, args.split)
            summary = ev["summary"]
            # where the evaluation's time went (the phases of r2f.engine.evaluation): kept in the run
            row.update(eval_s=ev["timing"]["eval_s"], eval_phase_s=ev["timing"]["phase_s"])
    row.update({k: summary.get(k) for k in METRICS})
    print("RESULT " + json.dumps(row, default=str))


def _split_cfg(args) -> dict:
    # --quick models learn only the benchmarked split's authors (fewer items to train on) and score
    # at most QUICK_EVAL_ITEMS retain / real-author / world-fact items
    if args.quick:
        return {"data.forget_split": args.split, "data.world_split": args.split, "eval.max_items": QUICK_EVAL_ITEMS}
    return {"data.forget_split": args.split}


def run_one(args, method: str, seed: int) -> dict:
    res = run_child(Path(__file__), args, ["--one", method, "--seed", str(seed), "--split", args.split])
    return {"method": method, "seed": seed, **res}


def aggregate(runs: list[dict], method: str) -> dict:
    ok = [r for r in runs if r["method"] == method and "error" not in r]
    row: dict = {"method": method, "seeds": len(ok)}
    if not ok:
        row["error"] = next(r["error"] for r in runs if r["method"] == method)
        return row
    for k in (*METRICS, "wall_s", "peak_rss_mb", "eta", "eval_s"):
        vals = [r[k] for r in ok if isinstance(r.get(k), (int, float))]
        if vals:
            row[k] = statistics.fmean(vals)
            row[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return row


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        if "error" in r or r.get("forget_quality_log10") is None and not r.get("forget_quality"):
            continue
        fq = r.get("forget_quality") or 10 ** r["forget_quality_log10"]
        ax.scatter(r["model_utility"], max(fq, 1e-300), s=40)
        ax.annotate(r["method"], (r["model_utility"], max(fq, 1e-300)), textcoords="offset points", xytext=(4, 4))
    ax.set_yscale("log")
    ax.axhline(0.05, ls=":", c="grey")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value vs retain model, log)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--split", default="forget10", choices=["forget01", "forget05", "forget10"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--seeded", default=None,
                   help="comma-separated methods that get --seeds seeds (default: every method); the others get 1")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--keep-journal", action="store_true",
                   help="keep the run journal after writing the table, so a later run with more methods resumes "
                        "from it (e.g. the seeded methods first, the slow baselines after)")
    p.add_argument("--one", help=argparse_hidden())
    p.add_argument("--seed", type=int, default=0, help=argparse_hidden())
    args = p.parse_args()
    setup()
    if args.one:
        return one(args, args.one, args.seed)
    from r2f.engine.api import ensure_decoder, reference_eval, train_zoo

    cfg = load_cfg(args, _split_cfg(args))
    train_zoo(cfg, print)
    ensure_decoder(cfg, print)
    for role in ("retain", "target"):
        reference_eval(cfg, role, args.split, print)  # cached references, shared by the children
    # the untouched target is always the first row; naming it in --methods too must not run it twice
    methods = list(dict.fromkeys(["target", *(m for m in args.methods.split(",") if m)]))
    world = world_of(args.params)
    stem = f"tofu_{world + '_' if world else ''}{args.split}"
    journal = Path(args.out) / f"{stem}{'_quick' if args.quick else ''}.runs.jsonl"
    journal.parent.mkdir(parents=True, exist_ok=True)  # a fresh --out folder (the journal is its first file)
    key = _run_key(cfg, args.split)
    done = _journal(journal, key)
    seeded = set(args.seeded.split(",")) if args.seeded else set(methods)

    def seeds_of(m: str) -> int:
        return 1 if m in ("target", "retrain") or m not in seeded else args.seeds

    runs = []
    for seed in range(args.seeds):  # every method's first seed before any method's second
        for m in methods:
            if seed >= seeds_of(m):
                continue
            if (m, seed) in done:
                runs.append(done[(m, seed)])
                continue
            runs.append(run_one(args, m, seed))
            print({k: runs[-1].get(k) for k in ("method", "seed", "forget_quality", "model_utility", "wall_s")},
                  flush=True)
            if "error" not in runs[-1]:
                with journal.open("a") as fh:
                    fh.write(json.dumps({"key": key, **runs[-1]}, default=str) + "\n")
    rows = [aggregate(runs, m) for m in methods]
    npo = next((r for r in rows if r["method"] == "npo" and "error" not in r), None)
    for r in rows:
        if npo and r.get("wall_s") and npo.get("wall_s"):
            r["wall_vs_npo"] = r["wall_s"] / npo["wall_s"]
    target = next(r for r in rows if r["method"] == "target")
    for r in rows:
        if "model_utility" in r and target.get("model_utility"):
            r["mu_vs_target"] = r["model_utility"] / target["model_utility"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, out / f"{stem}{'_quick' if args.quick else ''}.png", f"TOFU {args.split}: forget quality vs utility")
    notes = [
        f"split {args.split}; seeds {args.seeds}"
        + (f" for {', '.join(sorted(seeded & set(methods)))}, 1 for the others" if args.seeded else "")
        + " (unlearn.seed: batch order, LoRA init, relearning attack; "
        "the models themselves are fixed); target and retrain rows are deterministic (1 run).",
        "forget_quality: KS p-value of forget truth ratios vs the retain model (>= 0.05: indistinguishable); "
        "model_utility: harmonic mean of 9 retain/real-authors/world-facts components.",
        "usr/gur/rap/drift_kl: the paper's metrics (docs/evaluation.md). wall_s and peak_rss_mb: the unlearning "
        "step alone in its own process (evaluation excluded); wall_vs_npo = wall_s / NPO's; eval_s: the "
        "row's evaluation (its phases in runs[].eval_phase_s; retrain and target rows reuse the cached references).",
    ]
    notes.append("model_utility is a harmonic mean: on a small model one near-zero component (real-author ROUGE) "
                 "can zero it; GUR is the steadier utility signal. peak_rss_mb: the method's own, from the start of "
                 "its run (the model loaded included, the set-up and the evaluation not).")
    if cfg.models.pretrained is not None:
        notes.append(f"world: {Path(args.params).name} (target {cfg.models.pretrained.name} fine-tuned on TOFU, "
                     "docs/worlds.md).")
    if cfg.eval.max_items and not args.quick:
        notes.append(f"eval.max_items {cfg.eval.max_items}: the first {cfg.eval.max_items} retain / real-author / "
                     "world-fact items for every row (the reference evaluations too; docs/evaluation.md).")
    if cfg.eval.precision != "fp32":
        notes.append(f"eval.precision {cfg.eval.precision}: teacher-forced scoring and the relearning attack under "
                     "bfloat16 autocast for every row and reference; generation and drift fp32 "
                     "(bench/results/eval_precision.md).")
    notes.append("the retrain row's evaluation is the cached retain reference (the same model and configuration).")
    if args.quick:
        notes.append(f"--quick: small models trained on this split's authors only; retain / real-authors / "
                     f"world-facts capped at {QUICK_EVAL_ITEMS} items each: not comparable to full runs.")
    cols = ["method", "forget_quality", "model_utility", "mu_vs_target", "forget_truth_ratio", "forget_Q_A_Prob",
            "forget_Q_A_ROUGE", "privleak", "extraction_strength", "usr", "gur", "rap", "drift_kl", "eta",
            "wall_s", "wall_vs_npo", "peak_rss_mb", "eval_s", "seeds"]
    cols += list(MODEL_UTILITY_KEYS)
    write(stem, args, rows, cols, notes, {"split": args.split, "seeds": args.seeds, "seeded": sorted(seeded), "runs": runs},
          deps=ENGINE, cfg=cfg)
    if not args.keep_journal:
        journal.unlink(missing_ok=True)


# What a journalled run depends on: the engine's code and the settings it reads. The governance floor
# (its code, its config sections, its part of params.yaml) can change while a table is unfinished
# without invalidating it, so a table may take several sessions while that work lands.
JOURNAL_CODE = ("r2f/engine", "r2f/config/_base.py", "r2f/config/ml.py", "r2f/config/unlearn.py", "r2f/__init__.py",
                "r2f/errors.py", "r2f/atomic.py", "r2f/digest.py", "r2f/progress.py", "bench/common.py", "bench/tofu.py")
JOURNAL_SKIP = ("state_dir", "allowed_roots", "validation", "tracking", "versioning", "gate", "pipeline", "schedule",
                "scale", "privacy")


def _run_key(cfg, split: str) -> str:
    """What a journalled run must share with this one to be reused: the engine code measured, the
    parameters the engine reads (:data:`JOURNAL_CODE`, everything but :data:`JOURNAL_SKIP`) and the
    weights of the models it starts from (target, proxy, retain model of ``split``: a session on a
    fresh machine retrains them, and only a bit-identical retrain reuses the earlier runs)."""
    import hashlib

    from provenance import code_sha256

    from r2f.digest import weights_sha256
    from r2f.engine.zoo import ensure_models

    params = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in JOURNAL_SKIP}
    models = ensure_models(cfg, lambda _m: None, splits=(split,))
    params["_weights"] = {role: weights_sha256(models.path(role, split if role == "retain" else None))
                          for role in ("target", "proxy", "retain")}
    blob = json.dumps(params, sort_keys=True).encode()
    return code_sha256(JOURNAL_CODE) + hashlib.sha256(blob).hexdigest()


def _journal(path: Path, key: str) -> dict:
    """Finished runs of an interrupted earlier run with this :func:`_run_key` (the same code, parameters
    and model weights): (method, seed) -> run."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        run = json.loads(line)
        if run.pop("key", None) == key:
            out[(run["method"], run["seed"])] = run
    if out:
        print(f"resuming: {len(out)} finished runs from {path.name}")
    return out


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
