"""The answer-token NLL, the loss of training, gradients and evaluation: prompt tokens carry the
label -100 (:mod:`r2f.engine.models.encoding`), and the output layer runs only at the positions
that predict a label, in chunks (:mod:`r2f.engine.models.head`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from r2f.engine.models.encoding import collate, encode_qa

if TYPE_CHECKING:  # heavy imports stay lazy
    import torch


def token_nll(model, batch: dict) -> torch.Tensor:
    """Per-sequence mean answer-token NLL (shape [batch]); differentiable. The output layer runs at
    answer positions only, in chunks of bounded size (:mod:`r2f.engine.models.head`)."""
    from r2f.engine.models.head import answer_forward

    st = answer_forward(model, batch)
    return st.per_row_mean(st.token_nll())


def mean_nll(model, tokenizer, items, max_len: int, batch_size: int = 32) -> float:
    """Mean answer-token NLL of QA items (inference only)."""
    import torch

    enc = [encode_qa(tokenizer, q.question, q.answer, max_len) for q in items]
    vals = []
    with torch.inference_mode():
        for i in range(0, len(enc), batch_size):
            vals.append(token_nll(model, collate(enc[i:i + batch_size], tokenizer.pad_token_id)))
    return float(torch.cat(vals).mean())
