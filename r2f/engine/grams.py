"""Activation statistics of the adapted modules: the (token-weighted) activation Gram K = sum_t w_t
x_t x_t^T of each module's inputs, kept dense, as its factor, or summed inside forward hooks, and its
top-r eigenvectors (R2F's LoRA A, the decoders' spectral inputs, r2f_pc's retain covariance).
``infos`` arguments are the adapted modules (:class:`r2f.engine.grads.ModuleInfo`, read for ``.name``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from r2f.engine.models.head import answer_forward

if TYPE_CHECKING:
    import torch

    from r2f.engine.models.head import AnswerStates

LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def input_key(x: torch.Tensor) -> tuple:
    """What identifies one input tensor across the modules that read it (q/k/v, gate/up): its data
    address and shape, valid while the tensor is alive (callers hold it for as long as they group)."""
    return x.data_ptr(), tuple(x.shape)


class GramHooks:
    """Forward hooks summing K = sum_t x_t x_t^T over the non-pad input tokens of each module, one
    product per group of modules reading the same input tensor (q/k/v and gate/up share one K). A
    layer's inputs are held until the next layer starts, so no freed input's address is taken for
    another's. :meth:`start` each batch before its forward; :meth:`stop` to record nothing more."""

    def __init__(self, modules: dict):
        self.grams: dict = {}
        self.leader: dict = {}
        self.mask = None
        self._layer, self._seen = None, {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name):
        found = LAYER_RE.search(name)
        layer = int(found.group(1)) if found else None

        def fn(_mod, inputs, _out):
            if self.mask is None:
                return
            x = inputs[0]
            if self._layer != layer:
                self._layer, self._seen = layer, {}
            first = self._seen.setdefault(input_key(x), (name, x))[0]
            self.leader[name] = first
            if first == name:
                xm = x.detach().float().reshape(-1, x.shape[-1])[self.mask]
                self.grams[name] = self.grams[name] + xm.T @ xm if name in self.grams else xm.T @ xm
        return fn

    def start(self, batch: dict) -> None:
        self.mask = batch["attention_mask"].reshape(-1).bool()
        self._layer, self._seen = None, {}

    def stop(self) -> None:
        self.mask = None
        self._seen = {}

    def result(self, names=None) -> dict:
        """{module: K} (modules of one group share one tensor), for ``names`` (default: every module seen)."""
        return {n: self.grams[self.leader[n]] for n in (names if names is not None else self.leader)}

    def remove(self) -> None:
        self.stop()
        for h in self._handles:
            h.remove()


def token_weights(states: AnswerStates | None, batch: dict,
                  weighting: tuple[float, float] | None, stats: dict | None = None) -> torch.Tensor:
    """Per-token weights [B, T] for the activation Gram.

    ``None``: 1 on every non-pad token (``states`` unused). ``(alpha, gamma)``: positions that
    predict an answer token get ``g_t ** gamma`` with ``g_t = ||softmax(logits_t) - onehot(y_t)||^2``
    (the squared norm of the loss gradient w.r.t. that position's logits, available from the forward
    pass: ``sum p^2 - 2 p_y + 1``); prompt positions get ``alpha`` times the mean answer weight (they
    receive gradient only through attention). ``states``: the batch's answer positions
    (:func:`r2f.engine.models.head.answer_forward`), whose logits are formed in chunks; ``stats``:
    their ``sq`` and ``logp`` already computed (``states`` is then unused).
    """
    import torch

    mask = batch["attention_mask"].bool()
    if weighting is None:
        return mask.float()
    alpha, gamma = weighting
    labels = batch["labels"]
    predicts = torch.zeros_like(mask)
    predicts[:, :-1] = labels[:, 1:] != -100
    st = stats if stats is not None else states.stats(("sq", "logp"))
    g = torch.zeros(mask.shape)
    g[:, :-1][predicts[:, :-1]] = st["sq"] - 2 * st["logp"].exp() + 1.0  # ||p - e_y||^2
    g = g.clamp(min=0).pow(gamma) * predicts
    mean_g = g.sum() / predicts.sum().clamp(min=1)
    return g + alpha * mean_g * (mask & ~predicts)


@dataclass
class GramFactor:
    """A Gram ``K = X^T X`` kept as its factor ``X`` (tokens x in, rows weighted by sqrt(w_t)) when
    a request has fewer tokens than the module has inputs: T x in instead of in x in floats, and
    K's top eigenvectors are X's top right singular vectors (an SVD of a T x in matrix instead of
    an eigendecomposition of in x in)."""

    x: torch.Tensor

    def dense(self) -> torch.Tensor:
        return self.x.T @ self.x

    @property
    def shape(self) -> tuple:
        n = self.x.shape[1]
        return (n, n)


@dataclass
class ActivationCapture:
    """One inference forward pass over a request's batches, kept so that the activation Gram of any
    token weighting is formed without another forward pass (:func:`grams_of`): per batch, the
    non-pad input rows of each group of modules reading the same input tensor (float32), the mask,
    and (when captured) the per-token ``sq`` / ``logp`` statistics :func:`token_weights` reads."""

    batches: list
    masks: list  # per batch: the attention mask [B, T] (bool)
    rows: list  # per batch: {group (module names): [non-pad tokens, in] float32}
    stats: list  # per batch: {"sq", "logp"} at the answer positions, or None (uniform weighting only)
    group_of: dict  # module name -> its group


def capture_activations(model, infos: Sequence, batches, with_stats: bool = True) -> ActivationCapture:
    """Run ``batches`` once (no grad) and keep what :func:`grams_of` needs for any weighting;
    ``with_stats=False`` keeps no logit statistics (only the uniform weighting can be formed then)."""
    import torch

    mods = dict(model.named_modules())
    xs: dict = {}
    handles = [mods[i.name].register_forward_hook(
        lambda _m, inputs, _o, n=i.name: xs.__setitem__(n, inputs[0].detach())) for i in infos]
    cap = ActivationCapture(list(batches), [], [], [], {})
    try:
        with torch.inference_mode():
            for b in cap.batches:
                st = answer_forward(model, b)  # no logits formed unless the statistics are read
                cap.stats.append(st.stats(("sq", "logp")) if with_stats else None)
                mask = b["attention_mask"].bool()
                cap.masks.append(mask)
                # q/k/v (and gate/up) read the same input tensor: one Gram per group of modules
                groups: dict = {}
                for n, x in xs.items():
                    groups.setdefault(input_key(x), []).append(n)
                rows = {}
                for names in groups.values():
                    key = tuple(names)
                    cap.group_of.update({n: key for n in names})
                    x = xs[names[0]]
                    rows[key] = x.float().reshape(-1, x.shape[-1])[mask.reshape(-1)]
                cap.rows.append(rows)
    finally:
        for h in handles:
            h.remove()
    return cap


def _group_grams(cap: ActivationCapture, weighting: tuple[float, float] | None, factored: bool) -> dict:
    """{group: K (or its GramFactor)} of a capture."""
    import torch

    if weighting is not None and any(s is None for s in cap.stats):
        raise ValueError("a weighted Gram needs a capture with its logit statistics (with_stats=True)")
    parts: dict = {}
    for b, mask, rows, stats in zip(cap.batches, cap.masks, cap.rows, cap.stats):
        w = token_weights(None, b, weighting, stats=stats)[mask].reshape(-1, 1)  # 0 on pad: non-pad rows
        keep = w.squeeze(1) > 0
        for key, x in rows.items():
            parts.setdefault(key, []).append((x * w.sqrt())[keep])
    grams = {}
    for key, r in parts.items():
        x = torch.cat(r) if len(r) > 1 else r[0]
        grams[key] = GramFactor(x) if factored and x.shape[0] < x.shape[1] else x.T @ x
    return grams


def grams_of(cap: ActivationCapture, weighting: tuple[float, float] | None = None,
             factored: bool = False) -> dict[str, torch.Tensor | GramFactor]:
    """Per module, K = sum_t w_t x_t x_t^T from a capture (see :func:`activation_grams`)."""
    grams = _group_grams(cap, weighting, factored)
    return {i: grams[key] for i, key in cap.group_of.items()}


def _streamed_grams(model, infos: Sequence, batches) -> dict:
    """Uniform dense Grams summed inside the forward hooks (:class:`GramHooks`): memory of the
    ``in x in`` Grams, not of every token's inputs."""
    import torch

    mods = dict(model.named_modules())
    hooks = GramHooks({i.name: mods[i.name] for i in infos})
    try:
        with torch.inference_mode():
            for b in batches:
                hooks.start(b)
                answer_forward(model, b)  # no logits formed
    finally:
        hooks.remove()
    return hooks.result([i.name for i in infos])


def activation_grams(model, infos: Sequence, batches,
                     weighting: tuple[float, float] | None = None,
                     factored: bool = False) -> dict[str, torch.Tensor | GramFactor]:
    """Per module, K = sum_t w_t x_t x_t^T over input tokens (one forward pass, no grad); the
    weights come from :func:`token_weights` (uniform over non-pad tokens by default).

    ``factored``: return a :class:`GramFactor` wherever the tokens are fewer than the inputs (the
    usual case for one request), else the dense Gram. Modules reading the same input tensor
    (q/k/v, gate/up) share one object. Several weightings of the same batches: capture once
    (:func:`capture_activations`) and call :func:`grams_of` per weighting. A dense Gram is summed
    batch by batch (uniform: inside the hooks), so many tokens (a retain covariance) never hold
    every token's inputs at once."""
    names = [i.name for i in infos]
    if factored:  # a request's few tokens: the rows are the factor
        grams = grams_of(capture_activations(model, infos, batches, with_stats=weighting is not None), weighting, True)
        return {n: grams[n] for n in names}
    if weighting is None:  # many tokens (retain covariances): summed inside the hooks
        return _streamed_grams(model, infos, batches)
    acc: dict = {}
    group_of: dict = {}
    for b in batches:  # weighted and dense: one batch's rows at a time
        cap = capture_activations(model, infos, [b])
        group_of = cap.group_of
        for key, k in _group_grams(cap, weighting, False).items():
            acc[key] = acc[key] + k if key in acc else k
    return {n: acc[group_of[n]] for n in names}


def per_distinct(grams: dict, fn) -> dict:
    """``{name: fn(gram)}`` with ``fn`` called once per distinct Gram object: modules that read one
    input (q/k/v, gate/up) hold the same Gram (:class:`GramHooks`), so its decomposition is shared."""
    cache: dict = {}
    out = {}
    for n, k in grams.items():
        if id(k) not in cache:
            cache[id(k)] = fn(k)
        out[n] = cache[id(k)]
    return out


def top_bases(grams: dict, r: int) -> dict:
    """:func:`top_basis` of every Gram, computed once per distinct Gram (q/k/v share one)."""
    return per_distinct(grams, lambda k: top_basis(k, r))


def top_basis(gram: torch.Tensor | GramFactor, r: int) -> torch.Tensor:
    """Top-r eigenvectors of a Gram matrix as rows (r x in), orthonormal, deterministic sign.

    A :class:`GramFactor` with fewer than ``r`` rows is completed with eigenvectors of eigenvalue 0
    (any orthonormal completion is a valid top-r basis then)."""
    import torch

    top = None
    if isinstance(gram, GramFactor) and gram.x.shape[0] >= r:
        # K = X^T X's top eigenvectors are X's top right singular vectors: from the small T x T
        # Gram X X^T (eigh) as v_k = X^T u_k / sqrt(lambda_k); several times faster than an SVD of
        # X on CPU. float32: the float64 Gram GEMM alone cost more than the eigh (T = 300, in =
        # 1,536: 9.9 ms vs 8.1 ms), and the top-r of a well-separated spectrum needs no more. A
        # (near) rank-deficient top-r falls through to the dense path.
        x = gram.x.float()
        evals, evecs = torch.linalg.eigh(x @ x.T)
        order = torch.argsort(evals, descending=True)[:r]
        lam = evals[order]
        if lam[-1] > 1e-6 * lam[0].clamp(min=1e-30):
            top = ((x.T @ evecs[:, order]) / lam.sqrt()).T
            top = top / top.norm(dim=1, keepdim=True)
    if top is None:
        dense = gram.dense() if isinstance(gram, GramFactor) else gram
        evals, evecs = torch.linalg.eigh(dense.float())  # float32: 2x faster, ample for the top-r
        top = evecs[:, torch.argsort(evals, descending=True)[:r]].T
    signs = torch.sign(top[torch.arange(top.shape[0]), top.abs().argmax(1)])
    return (top * signs[:, None]).float().contiguous()
