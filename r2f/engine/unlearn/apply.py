"""Shared by the single-direction methods: calibrate the step size eta with forward passes only,
then apply ``W <- W - eta * ||W|| * D / ||D||`` module by module, refusing non-finite updates.
Trials of a small-rank update run through forward hooks; any other update is written into a trial
copy of the weights that is restored exactly (:class:`Trial`); the chosen eta is written once.

eta is relative: the update's Frobenius norm over all adapted modules is ``eta`` times theirs.
Calibration: the largest eta in the grid whose NLL on calibration retain items stays within
``(1 + retain_budget)`` of the original is found by bisection (the retain NLL rises with eta). The
forget NLL on *held-out views* (paraphrases not used for the gradient) is measured before the step
and once at the chosen eta. With a forget target (R2F-PC's forget level) the bisection runs on the
held-out views instead (the smallest eta that reaches the target), and the retain budget is checked
once there, bisected only when that eta is over it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from r2f.engine.grads import target_modules
from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.models.nll import token_nll
from r2f.engine.unlearn.base import OverBudgetError, UnlearnContext, UnlearnError

if TYPE_CHECKING:
    import torch


def _nll(model, batches) -> float:
    import torch

    with torch.inference_mode():
        vals = torch.cat([token_nll(model, b) for b in batches])
    return float(vals.mean())


class LowRank:
    """A module's update kept as factors ``U @ V`` (out x k, k x in): R2F's decoded directions are
    rank r per item, so a request's update needs (out + in) * k floats per module instead of a
    dense gradient-sized tensor. Once k grows past ``out * in / (out + in)`` (a large request) the
    factors would be bigger than the dense matrix, and the update is kept dense from then on."""

    def __init__(self) -> None:
        self.us: list = []
        self.vs: list = []
        self.d = None  # the dense update, once it is the smaller form

    def add(self, weight: float, u: torch.Tensor, v: torch.Tensor) -> None:
        import torch

        if self.d is not None:
            self.d += weight * (u @ v)
            return
        self.us.append(weight * u)
        self.vs.append(v)
        if len(self.us) > 1:  # keep one concatenated pair: O(k) memory, no list of small tensors
            self.us, self.vs = [torch.cat(self.us, 1)], [torch.cat(self.vs, 0)]
        (out, k), n_in = self.us[0].shape, self.vs[0].shape[1]
        if k * (out + n_in) > out * n_in:
            self.d, self.us, self.vs = self.us[0] @ self.vs[0], [], []

    @property
    def empty(self) -> bool:
        return self.d is None and not self.us

    @property
    def factored(self) -> bool:
        return self.d is None

    def dense(self) -> torch.Tensor:
        return self.d if self.d is not None else self.us[0] @ self.vs[0]

    def sq_norm(self) -> float:
        """||U V||_F^2 = sum((U^T U) * (V V^T)), without forming U V."""
        if self.d is not None:
            return _sq_norm(self.d)
        u, v = self.us[0].double(), self.vs[0].double()
        return float(((u.T @ u) * (v @ v.T)).sum())

    @property
    def shape(self) -> tuple[int, int]:
        if self.d is not None:
            return tuple(self.d.shape)
        return (self.us[0].shape[0], self.vs[0].shape[1]) if self.us else (0, 0)

    def finite(self) -> bool:
        import torch

        if self.d is not None:
            return bool(torch.isfinite(self.d).all())
        return bool(torch.isfinite(self.us[0]).all() and torch.isfinite(self.vs[0]).all())


def _sq_norm(d) -> float:
    """Squared Frobenius norm; a dense tensor is reduced in its own dtype (no float64 copy of a
    gradient-sized tensor: 134 MB per module on a 1.7B model)."""
    import torch

    return d.sq_norm() if isinstance(d, LowRank) else float(torch.linalg.vector_norm(d)) ** 2


def check_finite(direction: dict) -> None:
    import torch

    for name, d in direction.items():
        if isinstance(d, LowRank) and d.empty:
            raise UnlearnError(f"update for module {name} is empty: refused, model left unchanged")
        if not (d.finite() if isinstance(d, LowRank) else torch.isfinite(d).all()):
            raise UnlearnError(f"update for module {name} contains NaN/Inf: refused, model left unchanged")


def check_shapes(mods: dict, direction: dict) -> None:
    """Every update names a module of the target and has its weight's shape (a decoder or a
    direction built for another model is refused before anything is written)."""
    for name, d in direction.items():
        if name not in mods or not hasattr(mods[name], "weight"):
            raise UnlearnError(f"update for module {name}: the target has no such module: refused, "
                               "model left unchanged")
        want, got = tuple(mods[name].weight.shape), tuple(d.shape)
        if got != want:
            raise UnlearnError(f"update for module {name} has shape {got}, the target's weight is {want}: "
                               "refused, model left unchanged")


class Trial:
    """Trial weights ``W - c D`` for calibration, undone exactly by :meth:`remove`. A factored D of
    small rank (``k (out + in) <= out * in / 4``: under a quarter of the module's flops) runs as a
    forward hook ``y - c (x V^T) U^T`` and its weight is never touched; any other D (dense, or
    factors nearly as big as the matrix) is written into the weight from a saved copy of the
    original, because a hook would cost a second full-size matmul per forward (it made each SmolLM2
    calibration trial 1.4x slower than a plain forward, docs/performance.md)."""

    def __init__(self, mods: dict, direction: dict) -> None:
        self._c = 0.0
        self._mods, self._direction = mods, direction
        self._saved: dict = {}
        self._handles = []
        for n, d in direction.items():
            if _cheap_factors(d):
                self._handles.append(mods[n].register_forward_hook(self._hook(d)))
            else:
                self._saved[n] = mods[n].weight.detach().clone()

    @property
    def c(self) -> float:
        return self._c

    @property
    def exact(self) -> bool:
        """Every module's trial weight is written (no hook): the model at ``c`` is bit for bit the one
        :func:`apply_update` leaves at ``c``."""
        return not self._handles

    @c.setter
    def c(self, value: float) -> None:
        import torch

        self._c = value
        with torch.no_grad():
            for n, w0 in self._saved.items():
                self._mods[n].weight.copy_(_new_weight(w0, self._direction[n], value))

    def _hook(self, d):
        def fn(_mod, inputs, out):
            if self._c == 0.0:
                return out
            x = inputs[0]
            return out - self._c * ((x @ d.vs[0].T.to(x.dtype)) @ d.us[0].T.to(x.dtype))
        return fn

    def remove(self) -> None:
        """Remove the hooks and restore every written weight to its original (bit for bit)."""
        import torch

        for h in self._handles:
            h.remove()
        with torch.no_grad():
            for n, w0 in self._saved.items():
                self._mods[n].weight.copy_(w0)
        self._handles, self._saved = [], {}


def _cheap_factors(d) -> bool:
    """A factored update whose hook costs at most a quarter of its module's matmul."""
    if not (isinstance(d, LowRank) and d.factored):
        return False
    (out, n_in), k = d.shape, d.us[0].shape[1]
    return 4 * k * (out + n_in) <= out * n_in


def _new_weight(w: torch.Tensor, d, c: float) -> torch.Tensor:
    """``w - c * d`` for one module (one dense gradient-sized tensor at a time)."""
    import torch

    if isinstance(d, LowRank) and d.factored:
        return torch.addmm(w, d.us[0].to(w.dtype), d.vs[0].to(w.dtype), alpha=-c)
    return torch.add(w, (d.dense() if isinstance(d, LowRank) else d).to(w.dtype), alpha=-c)


def apply_update(mods: dict, direction: dict, c: float) -> None:
    """``W <- W - c * D`` for every module, all or nothing: a first pass computes each new weight
    (one module at a time) and refuses the whole update if any would hold NaN/Inf; only then does a
    second pass (the same deterministic op) write them. No copy of the weights is kept."""
    import torch

    with torch.no_grad():
        for n, d in direction.items():
            w = _new_weight(mods[n].weight, d, c)
            if not torch.isfinite(w).all():
                raise UnlearnError(f"step {c:.3g}: module {n} would hold NaN/Inf: refused, model left unchanged")
            del w
        for n, d in direction.items():
            mods[n].weight.copy_(_new_weight(mods[n].weight, d, c))


def _bisect(pred, lo: int, hi: int) -> int:
    """The smallest index in ``(lo, hi]`` where ``pred`` holds, for a ``pred`` that is False up to
    some index and True from there on, by bisection: ``pred(lo)`` is known False (or ``lo`` is -1)
    and ``pred(hi)`` True (or ``hi`` is one past the end, never evaluated)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pred(mid) else (mid, hi)
    return hi


def _grow(grid: list, pred, extend: int) -> tuple[int, int]:
    """Test the grid's top; while ``pred`` fails there, append twice the top (at most ``extend``
    times). Returns the ``(lo, hi)`` bounds :func:`_bisect` starts from."""
    n0 = len(grid)
    while not pred(len(grid) - 1):
        if len(grid) >= n0 + extend:
            return len(grid) - 1, len(grid)
        grid.append(grid[-1] * 2)
    return (len(grid) - 2 if len(grid) > n0 else -1), len(grid) - 1


def answer_nll(ctx: UnlearnContext, items) -> float:
    """Mean answer NLL of QA ``items`` at the current weights, encoded as eta calibration encodes its
    views (``unlearn.key_only``): comparable with the calibration's forget NLL."""
    cfg, tok = ctx.cfg, ctx.tokenizer
    enc = [encode_qa(tok, q.question, q.answer, cfg.models.max_len, cfg.unlearn.key_only) for q in items]
    return _nll(ctx.model, [collate(enc[i:i + 64], tok.pad_token_id) for i in range(0, len(enc), 64)])


def calibrate_and_apply(ctx: UnlearnContext, direction: dict, base_retain: float | None = None,
                        refuse_over_budget: bool = True, budget_share: tuple[int, int] = (1, 1),
                        prob_drop: float | None = None, forget_target=None, extend: int = 0) -> tuple[float, dict]:
    """Choose eta (or use the configured one), apply the update, return (eta, calibration info).

    The grid's trials run through :class:`Trial` (hooks, or trial weights restored exactly
    afterwards); the chosen eta is written once by :func:`apply_update`.
    ``base_retain``: the retain NLL the budget is measured from (default: the current model's);
    multi-step R2F passes the original model's so the budget holds for all steps together.
    When no eta in the grid keeps the budget the step is refused (:class:`OverBudgetError`, as
    for NaN: nothing is written); ``refuse_over_budget`` False instead applies nothing and returns
    eta 0 with ``info["within_budget"] = False`` (multi-step R2F stops there after its first step).
    ``budget_share`` (k, n): this call may spend k/n of ``unlearn.eta.retain_budget`` (multi-step
    R2F's step k of n). ``prob_drop``: the budget as the largest allowed drop of the calibration
    retain answers' (geometric-mean, per-token) probability instead of ``retain_budget``'s relative
    NLL rise: the retain NLL may rise by ``-ln(1 - prob_drop)`` nats (a model that memorised its
    retain answers to NLL 0.03 has a relative budget of a few thousandths of a nat, while the gate's
    utility rule measures probabilities).
    ``forget_target(base_forget_nll) -> nll``: a held-out forget NLL to reach rather than exceed (a
    function of the views' NLL before this step): of the etas within budget, the smallest whose
    held-out views' NLL reaches it, the largest within budget when none does (``info["reached"]``
    says which); found forget first (a bisection on the views, then one budget check). ``extend``:
    while the grid's largest eta is not what binds (within budget; with a forget target: short of
    it), double it, up to this many times (preconditioned steps need etas 100-3,000x a plain step's,
    docs/method.md §9); ``info["grid_extended"]`` counts the doublings."""
    check_finite(direction)
    cfg, model, tok = ctx.cfg, ctx.model, ctx.tokenizer
    mods = dict(model.named_modules())
    check_shapes(mods, direction)
    names = [i.name for i in target_modules(model, cfg.lora.target_modules)]
    missing = set(direction) - set(names)
    if missing:
        raise UnlearnError(f"update names modules the model does not have: {sorted(missing)[:3]}")
    w_norm = math.sqrt(sum(_sq_norm(mods[n].weight.detach()) for n in direction))
    d_norm = math.sqrt(sum(_sq_norm(d) for d in direction.values()))
    if not d_norm > 0:
        raise UnlearnError("update direction is zero: nothing to apply, model left unchanged")
    scale = w_norm / d_norm

    def set_eta(eta: float) -> None:
        apply_update(mods, direction, eta * scale)

    ec = cfg.unlearn.eta
    k_share, n_share = budget_share
    budget = (prob_drop if prob_drop is not None else ec.retain_budget) * k_share / n_share
    info: dict = {"trials": [], "scale": scale, "retain_budget": budget,
                  "budget_unit": "probability" if prob_drop is not None else "relative_nll"}
    if ec.value is not None:
        set_eta(ec.value)
        return ec.value, info
    k = ec.calibration_items
    held = ctx.views[1][:k]
    # loss_tokens: key measures the forget and retain NLL on key words only (the facts themselves)
    f_enc = [encode_qa(tok, q, v.answer, cfg.models.max_len, cfg.unlearn.key_only) for v in held for q in v.questions]
    r_enc = [encode_qa(tok, q.question, q.answer, cfg.models.max_len, cfg.unlearn.key_only) for q in ctx.retain[:k]]
    if not r_enc:
        raise UnlearnError("eta calibration needs retain items (ctx.retain is empty)")
    fb = [collate(f_enc[i:i + 64], tok.pad_token_id) for i in range(0, len(f_enc), 64)]
    rb = [collate(r_enc[i:i + 64], tok.pad_token_id) for i in range(0, len(r_enc), 64)]
    base_f = _nll(model, fb)
    base_r = base_retain if base_retain is not None else _nll(model, rb)  # a later step's budget is the first's
    info.update(base_forget_nll=base_f, base_retain_nll=base_r)
    grid = sorted(ec.grid)
    tick = ctx.tick("eta calibration trials", math.ceil(math.log2(len(grid) + 1)))
    trial = Trial(mods, direction)
    limit = base_r - math.log1p(-budget) if prob_drop is not None else base_r * (1 + budget)

    def fails(i: int) -> bool:  # over the retain budget at grid[i] (the retain NLL rises with eta)
        trial.c = grid[i] * scale
        r = _nll(model, rb)
        ok = math.isfinite(r) and r <= limit
        info["trials"].append({"eta": grid[i], "retain_nll": r, "within_budget": ok})
        tick()
        return not ok

    measured_f: dict = {}  # grid index -> the held-out views' NLL there, when trial weights were written

    def reaches(i: int) -> bool:  # the held-out views reach the forget target at grid[i] (NaN: past it)
        trial.c = grid[i] * scale
        f = _nll(model, fb)
        if trial.exact:
            measured_f[i] = f
        info["trials"].append({"eta": grid[i], "forget_nll": f})
        tick()
        return not f < info["forget_target"]

    # Bisection over the sorted grid: ceil(log2(n + 1)) trials instead of up to n for a scan (4 instead
    # of 10 for the 12-value grid on SmolLM2). ``extend`` first tests the top and doubles it while that
    # is not yet what binds (within budget; with a forget target: short of it).
    try:
        if forget_target is None:  # the largest eta within budget (every trial above it failed)
            lo, hi = _grow(grid, fails, extend) if extend else (-1, len(grid))
            i = _bisect(fails, lo, hi) - 1
        else:
            # forget first: the smallest eta whose held-out views reach the target (the forget NLL rises
            # with eta), then one budget check there; only when it fails, the largest eta within budget
            # below it (which falls short of the target). Same choice as bisecting the budget first, with
            # one retain trial instead of a second bisection in the usual case.
            info["forget_target"] = forget_target(base_f)
            lo, hi = _grow(grid, reaches, extend) if extend else (-1, len(grid))
            i = _bisect(reaches, lo, hi)
            info["reached"] = i < len(grid)
            i = min(i, len(grid) - 1)
            if fails(i):
                i, info["reached"] = _bisect(fails, -1, i) - 1, False
        if extend:
            info["grid_extended"] = len(grid) - len(ec.grid)
    finally:
        trial.remove()
    chosen = grid[i] if i >= 0 else None
    info["within_budget"] = chosen is not None
    if chosen is None and not refuse_over_budget:
        return 0.0, info
    if chosen is None:
        smallest = info["trials"][-1]
        raise OverBudgetError(
            "no eta in unlearn.eta.grid keeps the calibration retain "
            + (f"answers' probability within a {budget:.0%} drop" if prob_drop is not None else f"NLL within {budget:.0%}")
            + f" of {base_r:.4g}: the smallest, eta={grid[0]:.3g}, gives "
            f"{smallest.get('retain_nll', float('nan')):.4g}. Refused, model left unchanged; raise "
            "unlearn.eta.retain_budget or add smaller values to unlearn.eta.grid")
    set_eta(chosen)
    # the held-out views' NLL after the step: a trial that wrote W - c D into every module ran on the very
    # weights apply_update writes (the same op on the same restored W), so its measurement is reused
    info["forget_nll_from_trial"] = i in measured_f
    info["forget_nll"] = measured_f[i] if i in measured_f else _nll(model, fb)
    return chosen, info
