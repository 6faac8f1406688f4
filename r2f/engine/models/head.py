"""The output layer at answer positions, in chunks: the vocabulary never multiplies the peak memory.

A causal LM's forward ends in ``[B, T, vocab]`` logits. With a 262 k-token vocabulary and a batch of
32 answers that is gigabytes in float32, then as much again for the log-softmax and for its
gradient. Every loss and score here needs only the rows that predict an answer token, and of each
row only a few numbers (the label's log-probability, ``sum p^2``, the entropy's moments, the
argmax). So :func:`answer_forward` runs the model with its output layer swapped for a capture (the
final hidden states come back, no logits are formed), keeps the hidden states at answer positions,
and :class:`AnswerStates` applies the real output layer to at most ``LOGIT_BUDGET`` logits at a
time. With gradients, each chunk is checkpointed: the backward recomputes one chunk's logits at a
time instead of keeping them all.

Models whose forward changes the logits after the output layer are handled where the change is
known (Gemma's ``final_logit_softcapping``, Cohere's ``logit_scale``); for any other model a probe
compares the chunked path with the model's own logits once, and a model that fails it is scored
from its own logits (the previous behaviour: correct, without the memory bound).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports stay lazy
    import torch

LOGIT_BUDGET = 2**24  # logits alive at once per chunk (64 MB in float32)
_PROBE_ATTR = "_r2f_chunked_head_ok"


@dataclass
class AnswerStates:
    """The final hidden states of one batch at the positions that predict a label.

    ``h``: ``[N, H]``, row-major over (sequence, position); ``labels``: ``[N]``; ``rows``: the
    sequence of each; ``head``: hidden states -> float32 logits (identity when ``h`` already holds the
    model's own logits: the fallback)."""

    h: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor
    n_rows: int
    head: Callable[[torch.Tensor], torch.Tensor]
    vocab: int

    @property
    def chunk(self) -> int:
        return max(1, LOGIT_BUDGET // max(1, self.vocab))

    def _chunks(self) -> Iterable[tuple[int, int]]:
        n = self.h.shape[0]
        for s in range(0, n, self.chunk):
            yield s, min(n, s + self.chunk)

    def _map(self, fn: Callable, *extra: torch.Tensor) -> torch.Tensor:
        """``fn(h_chunk, *extra_chunks)`` over the chunks, concatenated; checkpointed where gradients
        flow, so no chunk's logits outlive its own forward or backward."""
        import torch
        from torch.utils.checkpoint import checkpoint

        grad = torch.is_grad_enabled()
        out = []
        for s, e in self._chunks():
            args = (self.h[s:e], *(x[s:e] for x in extra))
            out.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
        if not out:
            return self.h.new_zeros(0, dtype=torch.float32)
        return torch.cat(out)

    def token_nll(self, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``[N]`` NLL of each answer token (of ``labels`` if given: sampled labels); differentiable."""
        import torch.nn.functional as F

        head = self.head
        return self._map(lambda h, y: F.cross_entropy(head(h), y, reduction="none"),
                         self.labels if labels is None else labels)

    def per_row_mean(self, values: torch.Tensor) -> torch.Tensor:
        """``[B]`` mean of per-token ``values`` over each sequence's answer tokens (0 for none)."""
        import torch

        total = torch.zeros(self.n_rows, dtype=values.dtype).index_add(0, self.rows, values)
        count = torch.bincount(self.rows, minlength=self.n_rows).clamp(min=1)
        return total / count

    def counts(self) -> list[int]:
        import torch

        return torch.bincount(self.rows, minlength=self.n_rows).tolist()

    def stats(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """Per answer token, no gradient: ``logp`` (the label's log-probability), ``sq`` (``sum p^2``),
        ``mu`` / ``sigma`` (mean and std of ``log p`` under ``p``: Min-k%++), ``argmax``."""
        import torch

        keys = tuple(keys)
        parts: dict[str, list] = {k: [] for k in keys}
        with torch.no_grad():
            for s, e in self._chunks():
                logp = torch.log_softmax(self.head(self.h[s:e].detach()), -1)
                p = logp.exp() if {"sq", "mu", "sigma"} & set(keys) else None
                if "logp" in keys:
                    parts["logp"].append(logp.gather(-1, self.labels[s:e, None])[:, 0])
                if "sq" in keys:
                    parts["sq"].append(p.square().sum(-1))
                if "mu" in keys or "sigma" in keys:
                    mu = (p * logp).sum(-1)
                    if "mu" in keys:
                        parts["mu"].append(mu)
                    if "sigma" in keys:
                        parts["sigma"].append(((p * logp.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt())
                if "argmax" in keys:
                    parts["argmax"].append(logp.argmax(-1))
                del logp, p
        empty = self.h.new_zeros(0, dtype=torch.float32)
        return {k: torch.cat(v) if v else empty for k, v in parts.items()}

    def sample_labels(self, generator) -> torch.Tensor:
        """``[N]`` labels drawn from the model's next-token distribution at each position (no grad)."""
        import torch

        out = []
        with torch.no_grad():
            for s, e in self._chunks():
                probs = torch.softmax(self.head(self.h[s:e].detach()), -1)
                out.append(torch.multinomial(probs, 1, generator=generator)[:, 0])
        return torch.cat(out) if out else self.labels[:0]


def loss_positions(batch: dict) -> torch.Tensor:
    """Positions whose logits predict a label in some row (``labels[:, t + 1] != -100``): the only
    logits a loss needs. Prompt positions are skipped, and with them most of the vocabulary
    projection (49 k x 576 on SmolLM2) and its [B, T, vocab] logits."""
    return (batch["labels"][:, 1:] != -100).any(0).nonzero().squeeze(1)


def answer_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, positions)``: the logits at :func:`loss_positions` only (transformers'
    ``logits_to_keep``), or all of them (positions None) for a model without that argument."""
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if not _keeps_logits(model):
        return model(**kw).logits, None
    pos = loss_positions(batch)
    return model(**kw, logits_to_keep=pos).logits, pos


def _keeps_logits(model) -> bool:
    """Whether the (peft-unwrapped) model's forward takes ``logits_to_keep``. Checked on the
    signature, so an error inside a forward is never mistaken for a missing argument."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _final_transform(config) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a known architecture's forward does to the output layer's result (float32 in and out)."""
    import torch

    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)

    def fn(x: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            x = x * scale
        if cap:
            x = torch.tanh(x / cap) * cap
        return x
    return fn


class _Capture:
    """Stands in for the output layer during one forward: keeps its input, returns a 1-wide dummy."""

    def __init__(self) -> None:
        self.h = None

    def __call__(self, x):
        self.h = x
        return x[..., :1]


@contextmanager
def _captured(base):
    import torch

    head = base.get_output_embeddings()
    cap = _Capture()
    wrapper = torch.nn.Module()
    wrapper.forward = cap  # an nn.Module so setattr on the model accepts it
    base.set_output_embeddings(wrapper)
    try:
        yield cap, head
    finally:
        base.set_output_embeddings(head)


@contextmanager
def _hooks_suspended(model):
    """Every module's forward and backward hooks set aside (the probe's forward must not reach the
    hooks a caller registered: they collect activations)."""
    saved = []
    for m in model.modules():
        saved.append((m, m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks))
        m._forward_hooks, m._forward_pre_hooks = type(m._forward_hooks)(), type(m._forward_pre_hooks)()
        m._backward_hooks, m._backward_pre_hooks = type(m._backward_hooks)(), type(m._backward_pre_hooks)()
    try:
        yield
    finally:
        for m, f, fp, b, bp in saved:
            m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks = f, fp, b, bp


def chunked_ok(model) -> bool:
    """Whether the chunked path reproduces the model's own logits (checked once per model on a
    short probe sequence, float32, hooks suspended; the result is kept on the model)."""
    import torch

    base = _base(model)
    known = getattr(base, _PROBE_ATTR, None)
    if known is not None:
        return known
    ok = False
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is not None and hasattr(base, "set_output_embeddings"):
        n = min(8, int(getattr(base.config, "vocab_size", 8) or 8))
        ids = torch.arange(1, n + 1).clamp(max=n - 1)[None]
        kw = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        modes = [(m, m.training) for m in model.modules()]
        model.eval()  # dropout would make the two forwards differ
        try:
            with _hooks_suspended(model), torch.no_grad(), torch.autocast("cpu", enabled=False):
                want = model(**kw).logits.float()
                with _captured(base) as (cap, head):
                    model(**kw)
                got = _final_transform(base.config)(head(cap.h).float())
            ok = got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-4, atol=1e-4))
        except (RuntimeError, TypeError, AttributeError, ValueError):
            ok = False
        finally:
            for m, training in modes:
                m.training = training
    setattr(base, _PROBE_ATTR, ok)
    return ok


def _select(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask [B, T-1], labels [N])``: the positions that predict a label, and those labels."""
    lab = batch["labels"][:, 1:]
    mask = lab != -100
    return mask, lab[mask]


def answer_forward(model, batch: dict) -> AnswerStates:
    """One forward over ``batch``; the hidden states at the positions that predict an answer token."""

    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    mask, labels = _select(batch)
    rows = mask.nonzero()[:, 0]
    n_rows = mask.shape[0]
    if chunked_ok(model):
        base = _base(model)
        transform = _final_transform(base.config)
        with _captured(base) as (cap, head):
            model(**kw)
        h = cap.h[:, :-1][mask]
        return AnswerStates(h, labels, rows, n_rows, lambda x: transform(head(x).float()),
                            int(head.weight.shape[0]))
    logits, pos = answer_logits(model, batch)  # the model's own logits (at answer positions if it can)
    if pos is None:
        logits = logits[:, :-1]
    else:
        mask = mask[:, pos]
    flat = logits[mask]
    return AnswerStates(flat, labels, rows, n_rows, lambda x: x.float(), int(flat.shape[-1]) if flat.numel() else 1)


def masked_states(model, batch: dict) -> AnswerStates:
    """Hidden states at every position of ``batch`` whose attention mask is set (labels unused: 0),
    for distribution-level comparisons (identity drift) with the same memory bound."""
    import torch

    mask = batch["attention_mask"].bool()
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    rows = mask.nonzero()[:, 0]
    zeros = torch.zeros(int(mask.sum()), dtype=torch.long)
    if chunked_ok(model):
        base = _base(model)
        transform = _final_transform(base.config)
        with _captured(base) as (cap, head):
            model(**kw)
        return AnswerStates(cap.h[mask], zeros, rows, mask.shape[0], lambda x: transform(head(x).float()),
                            int(head.weight.shape[0]))
    flat = model(**kw).logits[mask]
    return AnswerStates(flat, zeros, rows, mask.shape[0], lambda x: x.float(), int(flat.shape[-1]))


def mean_kl_chunked(p: AnswerStates, q: AnswerStates) -> torch.Tensor:
    """Mean KL(p || q) of next-token distributions over the states' positions (same positions in
    both), chunk by chunk."""
    import torch

    n = p.h.shape[0]
    if n == 0 or q.h.shape[0] != n:
        raise ValueError("drift: no positions to compare" if n == 0 else "drift: the two models' positions differ")
    step = max(1, LOGIT_BUDGET // max(p.vocab, q.vocab))
    total = torch.zeros((), dtype=torch.float64)
    for s in range(0, n, step):
        lp = torch.log_softmax(p.head(p.h[s:s + step]), -1)
        lq = torch.log_softmax(q.head(q.h[s:s + step]), -1)
        total = total + (lp.exp() * (lp - lq)).sum().double()
    return (total / n).float()
