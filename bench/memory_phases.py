"""Where a method's own peak memory comes from (issue #20's cost goal: <= 0.5x NPO's peak): one
deletion per method, each in its own process, with the process's resident memory sampled every 20 ms
and each sample labelled by the engine phase running at that moment.

    python bench/memory_phases.py --params params-smollm2-tofu.yaml [--methods r2f_pc,npo]
      -> bench/results/memory_phases[_<world>].json / .md

The request is selective_dev's (the pretrained world's dev request: authors 28-29, calibration and
covariance items from authors 20-25; the toy world's: authors 180-181), so no evaluation set is read.
Phases are marked by wrapping engine functions from outside (nothing in the engine changes):

* r2f / r2f_pc: ``direction`` (multi-view LoRA gradients and their decoding, r2f_direction),
  ``grams`` (retain activation Grams), ``fisher`` (the output-gradient pass of the K-FAC factors),
  ``inverse`` (their damped inverses), ``calibration`` (the eta search and the applied step),
  ``level`` (the never-seen NLL of the forget level); ``other``: the rest of the method's run.
* npo and the other fine-tuning baselines: ``reference`` (the untouched model's log-probs) and
  ``train`` (the optimisation loop, r2f.engine.unlearn.finetune).

Rows: one per (method, phase) with ``max_rss_mb`` (the largest sample in it), ``above_start_mb``
(that minus the resident memory when the method's run started: the model, libraries and data already
loaded) and ``seconds`` in the phase, plus a ``total`` row with the method's own ``peak_rss_mb``
(VmHWM from the start of its run, as every bench reports it) and ``wall_s``. A memory bench: the
seconds are not idle-core timings (bench/results/selective_dev_* and tofu_* time the methods).
"""

from __future__ import annotations

import functools
import json
import tempfile
import threading
import time
from pathlib import Path

from common import ENGINE, load_cfg, parser, run_rows, setup, world_of, write

DEPS = (*ENGINE, "bench/memory_phases.py", "bench/selective_dev.py")
# (module, function, phase): the wrapped engine functions, looked up in the module that calls them
PHASES = (
    ("r2f.engine.unlearn.r2f", "r2f_direction", "direction"),
    ("r2f.engine.unlearn.r2f", "calibrate_and_apply", "calibration"),
    ("r2f.engine.unlearn.r2f_pc", "retain_transforms", "preconditioner"),
    ("r2f.engine.unlearn.r2f_pc", "answer_nll", "level"),
    ("r2f.engine.unlearn.precondition", "activation_grams", "grams"),
    ("r2f.engine.unlearn.precondition", "output_grad_covariances", "fisher"),
    ("r2f.engine.unlearn.precondition", "_damped_inverse", "inverse"),
    ("r2f.engine.unlearn.npo", "finetune", "train"),
    ("r2f.engine.unlearn.grad_ascent", "finetune", "train"),
    ("r2f.engine.unlearn.grad_diff", "finetune", "train"),
)


class PhaseSampler:
    """Samples VmRSS every ``period`` s in a thread; ``phase`` is the innermost wrapped call running."""

    def __init__(self, period: float = 0.02):
        self.stack, self.samples, self.period, self._stop = ["setup"], [], period, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def rss_mb() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), self.rss_mb(), self.stack[-1]))
            self._stop.wait(self.period)

    def wrap(self, module: str, name: str, phase: str) -> None:
        import importlib

        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            return
        fn = getattr(mod, name)

        @functools.wraps(fn)
        def marked(*a, **k):
            self.stack.append(phase)
            try:
                return fn(*a, **k)
            finally:
                self.stack.pop()

        setattr(mod, name, marked)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def table(self, start_rss: float) -> list[dict]:
        rows: dict = {}
        for i, (t, rss, phase) in enumerate(self.samples):
            dt = self.samples[i + 1][0] - t if i + 1 < len(self.samples) else 0.0
            r = rows.setdefault(phase, {"phase": phase, "max_rss_mb": 0.0, "seconds": 0.0})
            r["max_rss_mb"] = max(r["max_rss_mb"], rss)
            r["seconds"] += dt
        for r in rows.values():
            r.update(max_rss_mb=round(r["max_rss_mb"]), above_start_mb=round(r["max_rss_mb"] - start_rss),
                     seconds=round(r["seconds"], 1))
        return sorted(rows.values(), key=lambda r: -r["max_rss_mb"])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--methods", default="r2f_pc,npo")
    p.add_argument("--one", help="internal: the method to run in this process")
    args = p.parse_args()
    setup()
    if args.one:
        print("RESULT " + json.dumps(_one(args, args.one)), flush=True)
        return
    world = world_of(args.params)
    stem = "memory_phases" + (f"_{world}" if world else "")
    jobs = [({"method": m}, ["--one", m]) for m in args.methods.split(",") if m]
    run_rows(__file__, args, stem + ("_quick" if args.quick else ""), jobs, lambda rows: _write(args, rows, stem))


def _one(args, method: str) -> dict:
    from selective_dev import DEV_FORGET, PT_CALIB, PT_FORGET

    from r2f.engine.api import unlearn_model
    from r2f.engine.data import load_tofu
    from r2f.engine.unlearn import get_method

    cfg = load_cfg(args)
    tofu = load_tofu(cfg.data.tofu_dir)
    pretrained = cfg.models.pretrained is not None
    forget = tofu.authors(PT_FORGET if pretrained else DEV_FORGET)
    calib = tofu.authors(PT_CALIB) if pretrained else None
    sampler = PhaseSampler()
    for mod, name, phase in PHASES:
        sampler.wrap(mod, name, phase)
    start = {}
    cls = type(get_method(method))
    run = cls.run

    def marked_run(self, ctx):  # the method's own run: "other" outside the wrapped phases
        start["rss"] = PhaseSampler.rss_mb()
        sampler.stack[:] = ["other"]
        try:
            return run(self, ctx)
        finally:
            sampler.stack[:] = ["after"]

    cls.run = marked_run
    with sampler, tempfile.TemporaryDirectory(dir=Path(cfg.state_dir)) as tmp:
        kw = {"calib_items": calib} if calib is not None else {"forget_split": "forget10"}
        rep = unlearn_model(cfg, method, out=Path(tmp) / "m", forget_items=forget, nll_report=False, **kw)
    start_rss = start.get("rss", float("nan"))
    phases = [r for r in sampler.table(start_rss) if r["phase"] not in ("setup", "after")]
    return {"phases": phases, "peak_rss_mb": rep["peak_rss_mb"], "peak_scope": rep.get("peak_scope"),
            "start_rss_mb": round(start_rss), "wall_s": rep["wall_s"]}


def _write(args, rows, stem: str) -> None:
    flat = []
    for r in rows:
        if "phase" in r:  # a row of an earlier run of this code, already flat (resume)
            flat.append(r)
            continue
        if "error" in r:
            flat.append({"method": r["method"], "phase": "error", "error": r["error"]})
            continue
        flat.append({"method": r["method"], "phase": "total", "max_rss_mb": r["peak_rss_mb"],
                     "above_start_mb": round(r["peak_rss_mb"] - r["start_rss_mb"]), "seconds": r["wall_s"],
                     "start_rss_mb": r["start_rss_mb"]})
        flat += [{"method": r["method"], **ph} for ph in r["phases"]]
    notes = ["total: the method's own peak (VmHWM from the start of its run) and its wall time; the other rows: "
             "the largest 20 ms sample of VmRSS while that phase ran (a spike shorter than a sample can be missed: "
             "total is exact) and the seconds in it (not idle-core timings).",
             "above_start_mb: above the resident memory when the method's run started (start_rss_mb: the model, "
             "libraries and request data loaded).",
             "request: selective_dev's dev request (no evaluation set is read)."]
    cols = ["method", "phase", "max_rss_mb", "above_start_mb", "seconds", "start_rss_mb"]
    write(stem, args, flat, cols, notes, {"phases": [list(p) for p in PHASES]}, deps=DEPS)


if __name__ == "__main__":
    main()
