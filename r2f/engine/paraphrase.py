"""Multi-view prompts: N views of each forget question, each paired with the original answer.

View 0 is the original question, view 1 TOFU's ``paraphrased_question`` when the split has one, and
the rest come from a pluggable :class:`Paraphraser` (default: deterministic rule-based rewrites).
Candidates are kept only when their word-level similarity to the original lies in
``[min_similarity, max_similarity]`` (too close adds nothing, too far may change the meaning), and
duplicates are dropped. When too few candidates survive, the surviving views are repeated so every
item has exactly N views (and the shortfall is counted in :attr:`Views.repeated`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Protocol

from r2f.engine.data import QA

SYNONYMS = {
    "author": "writer", "writer": "author", "novel": "book", "book": "work", "books": "works",
    "father": "dad", "mother": "mom", "parents": "family", "genre": "category",
    "writes": "pens", "written": "penned", "wrote": "penned", "famous": "well-known",
    "award": "prize", "received": "won", "profession": "occupation", "works": "writings",
    "influence": "shape", "influenced": "shaped", "themes": "topics", "style": "manner",
    "known": "recognised", "full": "complete", "city": "town",
}
WRAPPERS = (
    "Could you tell me: {q}",
    "{q} Please answer briefly.",
    "I would like to know this. {q}",
    "Here is a question about an author. {q}",
    "Answer the following question. {q}",
    "Quick question: {q}",
)


class Paraphraser(Protocol):
    """Anything that proposes paraphrases of a question (a model-based one may be plugged in)."""

    def candidates(self, question: str) -> list[str]: ...


class RuleParaphraser:
    """Deterministic rewrites: synonym substitution, contraction, and question wrappers."""

    def candidates(self, question: str) -> list[str]:
        q = question.strip()
        out = [_substitute(q)]
        contracted = re.sub(r"\bWhat is\b", "What's", q)
        contracted = re.sub(r"\bWho is\b", "Who's", contracted)
        out.append(contracted)
        body = q[0].lower() + q[1:] if q[:2] not in ("I ", "I'") else q
        out.append(f"Do you know {body.rstrip('?')}?")
        out.extend(w.format(q=q) for w in WRAPPERS)
        out.extend(w.format(q=_substitute(q)) for w in WRAPPERS[:3])
        return out


PARAPHRASERS: dict[str, type] = {"rules": RuleParaphraser}


def _substitute(q: str) -> str:
    def swap(m: re.Match) -> str:
        w = m.group(0)
        rep = SYNONYMS.get(w.lower())
        if rep is None:
            return w
        return rep.capitalize() if w[0].isupper() else rep
    return re.sub(r"[A-Za-z]+", swap, q)


def similarity(a: str, b: str) -> float:
    """Word-sequence similarity in [0, 1] (difflib ratio on lower-cased word lists)."""
    wa, wb = re.findall(r"\w+", a.lower()), re.findall(r"\w+", b.lower())
    return SequenceMatcher(None, wa, wb, autojunk=False).ratio()


@dataclass(frozen=True)
class Views:
    item_id: str
    questions: tuple[str, ...]  # N views; view 0 is the original question
    answer: str
    repeated: int  # how many views are repeats because too few candidates passed the filter


def make_views(item: QA, n: int, paraphraser: Paraphraser | None = None,
               min_similarity: float = 0.2, max_similarity: float = 0.97) -> Views:
    if n < 1:
        raise ValueError("n (views) must be >= 1")
    paraphraser = paraphraser or RuleParaphraser()
    chosen = [item.question]
    pool = ([item.paraphrased_question] if item.paraphrased_question else []) + paraphraser.candidates(item.question)
    seen = {item.question.strip().lower()}
    for cand in pool:
        if len(chosen) == n:
            break
        key = cand.strip().lower()
        if not cand.strip() or key in seen:
            continue
        s = similarity(item.question, cand)
        # TOFU's own paraphrase is human-written: keep it even when it rewords heavily.
        if cand is item.paraphrased_question or min_similarity <= s <= max_similarity:
            chosen.append(cand)
            seen.add(key)
    repeated = n - len(chosen)
    while len(chosen) < n:
        chosen.append(chosen[len(chosen) % max(1, n - repeated)])
    return Views(item.id, tuple(chosen), item.answer, repeated)


def make_all_views(items: list[QA], n: int, cfg=None, paraphraser: Paraphraser | None = None) -> list[Views]:
    lo = cfg.min_similarity if cfg else 0.2
    hi = cfg.max_similarity if cfg else 0.97
    if paraphraser is None and cfg is not None:
        paraphraser = PARAPHRASERS[cfg.paraphraser]()
    return [make_views(it, n, paraphraser, lo, hi) for it in items]
