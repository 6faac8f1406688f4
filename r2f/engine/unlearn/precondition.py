"""Retain-curvature preconditioning of an update direction, per adapted module (issue #20).

A plain step ``W - eta D`` moves a module's output on *every* input ``x`` by ``eta D x``: retain text
shares most input directions with the forget item (chat template, function words), so the step
damages neighbours as much as it forgets. With ``A_r = E[x x^T]`` the retain inputs' covariance,

* ``input``: ``D (A_r + lam I)^-1`` (the forward-only half of a K-FAC / Gauss-Newton step, MEMIT's key
  covariance): directions retain inputs use a lot are damped by their variance, directions they never
  use pass at ``1 / lam``;
* ``nullspace``: ``D (I - U_k U_k^T)``, U_k the top eigenvectors of ``A_r`` holding ``energy`` of its
  trace (AlphaEdit's hard projection): retain inputs in that span see no change at all.

``lam`` is ``damping`` times the mean eigenvalue of ``A_r`` (scale-free). Both act on the input side
only, so a low-rank ``U V`` direction stays low rank (``V`` is transformed) and no output-gradient
statistics (a backward pass) are needed. Modules that read the same input (q/k/v, gate/up) share one
``A_r`` and one transform.
"""

from __future__ import annotations

from r2f.engine.grads import activation_grams


def retain_transforms(model, infos, batches, kind: str, damping: float, energy: float) -> dict:
    """Per module, the ``in x in`` matrix P the direction is right-multiplied by (``D P``), from the
    retain inputs of ``batches`` (one forward pass, no gradient)."""
    import torch

    grams = activation_grams(model, infos, batches)
    tokens = max(1, sum(int(b["attention_mask"].sum()) for b in batches))
    out, cache = {}, {}
    for info in infos:
        g = grams[info.name]
        key = id(g)
        if key not in cache:
            a = g.double() / tokens
            evals, evecs = torch.linalg.eigh(a)
            evals = evals.clamp(min=0)
            if kind == "input":
                lam = damping * float(evals.mean())
                # lam (A_r + lam I)^-1: directions no retain input uses keep their size
                p = (evecs * (lam / (evals + lam))) @ evecs.T
            elif kind == "nullspace":
                order = evals.flip(0)
                k = int(torch.searchsorted(order.cumsum(0) / order.sum(), torch.tensor(energy, dtype=order.dtype)))
                u = evecs[:, evecs.shape[1] - (k + 1):]
                p = torch.eye(a.shape[0], dtype=a.dtype) - u @ u.T
            else:
                raise ValueError(f"unknown preconditioner '{kind}'")
            cache[key] = p.float()
        out[info.name] = cache[key]
    return out


def precondition(direction: dict, transforms: dict) -> dict:
    """``D P`` for every module of ``direction`` (a :class:`~r2f.engine.unlearn.apply.LowRank` keeps
    its factors: ``U (V P)``; a dense tensor is multiplied), in place; returns ``direction``."""
    from r2f.engine.unlearn.apply import LowRank

    for name, d in direction.items():
        p = transforms[name]
        if isinstance(d, LowRank):
            if d.factored:
                d.vs = [v @ p.to(v.dtype) for v in d.vs]
            else:
                d.d = d.d @ p.to(d.d.dtype)
        else:
            direction[name] = d @ p.to(d.dtype)
    return direction


def transform_memory_mb(transforms: dict) -> float:
    """Memory of the distinct transforms (shared ones counted once)."""
    seen = {id(p): p for p in transforms.values()}
    return sum(p.numel() * p.element_size() for p in seen.values()) / 2**20

