"""Gradients of the unlearning loss: LoRA gradients through ``peft`` (base weights frozen, no
full-weight gradient materialised) and exact per-module full gradients (proxy training pairs and
evaluation only), the adapted modules and the batches they run on. The activation statistics the
decoders use are in :mod:`r2f.engine.grams`.

Sign convention: every gradient here is of the *unlearning loss* ``L_u`` (to be descended):
``ascent`` uses ``L_u = -NLL(answer | forget question)``, ``refusal`` uses
``L_u = NLL(refusal string | forget question)``; a retain term ``+ w * NLL(retain)`` is optional.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from r2f.engine.budget import DEFAULT_BUDGET_MB, budgeted_passes
from r2f.engine.grams import LAYER_RE, GramHooks
from r2f.engine.models.encoding import collate, encode_qa
from r2f.engine.models.nll import token_nll

if TYPE_CHECKING:
    import torch

    from r2f.engine.paraphrase import Views

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


def _backward_over(model, batches, objective, retain_batches=None, retain_weight=0.0,
                   hooks: GramHooks | None = None, budget_mb: float | None = DEFAULT_BUDGET_MB) -> float:
    """Backward of the mean unlearning loss over all sequences in ``batches``; returns the loss. The
    loss is a sum over sequences, so the passes run on row slices whose saved activations fit
    ``budget_mb`` (:func:`r2f.engine.budget.budgeted_passes`). ``hooks``: also sum the activation
    Grams of the forget batches (not of the retain term)."""
    n = sum(b["input_ids"].shape[0] for b in batches)
    total = [0.0]

    def forget(b):
        if hooks is not None:
            hooks.start(b)
        loss = _sign(objective) * token_nll(model, b).sum() / n
        loss.backward()
        total[0] += loss.item()

    budgeted_passes(model, batches, forget, budget_mb)
    if hooks is not None:
        hooks.stop()
    if retain_weight and retain_batches:
        m = sum(b["input_ids"].shape[0] for b in retain_batches)

        def retain(b):
            loss = retain_weight * token_nll(model, b).sum() / m
            loss.backward()
            total[0] += loss.item()

        budgeted_passes(model, retain_batches, retain, budget_mb)
    return total[0]


@dataclass
class LoraGrad:
    A: torch.Tensor       # r x in
    grad_B: torch.Tensor  # out x r
    scaling: float
    grad_A: torch.Tensor | None = None  # r x in; zero with peft's B = 0 init


def lora_gradients(model, infos: Sequence[ModuleInfo], batches, rank: int, alpha: float,
                   objective: str = "ascent", A_init: dict | None = None,
                   retain_batches=None, retain_weight: float = 0.0, seed: int = 0,
                   grams_out: dict | None = None, budget_mb: float | None = DEFAULT_BUDGET_MB) -> dict[str, LoraGrad]:
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
        hooks = GramHooks({i.name: mods[i.name].base_layer for i in infos}) if grams_out is not None else None
        try:
            _backward_over(peft_model, batches, objective, retain_batches, retain_weight, hooks, budget_mb)
        finally:
            if hooks is not None:
                hooks.remove()
        if hooks is not None:
            grams_out.update(hooks.result([i.name for i in infos]))
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
                   retain_batches=None, retain_weight: float = 0.0,
                   budget_mb: float | None = DEFAULT_BUDGET_MB) -> dict[str, torch.Tensor]:
    """Exact gradient of the mean unlearning loss w.r.t. each module's full weight (out x in); the
    passes cut to ``budget_mb`` of saved activations (:func:`r2f.engine.budget.budgeted_passes`)."""
    mods = dict(model.named_modules())
    with grads_only_for(model, [mods[i.name].weight for i in infos]):
        _backward_over(model, batches, objective, retain_batches, retain_weight, budget_mb=budget_mb)
        out = {}
        for i in infos:  # hand over the .grad tensors themselves: no second gradient-sized copy
            w = mods[i.name].weight
            out[i.name], w.grad = w.grad.detach(), None
        return out
