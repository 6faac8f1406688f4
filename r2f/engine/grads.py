"""Gradients of the unlearning loss: LoRA gradients through ``peft`` (base weights frozen, no
full-weight gradient materialised) and exact per-module full gradients (proxy training pairs and
evaluation only), plus the activation statistics the decoders use.

Sign convention: every gradient here is of the *unlearning loss* ``L_u`` (to be descended):
``ascent`` uses ``L_u = -NLL(answer | forget question)``, ``refusal`` uses
``L_u = NLL(refusal string | forget question)``; a retain term ``+ w * NLL(retain)`` is optional.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.models.head import answer_forward
from r2f.engine.models.nll import token_nll

if TYPE_CHECKING:
    import torch

    from r2f.engine.models.head import AnswerStates
    from r2f.engine.paraphrase import Views

LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class ModuleInfo:
    name: str
    kind: str  # q_proj, k_proj, ...
    layer: int
    depth: float  # layer / (n_layers - 1), in [0, 1]


def target_modules(model, kinds: Sequence[str]) -> list[ModuleInfo]:
    """The linear modules whose last name component is in ``kinds`` (lm_head never included)."""
    import torch

    found = []
    for name, mod in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if isinstance(mod, torch.nn.Linear) and kind in kinds:
            m = LAYER_RE.search(name)
            found.append((name, kind, int(m.group(1)) if m else 0))
    if not found:
        raise ValueError(f"no linear modules named {list(kinds)} in {type(model).__name__}")
    n_layers = max(f[2] for f in found) + 1
    return [ModuleInfo(n, k, layer, layer / max(1, n_layers - 1)) for n, k, layer in found]


CHUNK = 40  # sequences per collated batch (view_batches, qa_batches)


def view_batches(tokenizer, views: Sequence[Views], max_len: int, objective: str = "ascent",
                 refusals: Sequence[str] = (), chunk: int = CHUNK, key_only: bool = False) -> list[dict]:
    """Collated batches of (view question, answer) pairs; ``refusal`` swaps in a refusal string.
    ``key_only``: the loss covers the answer's key words only (never for a refusal string)."""
    if objective == "refusal" and not refusals:
        raise ValueError("objective 'refusal' needs refusal strings")
    enc = []
    for i, v in enumerate(views):
        answer = refusals[i % len(refusals)] if objective == "refusal" else v.answer
        key = key_only and objective != "refusal"
        enc += [encode_qa(tokenizer, q, answer, max_len, key) for q in v.questions]
    return [collate(enc[i:i + chunk], tokenizer.pad_token_id) for i in range(0, len(enc), chunk)]


def qa_batches(tokenizer, items, max_len: int, chunk: int = CHUNK, key_only: bool = False) -> list[dict]:
    enc = [encode_qa(tokenizer, q.question, q.answer, max_len, key_only) for q in items]
    return [collate(enc[i:i + chunk], tokenizer.pad_token_id) for i in range(0, len(enc), chunk)]


def _sign(objective: str) -> float:
    """``ascent`` maximises the answer NLL; ``refusal`` and ``descent`` minimise it."""
    if objective not in ("ascent", "refusal", "descent"):
        raise ValueError(f"unknown objective '{objective}'")
    return -1.0 if objective == "ascent" else 1.0


# padded tokens (sequences x length) per backward pass: a pass keeps every layer's activations,
# about 2.4 MB per token on SmolLM2-135M (one 40-sequence batch of 4,200 tokens peaked at 10.8 GB),
# so batches are cut into row slices of at most this many tokens before a backward pass (about the
# 1 GB of activations R2F's one-pass path keeps by default: unlearn.activation_budget_mb)
BACKWARD_TOKENS = 512


def micro_batches(batch: dict, max_tokens: int = BACKWARD_TOKENS):
    """Contiguous row slices of a right-padded batch with at most ``max_tokens`` padded tokens each
    (at least one row), trailing all-pad columns trimmed."""
    n, t = batch["input_ids"].shape
    step = max(1, max_tokens // max(1, t))
    for s in range(0, n, step):
        sub = {k: v[s:s + step] for k, v in batch.items()}
        width = max(1, int(sub["attention_mask"].sum(1).max()))
        yield {k: v[:, :width] for k, v in sub.items()}


def _backward_over(model, batches, objective, retain_batches=None, retain_weight=0.0) -> float:
    """Backward of the mean unlearning loss over all sequences in ``batches``; returns the loss. The
    loss is a sum over sequences, so each pass runs on a micro-batch (:func:`micro_batches`)."""
    n = sum(b["input_ids"].shape[0] for b in batches)
    total = 0.0
    for b in (m for batch in batches for m in micro_batches(batch)):
        loss = _sign(objective) * token_nll(model, b).sum() / n
        loss.backward()
        total += loss.item()
    if retain_weight and retain_batches:
        m = sum(b["input_ids"].shape[0] for b in retain_batches)
        for b in (mb for batch in retain_batches for mb in micro_batches(batch)):
            loss = retain_weight * token_nll(model, b).sum() / m
            loss.backward()
            total += loss.item()
    return total


class GramHooks:
    """Forward hooks accumulating K = sum_t x_t x_t^T over non-pad input tokens, per module."""

    def __init__(self, modules: dict):
        self.grams: dict = {}
        self.mask = None
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name):
        def fn(_mod, inputs, _out):
            x = inputs[0].detach()[self.mask].float()
            self.grams[name] = self.grams.get(name, 0) + x.T @ x
        return fn

    def remove(self) -> None:
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


def capture_activations(model, infos: Sequence[ModuleInfo], batches, with_stats: bool = True) -> ActivationCapture:
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
                    groups.setdefault((x.data_ptr(), tuple(x.shape)), []).append(n)
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


def _streamed_grams(model, infos: Sequence[ModuleInfo], batches) -> dict:
    """Uniform dense Grams summed inside the forward hooks, one product per group of modules reading
    the same input: memory of the ``in x in`` Grams, not of every token's inputs. A layer's inputs are
    held until the next layer starts, so no freed input's address is taken for another's."""
    import torch

    mods = dict(model.named_modules())
    acc: dict = {}
    leader: dict = {}
    state: dict = {"layer": None, "seen": {}, "mask": None}

    def hook(info):
        def fn(_m, inputs, _o):
            x = inputs[0]
            if state["layer"] != info.layer:
                state["layer"], state["seen"] = info.layer, {}
            key = (x.data_ptr(), tuple(x.shape))
            first = state["seen"].setdefault(key, (info.name, x))[0]
            leader[info.name] = first
            if first == info.name:
                xm = x.detach().float().reshape(-1, x.shape[-1])[state["mask"]]
                acc[first] = acc[first] + xm.T @ xm if first in acc else xm.T @ xm
        return fn

    handles = [mods[i.name].register_forward_hook(hook(i)) for i in infos]
    try:
        with torch.inference_mode():
            for b in batches:
                state.update(layer=None, seen={}, mask=b["attention_mask"].reshape(-1).bool())
                answer_forward(model, b)  # no logits formed
    finally:
        state["seen"] = {}
        for h in handles:
            h.remove()
    return {i.name: acc[leader[i.name]] for i in infos}


def activation_grams(model, infos: Sequence[ModuleInfo], batches,
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


def top_bases(grams: dict, r: int) -> dict:
    """:func:`top_basis` of every Gram, computed once per distinct Gram (q/k/v share one)."""
    cache: dict = {}
    out = {}
    for n, k in grams.items():
        key = id(k)
        if key not in cache:
            cache[key] = top_basis(k, r)
        out[n] = cache[key]
    return out


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


def _backward_with_grams(model, modules: dict, batches, objective, grams_out: dict) -> None:
    hooks = GramHooks(modules)
    n = sum(b["input_ids"].shape[0] for b in batches)
    try:
        for b in batches:
            hooks.mask = b["attention_mask"].bool()
            (_sign(objective) * token_nll(model, b).sum() / n).backward()
    finally:
        hooks.remove()
    grams_out.update(hooks.grams)


@dataclass
class LoraGrad:
    A: torch.Tensor       # r x in
    grad_B: torch.Tensor  # out x r
    scaling: float
    grad_A: torch.Tensor | None = None  # r x in; zero with peft's B = 0 init


def lora_gradients(model, infos: Sequence[ModuleInfo], batches, rank: int, alpha: float,
                   objective: str = "ascent", A_init: dict | None = None,
                   retain_batches=None, retain_weight: float = 0.0, seed: int = 0,
                   grams_out: dict | None = None) -> dict[str, LoraGrad]:
    """Mean LoRA gradients over all view sequences via peft (B = 0, so grad_A = 0).

    ``A_init`` maps module names to an ``r x in`` A; otherwise peft's default init (seeded).
    ``grams_out``, if given, receives each module's activation Gram from this same forward pass.
    The model is returned to its exact prior state (adapters unloaded, requires_grad restored).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                     target_modules=[i.name for i in infos], init_lora_weights=True)
    import warnings

    with warnings.catch_warnings():  # transformers 5 deprecation noise from inside peft
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, cfg)
    try:
        mods = dict(peft_model.base_model.model.named_modules())
        for info in infos:
            layer = mods[info.name]
            if A_init is not None:
                layer.lora_A["default"].weight.data.copy_(A_init[info.name])
        peft_model.zero_grad(set_to_none=True)
        if grams_out is not None:
            _backward_with_grams(peft_model, {i.name: mods[i.name].base_layer for i in infos},
                                 batches, objective, grams_out)
            if retain_weight and retain_batches:
                _backward_over(peft_model, [], objective, retain_batches, retain_weight)
        else:
            _backward_over(peft_model, batches, objective, retain_batches, retain_weight)
        out = {}
        for info in infos:
            layer = mods[info.name]
            a = layer.lora_A["default"].weight
            out[info.name] = LoraGrad(a.detach().clone(), layer.lora_B["default"].weight.grad.detach().clone(),
                                      float(layer.scaling["default"]),
                                      a.grad.detach().clone() if a.grad is not None else None)
    finally:
        peft_model.unload()
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, True))
            p.grad = None
    return out


@contextmanager
def grads_only_for(model, keep=()):
    """Within: only the parameters in ``keep`` require grad (none by default) and no ``.grad`` is
    left over; afterwards every parameter's ``requires_grad`` is restored and its ``.grad`` cleared."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    wanted = {id(p) for p in keep}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in wanted)
            p.grad = None
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
            p.grad = None


def full_gradients(model, infos: Sequence[ModuleInfo], batches, objective: str = "ascent",
                   retain_batches=None, retain_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Exact gradient of the mean unlearning loss w.r.t. each module's full weight (out x in)."""
    mods = dict(model.named_modules())
    with grads_only_for(model, [mods[i.name].weight for i in infos]):
        _backward_over(model, batches, objective, retain_batches, retain_weight)
        out = {}
        for i in infos:  # hand over the .grad tensors themselves: no second gradient-sized copy
            w = mods[i.name].weight
            out[i.name], w.grad = w.grad.detach(), None
        return out
