"""Shared by the single-direction methods: calibrate the step size eta with forward passes only,
then apply ``W <- W - eta * ||W|| * D / ||D||`` module by module, refusing non-finite updates.

eta is relative: the update's Frobenius norm over all adapted modules is ``eta`` times theirs.
Calibration: for each eta in the grid (ascending), the forget NLL on *held-out views* (paraphrases
not used for the gradient) and the NLL on calibration retain items are measured; the largest eta
whose retain NLL stays within ``(1 + retain_budget)`` of the original is chosen.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..grads import target_modules
from ..models import collate, encode_qa, token_nll
from ..paraphrase import make_all_views
from .base import UnlearnContext, UnlearnError

if TYPE_CHECKING:
    import torch


def views_split(items, cfg):
    """(gradient views, held-out views): N views for the gradient, 2 more held out for calibration."""
    from ..paraphrase import Views

    n = cfg.paraphrase.views
    allv = make_all_views(items, n + 2, cfg.paraphrase)
    grad = [Views(v.item_id, v.questions[:n], v.answer, v.repeated) for v in allv]
    held = [Views(v.item_id, v.questions[n:], v.answer, v.repeated) for v in allv]
    return grad, held


def _nll(model, batches) -> float:
    import torch

    with torch.inference_mode():
        vals = torch.cat([token_nll(model, b) for b in batches])
    return float(vals.mean())


class LowRank:
    """A module's update kept as factors ``U @ V`` (out x k, k x in): R2F's decoded directions are
    rank r per item, so the request's update never needs a dense gradient-sized tensor per module
    except one at a time while it is applied."""

    def __init__(self) -> None:
        self.us: list = []
        self.vs: list = []

    def add(self, weight: float, u: "torch.Tensor", v: "torch.Tensor") -> None:
        self.us.append(weight * u)
        self.vs.append(v)
        if len(self.us) > 1:  # keep one concatenated pair: O(k) memory, no list of small tensors
            import torch

            self.us, self.vs = [torch.cat(self.us, 1)], [torch.cat(self.vs, 0)]

    def dense(self) -> "torch.Tensor":
        return self.us[0] @ self.vs[0]

    def sq_norm(self) -> float:
        """||U V||_F^2 = sum((U^T U) * (V V^T)), without forming U V."""
        u, v = self.us[0].double(), self.vs[0].double()
        return float(((u.T @ u) * (v @ v.T)).sum())

    def finite(self) -> bool:
        import torch

        return bool(torch.isfinite(self.us[0]).all() and torch.isfinite(self.vs[0]).all())


def _dense(d) -> "torch.Tensor":
    return d.dense() if isinstance(d, LowRank) else d


def _sq_norm(d) -> float:
    return d.sq_norm() if isinstance(d, LowRank) else float(d.double().pow(2).sum())


def check_finite(direction: dict) -> None:
    import torch

    for name, d in direction.items():
        if isinstance(d, LowRank) and not d.us:
            raise UnlearnError(f"update for module {name} is empty: refused, model left unchanged")
        if not (d.finite() if isinstance(d, LowRank) else torch.isfinite(d).all()):
            raise UnlearnError(f"update for module {name} contains NaN/Inf: refused, model left unchanged")


def calibrate_and_apply(ctx: UnlearnContext, direction: dict, base_retain: float | None = None,
                        over_budget_fallback: bool = True, budget: float | None = None) -> tuple[float, dict]:
    """Choose eta (or use the configured one), apply the update, return (eta, calibration info).

    ``base_retain``: the retain NLL the budget is measured from (default: the current model's);
    multi-step R2F passes the original model's so the budget holds for all steps together.
    ``over_budget_fallback`` False: when no eta keeps the budget, apply nothing and return eta 0.
    ``budget``: the retain budget for this call (default ``unlearn.eta.retain_budget``)."""
    import torch

    check_finite(direction)
    cfg, model, tok = ctx.cfg, ctx.model, ctx.tokenizer
    mods = dict(model.named_modules())
    names = [i.name for i in target_modules(model, cfg.lora.target_modules)]
    missing = set(direction) - set(names)
    if missing:
        raise UnlearnError(f"update names modules the model does not have: {sorted(missing)[:3]}")
    w_norm = math.sqrt(sum(float(mods[n].weight.detach().double().pow(2).sum()) for n in direction))
    d_norm = math.sqrt(sum(_sq_norm(d) for d in direction.values()))
    if not d_norm > 0:
        raise UnlearnError("update direction is zero: nothing to apply, model left unchanged")
    scale = w_norm / d_norm
    orig = {n: mods[n].weight.detach().clone() for n in direction}

    def set_eta(eta: float) -> None:
        # module by module (one dense update at a time); a non-finite result restores every module
        # already written, so the model is never left half-updated
        with torch.no_grad():
            for n in direction:
                w = orig[n] - (eta * scale) * _dense(direction[n]).to(orig[n].dtype)
                if not torch.isfinite(w).all():
                    restore()
                    raise UnlearnError(f"eta={eta}: module {n} would hold NaN/Inf: refused")
                mods[n].weight.copy_(w)
                del w

    def restore() -> None:
        with torch.no_grad():
            for n in direction:
                mods[n].weight.copy_(orig[n])

    ec = cfg.unlearn.eta
    budget = ec.retain_budget if budget is None else budget
    info: dict = {"trials": [], "scale": scale, "retain_budget": budget}
    if ec.value is not None:
        set_eta(ec.value)
        return ec.value, info
    k = ec.calibration_items
    _, held = views_split(ctx.forget[:k], cfg)
    # loss_tokens: key measures the forget and retain NLL on key words only (the facts themselves)
    f_enc = [encode_qa(tok, q, v.answer, cfg.models.max_len, cfg.unlearn.key_only) for v in held for q in v.questions]
    r_enc = [encode_qa(tok, q.question, q.answer, cfg.models.max_len, cfg.unlearn.key_only) for q in ctx.retain[:k]]
    if not r_enc:
        raise UnlearnError("eta calibration needs retain items (ctx.retain is empty)")
    fb = [collate(f_enc[i:i + 64], tok.pad_token_id) for i in range(0, len(f_enc), 64)]
    rb = [collate(r_enc[i:i + 64], tok.pad_token_id) for i in range(0, len(r_enc), 64)]
    base_f, base_r = _nll(model, fb), _nll(model, rb)
    if base_retain is not None:
        base_r = base_retain
    info.update(base_forget_nll=base_f, base_retain_nll=base_r)
    chosen = None
    try:
        for eta in sorted(ec.grid):
            set_eta(eta)
            f, r = _nll(model, fb), _nll(model, rb)
            ok = math.isfinite(f) and math.isfinite(r) and r <= base_r * (1 + budget)
            info["trials"].append({"eta": eta, "forget_nll": f, "retain_nll": r, "within_budget": ok})
            if not ok:
                break
            chosen = eta
    finally:
        restore()
    info["within_budget"] = chosen is not None
    if chosen is None and not over_budget_fallback:
        return 0.0, info
    if chosen is None:
        chosen = min(ec.grid)
        ctx.log(f"no eta in the grid keeps retain NLL within budget; applying the smallest ({chosen})")
    set_eta(chosen)
    return chosen, info
