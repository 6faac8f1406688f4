"""TOFU data: typed loaders for every split, with the forget/retain/holdout relations checked on load.

Every QA item gets a stable id: ``tofu-NNNN`` (its row in ``full``; author = row // 20) for the
fictitious authors, ``holdout-NNNN`` for the holdout authors, ``real_authors-NNN`` /
``world_facts-NNN`` for the general-knowledge splits.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from r2f.errors import R2FError

QA_PER_AUTHOR = 20
N_AUTHORS = 200
SPLITS = (
    "full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99",
    "holdout01", "holdout05", "holdout10", "real_authors", "world_facts",
)
PERTURBED = {
    "forget01": "forget01_perturbed", "forget05": "forget05_perturbed",
    "forget10": "forget10_perturbed", "retain": "retain_perturbed",
    "real_authors": "real_authors_perturbed", "world_facts": "world_facts_perturbed",
}
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


class DataError(R2FError, ValueError):
    """A data file is missing, malformed or breaks a TOFU relation; the message names file and row."""


@dataclass(frozen=True)
class QA:
    id: str
    question: str
    answer: str
    paraphrased_question: str | None = None
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = field(default=())

    @property
    def author(self) -> int | None:
        """Author index (0..199) for TOFU's fictitious authors, else None."""
        if self.id.startswith("tofu-"):
            return int(self.id[5:]) // QA_PER_AUTHOR
        return None

    def digest(self) -> str:
        """sha256 of question+answer: what logs and lineage record instead of the text."""
        return hashlib.sha256(f"{self.question}\x00{self.answer}".encode()).hexdigest()


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {exc.start} of the line)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from exc
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected an object")
            for key in ("question", "answer"):
                if not isinstance(obj.get(key), str) or not obj[key].strip():
                    raise DataError(f"{path}:{lineno}: field '{key}' must be a non-empty string")
            rows.append(obj)
    return rows


def verify_manifest(root: Path) -> None:
    """Check every file listed in ``MANIFEST.sha256`` (raises DataError naming the first bad file)."""
    manifest = root / "MANIFEST.sha256"
    if not manifest.is_file():
        raise DataError(f"{manifest}: file not found")
    for line in manifest.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = root / name.strip()
        if not path.is_file():
            raise DataError(f"{path}: listed in MANIFEST.sha256 but missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DataError(f"{path}: sha256 differs from MANIFEST.sha256")


class Tofu:
    """All TOFU splits from one folder, loaded lazily and checked once."""

    def __init__(self, root: str | Path, verify: bool = True):
        self.root = Path(root)
        if verify:
            verify_manifest(self.root)
        self._full = _read_jsonl(self.root / "full.json")
        self._index = {(r["question"], r["answer"]): i for i, r in enumerate(self._full)}
        self._names: dict[int, str] | None = None
        self._check_relations()

    # -- loading --------------------------------------------------------------------------------
    def split(self, name: str) -> list[QA]:
        """Items of a split, with paraphrases/perturbations attached where TOFU provides them."""
        if name not in SPLITS and name != "retain_perturbed":
            raise DataError(f"unknown split '{name}'; expected one of {', '.join(SPLITS)}")
        if name == "full":
            return [QA(f"tofu-{i:04d}", r["question"], r["answer"]) for i, r in enumerate(self._full)]
        if name.startswith(("forget", "retain")):
            pert = PERTURBED.get(name) or ("retain_perturbed" if name == "retain_perturbed" else None)
            rows = _read_jsonl(self.root / f"{pert or name}.json")
            return [self._qa(f"tofu-{self._row(name, j, r):04d}", r) for j, r in enumerate(rows)]
        if name.startswith("holdout"):
            rows = _read_jsonl(self.root / f"{name}.json")
            return [QA(f"holdout-{j:04d}", r["question"], r["answer"]) for j, r in enumerate(rows)]
        rows = _read_jsonl(self.root / f"{PERTURBED[name]}.json")
        return [self._qa(f"{name}-{j:03d}", r) for j, r in enumerate(rows)]

    def authors(self, authors: list[int] | range) -> list[QA]:
        """All QA of the given author indices, in `full` order."""
        full = self.split("full")
        return [qa for a in authors for qa in full[a * QA_PER_AUTHOR:(a + 1) * QA_PER_AUTHOR]]

    def author_names(self) -> dict[int, str]:
        """``index -> full name`` of TOFU's fictitious authors, derived from the data (TOFU ships no
        name field): per author, the longest capitalised name (2+ words, particles like "de"/"al"
        allowed, possessive stripped) that occurs in no other author's rows and in at least half as
        many of its own rows as its most frequent one; failing that, one in half of its rows that
        another author shares (99 and 174 are both "Phuong Tran"). Authors without a name (88 is
        only ever "the fictitious author") are left out: request them by index."""
        if self._names is None:
            self._names = _derive_names(self._full)
        return dict(self._names)

    def authors_named(self, name: str) -> list[int]:
        """Indices of the authors called ``name`` (case and spacing ignored); TOFU reuses a few
        names, so this can be more than one."""
        key = _norm_name(name)
        return sorted(a for a, n in self.author_names().items() if _norm_name(n) == key)

    @staticmethod
    def forget_authors(split: str) -> range:
        n = {"forget01": 2, "forget05": 10, "forget10": 20}[split]
        return range(N_AUTHORS - n, N_AUTHORS)

    def idontknow(self) -> list[str]:
        path = self.root / "idontknow.jsonl"
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise DataError(f"{path}: no refusal strings")
        return lines

    # -- relations ------------------------------------------------------------------------------
    def _row(self, split: str, j: int, r: dict) -> int:
        i = self._index.get((r["question"], r["answer"]))
        if i is None:
            raise DataError(f"{self.root / split}.json: row {j + 1} is not in full.json")
        return i

    @staticmethod
    def _qa(qid: str, r: dict) -> QA:
        pert = r.get("perturbed_answer") or ()
        if not isinstance(pert, list | tuple) or not all(isinstance(p, str) for p in pert):
            raise DataError(f"{qid}: perturbed_answer must be a list of strings")
        return QA(qid, r["question"], r["answer"], r.get("paraphrased_question"),
                  r.get("paraphrased_answer"), tuple(pert))

    def _check_relations(self) -> None:
        n = len(self._full)
        if n != N_AUTHORS * QA_PER_AUTHOR:
            raise DataError(f"{self.root / 'full.json'}: expected 4000 rows, found {n}")
        for forget, retain in RETAIN_OF.items():
            f_rows = _read_jsonl(self.root / f"{forget}.json")
            r_rows = _read_jsonl(self.root / f"{retain}.json")
            if f_rows != self._full[n - len(f_rows):]:
                raise DataError(f"{self.root / forget}.json: is not the tail of full.json")
            if r_rows != self._full[:len(r_rows)]:
                raise DataError(f"{self.root / retain}.json: is not the head of full.json")
            if len(f_rows) + len(r_rows) != n:
                raise DataError(f"{forget} + {retain} do not partition full.json")
            pert = _read_jsonl(self.root / f"{PERTURBED[forget]}.json")
            if [(p["question"], p["answer"]) for p in pert] != [(r["question"], r["answer"]) for r in f_rows]:
                raise DataError(f"{self.root / PERTURBED[forget]}.json: question/answer differ from {forget}.json")
        questions = {r["question"] for r in self._full}
        for h in ("holdout01", "holdout05", "holdout10"):
            for j, r in enumerate(_read_jsonl(self.root / f"{h}.json")):
                if r["question"] in questions:
                    raise DataError(f"{self.root / h}.json: row {j + 1} also appears in full.json")


_NAME = re.compile(r"\b[A-Z][\w'’-]*(?: (?:(?:de|la|del|van|von|der|da|dos|bin|ibn|al|el) )?[A-Z][\w'’-]*)+")
_MIN_NAME_ROWS = 5


def _norm_name(name: str) -> str:
    return " ".join(unicodedata.normalize("NFC", name).casefold().split())


def _name_candidates(text: str) -> set[str]:
    out = set()
    for m in _NAME.finditer(text):
        toks = [re.sub(r"['’]s?$", "", t) for t in m.group(0).split(" ")]
        for i in range(len(toks)):
            for j in range(i + 2, len(toks) + 1):
                if toks[i][:1].isupper() and toks[j - 1][:1].isupper():
                    out.add(" ".join(toks[i:j]))
    return out


def _derive_names(full: list[dict]) -> dict[int, str]:
    per = []
    for a in range(N_AUTHORS):
        c: Counter = Counter()
        for r in full[a * QA_PER_AUTHOR:(a + 1) * QA_PER_AUTHOR]:
            c.update(_name_candidates(f"{r['question']} {r['answer']}"))
        per.append(c)
    owners = Counter(k for c in per for k in c)
    names = {}
    for a, c in enumerate(per):
        own = {k: v for k, v in c.items() if owners[k] == 1 and v >= _MIN_NAME_ROWS}
        if not own:  # a name two authors share (TOFU has such pairs): kept, ambiguous by design
            own = {k: v for k, v in c.items() if v >= QA_PER_AUTHOR // 2}
        if own:
            best = max(own.values())
            names[a] = max((k for k, v in own.items() if v >= best / 2), key=lambda k: (len(k.split()), own[k], k))
    return names


@lru_cache(maxsize=4)
def load_tofu(root: str) -> Tofu:
    """Cached loader (one verification per process and folder)."""
    return Tofu(root)
