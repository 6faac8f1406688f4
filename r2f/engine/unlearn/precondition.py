"""Retain-curvature preconditioning of an update direction, per adapted module (issue #20).

A plain step ``W - eta D`` moves a module's output on *every* input ``x`` by ``eta D x``: retain text
shares most input directions with the forget item (chat template, function words), so the step
damages neighbours as much as it forgets. With ``A_r = E[x x^T]`` the retain inputs' covariance,

* ``input``: ``D (A_r + lam I)^-1`` (the forward-only half of a K-FAC / Gauss-Newton step, MEMIT's key
  covariance): directions retain inputs use a lot are damped by their variance, directions they never
  use pass at ``1 / lam``;
* ``nullspace``: ``D (I - U_k U_k^T)``, U_k the top eigenvectors of ``A_r`` holding ``energy`` of its
  trace (AlphaEdit's hard projection): retain inputs in that span see no change at all.

* ``kfac``: ``(S_r + lam I)^-1 D (A_r + lam I)^-1``, both Kronecker factors of the retain Fisher (a
  K-FAC / Gauss-Newton step, K-FADE): ``S_r = E[g g^T]`` is the covariance of the gradients at the
  module's *outputs*, from one backward pass on the retain answers with labels sampled from the
  model's own next-token distribution (the true Fisher, not the empirical one: memorised retain
  answers have near-zero gradients at their own labels).

``lam`` is ``damping`` times the mean eigenvalue of each factor (scale-free); each inverse is scaled by
``lam`` so that directions the retain data never use keep their size. ``input`` and ``nullspace`` act on
the input side only, ``kfac`` on both, so a low-rank ``U V`` direction stays low rank (``U`` and ``V``
are transformed). Modules that read the same input (q/k/v, gate/up) share one ``A_r`` and one
transform. Factor memory: (in^2 + out^2) floats per module (``transform_memory_mb``).
"""

from __future__ import annotations

from r2f.engine.budget import DEFAULT_BUDGET_MB, budgeted_passes
from r2f.engine.grams import activation_grams, per_distinct


def _damped(evals, evecs, damping: float, power: float = -1.0):
    """``lam^-power (A + lam I)^power`` from ``A``'s eigendecomposition, ``lam = damping x mean
    eigenvalue``: power -1 is the scaled damped inverse (directions A never uses keep their size),
    -1/2 the whitening of the contrast basis (its scale does not matter there)."""
    lam = damping * float(evals.mean())
    return ((evecs * ((evals + lam) / lam) ** power) @ evecs.T).float()


def _damped_inverse(a, damping: float, dtype=None):
    """``lam (a + lam I)^-1``, ``lam = damping x mean eigenvalue = damping x trace(a) / n`` (float64
    in, ``dtype`` out, default float32), by a Cholesky factorisation: the same matrix as the damped
    eigendecomposition (:func:`_damped`, tested), about 10x faster for SmolLM2's 1536-wide factors,
    where the eigendecompositions took 61 s of a deletion (bench/results/memory_phases_smollm2.md). A
    factor that is all zero (no retain signal) gives the identity: the direction passes unchanged."""
    import torch

    n = a.shape[0]
    lam = damping * float(a.diagonal().sum()) / n
    eye = torch.eye(n, dtype=a.dtype)
    if not lam > 0:
        return eye.to(dtype or torch.float32)
    a.diagonal().add_(lam)  # in place: a is this function's own float64 copy
    chol = torch.linalg.cholesky(a)
    del a
    return (torch.cholesky_inverse(chol).mul_(lam)).to(dtype or torch.float32)


def output_grad_covariances(model, infos, batches, seed: int = 0,
                            budget_mb: float | None = DEFAULT_BUDGET_MB) -> dict:
    """Per module, ``S = mean_t g_t g_t^T`` over non-pad tokens, ``g_t`` the gradient of the loss at
    the module's output; the loss is the answer tokens' NLL under labels *sampled* from the model's
    next-token distribution (true Fisher). One forward and one input-gradient-only backward per
    row slice whose saved activations fit ``budget_mb`` (:func:`r2f.engine.budget.budgeted_passes`):
    no weight gradient is formed (the weights keep ``requires_grad=False`` for the pass)."""
    import torch

    from r2f.engine.models.head import answer_forward

    mods = dict(model.named_modules())
    acc: dict = {}
    state = {"mask": None}

    def grab(_m, _gin, gout, n):  # float32 sums: half the memory of float64 (out x out per module, 700 MB
        # on SmolLM2), ample for a damped preconditioner (the eigendecomposition runs in float64)
        g = gout[0].detach().float().reshape(-1, gout[0].shape[-1])[state["mask"]]
        if n in acc:
            acc[n].addmm_(g.T, g)
        else:
            acc[n] = g.T @ g

    params = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in params:
        p.requires_grad_(False)
    emb = model.get_input_embeddings().register_forward_hook(lambda _m, _i, o: o.requires_grad_(True))
    handles = [mods[i.name].register_full_backward_hook(lambda m, gi, go, n=i.name: grab(m, gi, go, n))
               for i in infos]
    gen = torch.Generator().manual_seed(seed)
    tokens = [0]

    def run(b):
        state["mask"] = b["attention_mask"].reshape(-1).bool()
        tokens[0] += int(state["mask"].sum())
        st = answer_forward(model, b)  # logits in chunks (models.head)
        st.token_nll(st.sample_labels(gen)).sum().backward()

    try:
        budgeted_passes(model, batches, run, budget_mb)
    finally:
        emb.remove()
        for h in handles:
            h.remove()
        for p, req in params:
            p.requires_grad_(req)
    for s in acc.values():
        s /= max(1, tokens[0])
    return acc


def retain_transforms(model, infos, batches, kind: str, damping: float, energy: float,
                      whiten_out: dict | None = None, budget_mb: float | None = DEFAULT_BUDGET_MB,
                      seed: int = 0, dtype: str = "float32") -> dict:
    """Per module, the ``in x in`` matrix P the direction is right-multiplied by (``D P``), from the
    retain inputs of ``batches`` (one forward pass, no gradient); ``kfac``: a pair ``(L, P)``, the
    direction becomes ``L D P`` (plus one backward pass for the output factors, its labels sampled
    with ``seed``). ``whiten_out``: also filled with ``(A_r + lam I)^-1/2`` per module (the contrast
    basis of R2F's A, onepass._run_bases). ``dtype``: how the transforms are stored (``bfloat16``
    halves their memory, 1.1 GB on SmolLM2 in float32; :func:`precondition` computes in the
    direction's dtype)."""
    import torch

    store = getattr(torch, dtype)
    batches = list(batches)  # read twice with kfac
    grams = activation_grams(model, infos, batches)
    tokens = max(1, sum(int(b["attention_mask"].sum()) for b in batches))

    def transform(g) -> tuple:  # (P, the whitening W or None) of one distinct Gram
        a = g.double() / tokens
        if kind in ("input", "kfac") and whiten_out is None:  # lam (A_r + lam I)^-1, no eigenvectors needed
            return _damped_inverse(a, damping, store), None
        evals, evecs = torch.linalg.eigh(a)
        evals = evals.clamp(min=0)
        if kind in ("input", "kfac"):
            p = _damped(evals, evecs, damping)  # lam (A_r + lam I)^-1
        elif kind == "nullspace":
            order = evals.flip(0)
            k = int(torch.searchsorted(order.cumsum(0) / order.sum(), torch.tensor(energy, dtype=order.dtype)))
            u = evecs[:, evecs.shape[1] - (k + 1):]
            p = torch.eye(a.shape[0], dtype=a.dtype) - u @ u.T
        else:
            raise ValueError(f"unknown preconditioner '{kind}'")
        return p.to(store), (_damped(evals, evecs, damping, -0.5) if whiten_out is not None else None)

    # q/k/v (gate/up) hold one Gram: one eigendecomposition per distinct input
    pairs = per_distinct({i.name: grams[i.name] for i in infos}, transform)
    del grams  # the activation Grams (float32, in x in per distinct input) are not needed past here
    out = {n: p for n, (p, _w) in pairs.items()}
    if whiten_out is not None:
        whiten_out.update({n: w for n, (_p, w) in pairs.items()})
    del pairs
    if kind == "kfac":
        s_r = output_grad_covariances(model, infos, batches, seed=seed, budget_mb=budget_mb)
        for n in list(out):  # each output factor is replaced by its damped inverse as it is made: the
            out[n] = (_damped_inverse(s_r.pop(n).double(), damping, store), out[n])  # sums and inverses never all coexist
    return out


def precondition(direction: dict, transforms: dict) -> dict:
    """``D P`` for every module of ``direction`` (a :class:`~r2f.engine.unlearn.apply.LowRank` keeps
    its factors: ``U (V P)``; a dense tensor is multiplied), in place; returns ``direction``."""
    from r2f.engine.unlearn.apply import LowRank

    for name, d in direction.items():
        left, p = transforms[name] if isinstance(transforms[name], tuple) else (None, transforms[name])
        if isinstance(d, LowRank):
            if d.factored:
                d.vs = [v @ p.to(v.dtype) for v in d.vs]
                if left is not None:
                    d.us = [left.to(u.dtype) @ u for u in d.us]
            else:
                d.d = d.d @ p.to(d.d.dtype)
                if left is not None:
                    d.d = left.to(d.d.dtype) @ d.d
        else:
            direction[name] = d @ p.to(d.dtype)
            if left is not None:
                direction[name] = left.to(d.dtype) @ direction[name]
    return direction


def transform_memory_mb(transforms: dict) -> float:
    """Memory of the distinct transforms (shared ones counted once)."""
    seen = {id(p): p for t in transforms.values() for p in (t if isinstance(t, tuple) else (t,))}
    return sum(p.numel() * p.element_size() for p in seen.values()) / 2**20



def _factors(d):
    """``(U, V)`` with ``U @ V == d`` for a LowRank (its factors, or ``(D, I)`` once dense) or a tensor."""
    import torch

    from r2f.engine.unlearn.apply import LowRank

    if isinstance(d, LowRank) and d.factored:
        return d.us[0], d.vs[0]
    dense = d.dense() if isinstance(d, LowRank) else d
    return dense, torch.eye(dense.shape[1], dtype=dense.dtype)


def inner(a: dict, b: dict) -> float:
    """Frobenius inner product of two per-module updates summed over their common modules, from the
    factors: ``<U1 V1, U2 V2> = sum((U1^T U2) * (V1 V2^T))`` (no dense product is formed for factors)."""
    total = 0.0
    for name in a.keys() & b.keys():
        (u1, v1), (u2, v2) = _factors(a[name]), _factors(b[name])
        total += float(((u1.T.double() @ u2.double()) * (v1.double() @ v2.T.double())).sum())
    return total


def project_out(direction: dict, basis: list[dict], mu: float) -> dict:
    """GRU's projection, generalised to several retain gradients (Wang et al., arXiv 2503.09117):
    ``D - R (R^T R + lam I)^-1 R^T D`` over all modules at once, ``R``'s columns the per-module updates
    of ``basis`` and ``lam = mu x`` their mean squared norm. With ``mu`` -> 0 the update is orthogonal to
    every ``r_j``: to first order it leaves those retain losses unchanged. In place (a LowRank gains
    ``len(basis)`` x its rank columns per module); returns ``direction``."""
    import torch

    from r2f.engine.unlearn.apply import LowRank

    if not basis:
        return direction
    m = len(basis)
    gram = torch.zeros(m, m, dtype=torch.float64)
    for i in range(m):
        for j in range(i, m):
            gram[i, j] = gram[j, i] = inner(basis[i], basis[j])
    b = torch.tensor([inner(r, direction) for r in basis], dtype=torch.float64)
    lam = mu * float(gram.diagonal().mean())
    coef = torch.linalg.solve(gram + lam * torch.eye(m, dtype=torch.float64), b)
    for c, r in zip(coef.tolist(), basis):
        for name in direction.keys() & r.keys():
            u, v = _factors(r[name])
            d = direction[name]
            if isinstance(d, LowRank):
                d.add(-c, u.to(torch.float32), v.to(torch.float32))
            else:
                direction[name] = d - c * (u @ v).to(d.dtype)
    return direction
