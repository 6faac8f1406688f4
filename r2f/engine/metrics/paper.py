"""The R2F paper's metrics as pure functions: USR's matching rule, GUR, RAP and identity drift.

Matching rule of USR (documented in docs/evaluation.md): the *key content* of an answer is its set of
key words (:func:`r2f.engine.models.encoding.key_tokens`, the words a ``loss_tokens: key`` loss labels):
stemmed word tokens (rouge-score's tokenizer, Porter stemmer) minus stopwords and minus words that
already occur in the question (repeating the question is not recall). A generation *still contains*
the answer when it holds at least ``KEY_RECALL`` of the key tokens; an answer with no key tokens
falls back to all of its tokens. A forget prompt counts as *unlearned* when its greedy answer no
longer contains the answer's key content.
"""

from __future__ import annotations

from collections.abc import Sequence

from r2f.engine.models.encoding import key_tokens, tokens

KEY_RECALL = 0.5


def contains_answer(generation: str, question: str, answer: str, threshold: float = KEY_RECALL) -> bool:
    """Whether ``generation`` still holds at least ``threshold`` of the answer's key tokens."""
    key = key_tokens(question, answer)
    if not key:
        return False
    return len(key & set(tokens(generation))) / len(key) >= threshold


def usr(hits: Sequence[bool]) -> float:
    """Unlearning success rate: share of prompts whose answer no longer contains the key content."""
    if not hits:
        raise ValueError("usr: no prompts")
    return sum(not h for h in hits) / len(hits)


def gur(utility: float, reference_utility: float) -> float:
    """General utility retention: the unlearned model's utility as a fraction of the original's."""
    if not reference_utility > 0:
        raise ValueError(f"gur: reference utility must be > 0, got {reference_utility}")
    return utility / reference_utility


def mean_kl_tensor(p_logits, q_logits, mask):
    """Mean KL(p || q) of next-token distributions over the positions where ``mask`` is true, as a
    (differentiable) 0-d tensor; :func:`mean_kl` is its float value."""
    import torch

    lp = torch.log_softmax(p_logits.float(), -1)
    lq = torch.log_softmax(q_logits.float(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    m = mask.bool()
    if not m.any():
        raise ValueError("drift: no positions to compare")
    return kl[m].mean()


def mean_kl(p_logits, q_logits, mask) -> float:
    """Mean KL(p || q) of next-token distributions over the positions where ``mask`` is true
    (identity drift: p = original model, q = unlearned model)."""
    return float(mean_kl_tensor(p_logits, q_logits, mask))
