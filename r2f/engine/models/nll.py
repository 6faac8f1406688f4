"""The answer-token NLL, the loss of training, gradients and evaluation: prompt tokens carry the
label -100 (:mod:`r2f.engine.models.encoding`), and logits are computed only at the positions that
predict a label."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from r2f.engine.models.encoding import collate, encode_qa

if TYPE_CHECKING:  # heavy imports stay lazy
    import torch


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


def token_nll(model, batch: dict) -> torch.Tensor:
    """Per-sequence mean answer-token NLL (shape [batch]); differentiable. The output layer runs at
    answer positions only, in chunks of bounded size (:mod:`r2f.engine.models.head`)."""
    from r2f.engine.models.head import answer_forward

    st = answer_forward(model, batch)
    return st.per_row_mean(st.token_nll())


def aligned(logits: torch.Tensor, positions: torch.Tensor | None, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` with ``labels[:, t]`` the token ``logits[:, t]`` predicts (-100: none), for
    logits from :func:`answer_logits` (at ``positions``, or at every position when it is None)."""
    labels = batch["labels"][:, 1:]
    if positions is None:
        return logits[:, :-1], labels
    return logits, labels[:, positions]


def nll_from_logits(logits: torch.Tensor, positions: torch.Tensor | None, batch: dict) -> torch.Tensor:
    """:func:`token_nll` from logits already computed: at ``positions`` (from
    :func:`answer_logits`), or at every position when ``positions`` is None."""
    import torch.nn.functional as F

    logits, labels = aligned(logits, positions, batch)
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    n_tok = (labels != -100).sum(1).clamp(min=1)
    return nll.sum(1) / n_tok


def mean_nll(model, tokenizer, items, max_len: int, batch_size: int = 32) -> float:
    """Mean answer-token NLL of QA items (inference only)."""
    import torch

    enc = [encode_qa(tokenizer, q.question, q.answer, max_len) for q in items]
    vals = []
    with torch.inference_mode():
        for i in range(0, len(enc), batch_size):
            vals.append(token_nll(model, collate(enc[i:i + batch_size], tokenizer.pad_token_id)))
    return float(torch.cat(vals).mean())
