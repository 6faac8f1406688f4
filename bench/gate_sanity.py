"""Gate sanity: the default gate must pass the exact-unlearning model (the retain model) and fail the
untouched target, for every target the project ships and forget01/05/10 (thresholds as configured).

    python bench/gate_sanity.py [--quick] [--targets toy,smollm2-tofu] [--splits forget01,forget05,forget10]
      -> bench/results/gate_sanity.json / .md (the toy target), gate_sanity_<target>.json / .md (others)

Each target is judged in its own world (``TARGETS``: its params file; --params is not used).
One row per (target, split, candidate): passed, every rule's value and threshold, and the model
utility with its nine components. One result per target (each world's models are trained in their
own sessions: a target's rows stay current or stale on their own). Rows already in the JSON from the
same code are kept, so an interrupted run resumes (rows of other code are dropped); evaluations are
cached under the state folder.
"""

from __future__ import annotations

import time
from pathlib import Path

from common import ENGINE, ROOT, overrides_of, parser, resumable, setup, write

TARGETS = {"toy": "params.yaml", "smollm2-tofu": "params-smollm2-tofu.yaml"}  # the world of each target
SPLITS = ("forget01", "forget05", "forget10")
DEPS = (*ENGINE, "r2f/governance/gate.py")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--targets", default="toy", help="comma-separated: " + ", ".join(TARGETS))
    p.add_argument("--splits", default=",".join(SPLITS))
    args = p.parse_args()
    setup()
    from r2f.engine.api import reference_eval
    from r2f.engine.metrics.tofu import MODEL_UTILITY_KEYS
    from r2f.engine.zoo import ensure_models
    from r2f.governance.gate import RULES, sanity

    splits = [s for s in args.splits.split(",") if s]
    for target in [t for t in args.targets.split(",") if t]:
        if target not in TARGETS:
            raise SystemExit(f"--targets: unknown target {target!r}; expected {', '.join(TARGETS)}")
        from r2f.config import load_config

        name = result_name(target)
        rows = resumable(Path(args.out) / f"{name}{'_quick' if args.quick else ''}.json")

        cfg = load_config(ROOT / TARGETS[target], overrides_of(args))
        for split in splits:
            if SPLITS.index(split) > SPLITS.index(cfg.data.world_split):
                print(f"{target}: {split} is not in its world ({cfg.data.world_split}): skipped")
                continue
            if any(r["target"] == target and r["split"] == split for r in rows):
                continue
            t0 = time.perf_counter()
            got = sanity(cfg, split, print)
            roles = ensure_models(cfg, print, splits=(split,)).report()["roles"]
            for r in got:
                ev = reference_eval(cfg, r["candidate"], split)
                meta = roles["target" if r["candidate"] == "target" else f"retain-{split}"]
                r.update({"target": target, "wall_s": round(time.perf_counter() - t0, 1),
                          **{k: ev[k]["value"] for k in MODEL_UTILITY_KEYS},
                          "train_qa": meta.get("train_qa"), "train_epochs": meta.get("epochs"),
                          "train_final_loss": (meta.get("loss_curve") or [None])[-1],
                          "train_wall_s": meta.get("wall_s"), "train_peak_rss_mb": meta.get("peak_rss_mb"),
                          "forget_nll": (meta.get("forget_nll") or {}).get(split)})
            rows = [r for r in rows if not (r["target"] == target and r["split"] == split)] + got
            _write(name, args, rows, cfg, RULES)
            print(f"{target} {split}: " + "; ".join(f"{r['candidate']} {'passes' if r['passed'] else 'fails'}"
                                                   + (f" ({', '.join(r['failed'])})" if r["failed"] else "")
                                                   for r in got), flush=True)


def result_name(target: str) -> str:
    """The toy target's rows in gate_sanity, another target's in gate_sanity_<target>."""
    return "gate_sanity" if target == "toy" else f"gate_sanity_{target}"


def _write(name, args, rows, cfg, rules) -> None:
    ok = [r for r in rows if r["passed"] == (r["candidate"] == "retain")]
    cols = ["target", "split", "candidate", "passed"]
    for rule in rules:
        cols += [rule.name, f"{rule.name}_threshold"]
    notes = [f"Goal: every retain row passes and every target row fails: {len(ok)} of {len(rows)} rows meet it.",
             "Each candidate is judged against the untouched target as champion and as base; thresholds are "
             f"params.yaml's gate ({', '.join(f'{k}={v}' for k, v in cfg.gate.model_dump().items())}).",
             "The retain model of a split is the exact-unlearning reference: trained with the target's recipe "
             "on the target's data without that split's authors."]
    cols += ["failed", "forget_nll", "train_final_loss", "wall_s"]
    write(name, args, rows, cols, notes, {"rules": [r.name for r in rules]},
          deps=DEPS, cfg=cfg)


if __name__ == "__main__":
    main()
