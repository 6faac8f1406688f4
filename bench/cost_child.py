"""The cost bench's child: one (model, method, views, items) run, timed, with its peak RSS, tensor memory and
FLOPs (bench/cost.py starts it as ``cost.py --one METHOD``)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_cfg  # noqa: E402
from cost_models import extra_for, model_path  # noqa: E402


class LiveTensors:
    """Peak bytes of tensor storages allocated while active and alive at the same time (weights
    and buffers excluded: every method holds them), via a ``TorchDispatchMode`` and weak
    references to the storages. (torch's MemTracker needs every parameter to require grad, which
    frozen-weight methods do not.)"""

    def __init__(self, model) -> None:
        self.skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        self.cur = self.peak = 0
        self.live: dict = {}

    def __enter__(self):
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                        st = t.untyped_storage()
                        key = st.data_ptr()
                        if key and key not in tracker.skip and key not in tracker.live:
                            tracker.live[key] = st.nbytes()
                            tracker.cur += st.nbytes()
                            tracker.peak = max(tracker.peak, tracker.cur)
                            weakref.finalize(st, tracker.free, key)
                return out

        self.mode = Mode()
        self.mode.__enter__()
        return self

    def free(self, key) -> None:
        self.cur -= self.live.pop(key, 0)

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)


# -- child: one (model, method, views, items) ------------------------------------------------------
def one(args) -> None:
    import torch

    from r2f.engine.data import load_tofu
    from r2f.engine.models.io import load_model
    from r2f.engine.models.memory import peak_rss_mb, reset_peak_rss
    from r2f.engine.unlearn import UnlearnContext, get_method

    torch.set_num_threads(2)
    cfg = load_cfg(args, {**extra_for(args.model, args.views, args.eta, args.micro_batch),
                          **({"unlearn.activation_budget_mb": None if args.budget == "off" else float(args.budget)}
                             if args.budget else {})})
    path = model_path(cfg, args.model)
    tofu = load_tofu(cfg.data.tofu_dir)
    forget = tofu.split("forget10")[:args.items]
    retain = tofu.authors(range(20, 24))
    method = get_method(args.one)

    def ctx(c=cfg):
        model, tok = load_model(path)
        if args.own_logits:  # the baseline: score from the model's own [B, P, vocab] logits (head's fallback)
            from r2f.engine.models import head

            setattr(model, head._PROBE_ATTR, False)
        return UnlearnContext(model, tok, c, forget, retain, tofu.idontknow(), "analytic")

    walls, direction, info, peaks = [], [], {}, []
    n_params = None
    rss0 = None
    for _ in range(args.repeats):
        c = ctx()
        n_params = sum(p.numel() for p in c.model.parameters())
        reset_peak_rss()  # after each load: the peak is the method's (loaded model and libraries included)
        rss0 = rss0 or peak_rss_mb()  # the loaded model and libraries: every method holds them
        t0 = time.perf_counter()
        res = method.run(c)
        walls.append(time.perf_counter() - t0)
        peaks.append(peak_rss_mb())
        direction.append(res.info.get("direction_s"))
        info = {"eta": res.eta, **{k: res.info[k] for k in ("activation_kb_per_token", "micro_batch_used")
                                    if k in res.info}}
        del c, res
    peak = max(peaks)
    row = {"model": args.model, "method": args.one, "views": args.views, "items": args.items,
           "own_logits": bool(args.own_logits), "logit_budget": None if args.own_logits else _budget(),
           "budget_mb": cfg.unlearn.activation_budget_mb,
           "micro_batch": args.micro_batch or cfg.unlearn.micro_batch,
           "params_m": round(n_params / 1e6, 1), "repeats": args.repeats,
           "wall_s_median": statistics.median(walls), "wall_s_min": min(walls), "wall_s_max": max(walls),
           "direction_s_median": statistics.median(direction) if None not in direction else None,
           "peak_rss_mb": peak, "base_rss_mb": rss0, **info}
    if not args.no_counters:
        from torch.utils.flop_counter import FlopCounterMode

        # FLOPs and tensor memory of the step itself: eta fixed to the one just calibrated, so the
        # calibration trials (forward passes, the same grid for every method) are not counted
        fixed = cfg
        if info.get("eta"):
            eta = cfg.unlearn.eta.model_copy(update={"value": info["eta"]})
            fixed = cfg.model_copy(update={"unlearn": cfg.unlearn.model_copy(update={"eta": eta})})
        c = ctx(fixed)
        with FlopCounterMode(display=False) as fc:
            method.run(c)
        row["flops_step"] = int(fc.get_total_flops())
        c = ctx(fixed)
        with LiveTensors(c.model) as lt:
            method.run(c)
        row["peak_tensor_mb"] = round(lt.peak / 2**20, 1)
        del c
    print("RESULT " + json.dumps(row, default=str))


def _budget() -> int:
    from r2f.engine.models import head

    return head.LOGIT_BUDGET
