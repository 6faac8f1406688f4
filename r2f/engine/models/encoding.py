"""A QA pair as token ids with its label mask: the loss is the answer-token NLL, so prompt tokens
are masked with -100; with ``unlearn.loss_tokens: key`` only the answer's *key words* are labelled.

Key words (also USR's matching rule, :func:`r2f.engine.metrics.paper.contains_answer`): the stemmed
word tokens of the answer (rouge-score's tokenizer, Porter stemmer) minus stopwords and minus words
that already occur in the question; an answer with none falls back to all of its tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from r2f.engine.models.prompt import prompt_format, prompt_ids

STOPWORDS = frozenset([
    "a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "by", "for", "with", "from",
    "as", "into", "about", "over", "after", "before", "under", "between", "is", "are", "was", "were", "be",
    "been", "being", "am", "do", "does", "did", "has", "have", "had", "having", "it", "its", "it's", "this",
    "that", "these", "those", "he", "she", "they", "them", "his", "her", "their", "hers", "theirs", "him",
    "i", "me", "my", "we", "our", "you", "your", "who", "whom", "whose", "which", "what", "when", "where",
    "why", "how", "not", "no", "nor", "so", "than", "too", "very", "can", "could", "would", "should", "will",
    "shall", "may", "might", "must", "also", "there", "here", "such", "each", "both", "all", "any", "some",
    "more", "most", "other", "only", "own", "same", "s", "t", "just"
])


@lru_cache(maxsize=1)
def _word_tokenizer():
    from rouge_score.tokenizers import DefaultTokenizer

    return DefaultTokenizer(use_stemmer=True)


def tokens(text: str) -> list[str]:
    """Stemmed word tokens of ``text`` (rouge-score's tokenizer)."""
    return _word_tokenizer().tokenize(text)


def key_tokens(question: str, answer: str) -> set[str]:
    """Stemmed content words of the answer that the question does not already contain."""
    ans = set(tokens(answer))
    key = ans - STOPWORDS - set(tokens(question))
    return key or ans


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens


def encode_qa(tokenizer, question: str, answer: str, max_len: int, key_only: bool = False) -> Encoded:
    """Token ids of prompt+answer with the answer-only label mask (answer truncated to fit).

    ``key_only``: label only the answer tokens that overlap its key words (:func:`key_tokens`), e.g.
    only "Canberra" in "The capital of Australia is Canberra" (``unlearn.loss_tokens: key``). Falls
    back to every answer token when no key word is found."""
    p = prompt_ids(tokenizer, question)
    lead = "" if prompt_format(tokenizer) == "chat" else " "
    enc = tokenizer(lead + answer, add_special_tokens=False, return_offsets_mapping=key_only)
    a = enc["input_ids"] + [tokenizer.eos_token_id]
    p = p[-(max_len // 2):]  # very long prompts keep their end, next to the answer
    a = a[: max_len - len(p)]
    labels = list(a)
    if key_only:
        keep = _key_token_mask(question, answer, len(lead), enc["offset_mapping"])
        if any(keep[: len(a)]):
            labels = [t if k else -100 for t, k in zip(a, keep + [False])]
    return Encoded(p + a, [-100] * len(p) + labels)


def _key_token_mask(question: str, answer: str, shift: int, offsets) -> list[bool]:
    key = key_tokens(question, answer)
    spans = [(m.start() + shift, m.end() + shift) for m in re.finditer(r"\w+", answer) if set(tokens(m.group())) & key]
    return [any(a < y and b > x for x, y in spans) for a, b in offsets]


def collate(batch: Sequence[Encoded], pad_id: int) -> dict:
    """Right-padded batch tensors: input_ids, attention_mask, labels."""
    import torch

    n = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, e in enumerate(batch):
        k = len(e.input_ids)
        ids[i, :k] = torch.tensor(e.input_ids)
        labels[i, :k] = torch.tensor(e.labels)
        mask[i, :k] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
