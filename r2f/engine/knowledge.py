"""Real-knowledge forget sets (RWKU-style) for pretrained targets, and their paper metrics.

A pretrained model did not learn TOFU's fictitious authors, so unlearning is measured on facts it
demonstrably knows: TOFU's ``real_authors`` and ``world_facts`` questions whose greedy answer from
the target contains the reference answer's key content (the USR matching rule of
:mod:`r2f.engine.metrics.paper`).

What is unlearned (gradients, eta calibration, the baselines' training text) is the target's *own*
answer, cut right after the word at which it first holds the fact ("The capital of Australia is
Canberra"), not TOFU's bare reference ("Canberra"): an instruction-tuned model never says the bare
word at the start of its turn, so the reference's NLL is high (~8 nats/token on SmolLM2) and
ascending it moves probability the model does not use. With ``unlearn.loss_tokens: key`` (the
real-model setting) the loss then covers the fact's words only. USR and GUR still match
generations against the reference.

Known items are split per source, by a seeded shuffle, into

* **forget** targets (what a deletion request removes),
* **calibration** neighbours (eta's retain set; never evaluated on), and
* **neighbour** items (retained knowledge of the same kind; GUR is measured on them).

Metrics (docs/evaluation.md):

* ``usr``: share of forget prompts (original question plus unseen rule paraphrases) that the target
  answered before and the unlearned model no longer answers. ``usr_all`` counts every prompt.
* ``gur``: share of neighbour prompts answered before that are still answered after.
* ``rap``: the relearning attack of :func:`r2f.engine.paper_eval.rap_eval`, fine-tuning on an unseen
  paraphrase of each forget question; the answer probability on the original questions after it.
* ``identity_drift``: mean KL(target || unlearned) over every position of the neighbour QA texts.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from r2f.config import Config
from r2f.engine.data import QA
from r2f.engine.metrics.paper import contains_answer
from r2f.engine.paper_eval import drift_eval, rap_eval, usr_prompts
from r2f.engine.scoring import generate

SOURCES = ("real_authors", "world_facts")


@dataclass(frozen=True)
class KnowledgeSplit:
    forget: list[QA]
    calibration: list[QA]
    neighbours: list[QA]
    known: dict[str, int]  # per source: known items / all items
    own: dict[str, str] = dataclasses.field(default_factory=dict)  # item id -> the target's own answer

    def as_said(self, items: Sequence[QA]) -> list[QA]:
        """``items`` with the target's own answer in place of the reference (what is unlearned)."""
        return [dataclasses.replace(q, answer=self.own.get(q.id, q.answer)) for q in items]

    def ids(self) -> dict[str, list[str]]:
        return {k: [q.id for q in getattr(self, k)] for k in ("forget", "calibration", "neighbours")}


def answered(model, tok, cfg: Config, prompts: Sequence[tuple[str, str]], gens_out: list | None = None) -> list[bool]:
    """Whether the greedy answer to each (question, answer) still contains the answer's key content."""
    gens = generate(model, tok, [q for q, _ in prompts], cfg.models.max_len, cfg.eval.max_new_tokens,
                    cfg.eval.batch_size)
    if gens_out is not None:
        gens_out.extend(gens)
    return [contains_answer(g, q, a, cfg.eval.key_recall) for g, (q, a) in zip(gens, prompts)]


def own_answer(generation: str, question: str, answer: str, key_recall: float) -> str:
    """The generation up to the end of the first word at which it holds the fact."""
    text = generation.strip()
    for m in re.finditer(r"\w+", text):
        if contains_answer(text[:m.end()], question, answer, key_recall):
            return text[:m.end()]
    return text


def known_split(model, tok, cfg: Config, tofu, n_forget: int, n_calibration: int, seed: int = 0) -> KnowledgeSplit:
    """Known items of each source, split into forget / calibration / neighbours (per source, so
    both kinds of fact are forgotten and retained)."""
    forget, calib, neigh, known, own = [], [], [], {}, {}
    for k, src in enumerate(SOURCES):
        items = tofu.split(src)
        gens: list[str] = []
        hits = answered(model, tok, cfg, [(q.question, q.answer) for q in items], gens)
        ok = [q for q, h in zip(items, hits) if h]
        own.update({q.id: own_answer(g, q.question, q.answer, cfg.eval.key_recall)
                    for q, g, h in zip(items, gens, hits) if h})
        known[src] = len(ok)
        known[f"{src}_total"] = len(items)
        random.Random(seed).shuffle(ok)
        nf = n_forget // len(SOURCES) + (k < n_forget % len(SOURCES))
        nc = n_calibration // len(SOURCES) + (k < n_calibration % len(SOURCES))
        if len(ok) < nf + nc + 2:
            raise ValueError(f"{src}: the model answers only {len(ok)} items; need {nf + nc + 2} "
                             f"({nf} forget + {nc} calibration + 2 neighbours)")
        forget += ok[:nf]
        calib += ok[nf:nf + nc]
        neigh += ok[nf + nc:]
    return KnowledgeSplit(forget, calib, neigh, known, own)


def baseline(model, tok, cfg: Config, split: KnowledgeSplit) -> dict:
    """What the untouched target answers: the prompt masks USR and GUR are conditioned on."""
    out = {}
    for part in ("forget", "neighbours"):
        prompts = usr_prompts(cfg, getattr(split, part))
        out[part] = {"prompts": prompts, "hits": answered(model, tok, cfg, [(p[2], p[3]) for p in prompts])}
    return out


def _rate(before: list[bool], after: list[bool], still: bool) -> tuple[float, int]:
    pairs = [(b, a) for b, a in zip(before, after) if b]
    if not pairs:
        return float("nan"), 0
    return sum(a == still for _, a in pairs) / len(pairs), len(pairs)


def rap_items(cfg: Config, items: Sequence[QA]) -> list[QA]:
    """Forget items whose ``paraphrased_question`` is an unseen rule paraphrase (for the relearning
    attack: it fine-tunes on the paraphrase, then asks the original question; pass the items with
    the target's own answers, :meth:`KnowledgeSplit.as_said`)."""
    prompts = usr_prompts(cfg, items)
    out = []
    for it in items:
        unseen = [p[2] for p in prompts if p[0] == it.id and p[1] == "unseen"]
        out.append(dataclasses.replace(it, paraphrased_question=unseen[0] if unseen else it.question))
    return out


def evaluate(original, model, tok, cfg: Config, split: KnowledgeSplit, base: dict, rap: bool = True) -> dict:
    """USR, GUR, RAP and identity drift of ``model`` against the untouched ``original``."""
    res = {}
    for part, key, still in (("forget", "usr", False), ("neighbours", "gur", True)):
        prompts, before = base[part]["prompts"], base[part]["hits"]
        after = answered(model, tok, cfg, [(p[2], p[3]) for p in prompts])
        res[key], res[f"{key}_n"] = _rate(before, after, still)
        if key == "usr":
            res["usr_all"] = sum(not a for a in after) / len(after)
    res["identity_drift"] = drift_eval(original, model, tok, cfg,
                                       [(q.question, q.answer) for q in split.as_said(split.neighbours)]).value
    if rap:
        res["rap"] = rap_eval(model, tok, cfg, rap_items(cfg, split.as_said(split.forget))).value
    return res
