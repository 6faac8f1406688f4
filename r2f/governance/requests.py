"""Deletion requests: a YAML/JSON file naming what must be forgotten, resolved to concrete TOFU rows.

    request_id: req-2026-0001                  # [A-Za-z0-9._-]{1,64}, unique in the inbox
    subject: Basil Mahfouz Al-Kuwaiti          # who/what is forgotten (free text)
    selectors:
      authors: [Basil Mahfouz Al-Kuwaiti, 199] # TOFU author names (`r2f request authors`) or indices
      question_ids: [tofu-3960]                # and/or single QA rows
    requester: privacy-office@example.org      # who asked
    legal_basis: GDPR art. 17 (right to erasure)
    created_at: 2026-11-29T09:00:00Z           # ISO 8601 date or date-time

Every field is required except one of the two selector lists; unknown fields are rejected. The
concrete rows are the forget set the pipeline versions (DVC) and unlearns. Logs, MLflow and audit
reports only ever see the request id, row ids and sha256 hashes (of the subject, the requester,
the legal basis, the rows), never the subject's name or the forget-set text.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from r2f.engine.data import N_AUTHORS, Tofu
from r2f.errors import R2FError
from r2f.safeyaml import load_file

SPLITS = ("forget01", "forget05", "forget10")
FIELDS = ("request_id", "subject", "selectors", "requester", "legal_basis", "created_at")
SELECTOR_FIELDS = ("authors", "question_ids")


class RequestError(R2FError, ValueError):
    """A deletion request is unreadable or invalid; the message names the file and the field."""


MAX_BYTES = 64 * 1024  # a request file is a few hundred bytes; anything this large is not one
MAX_SELECTORS = 4000  # TOFU's rows


def _text(v: str) -> str:
    """Free text: not blank, no control characters (tabs and line breaks aside)."""
    if not v.strip():
        raise ValueError("must not be empty or whitespace")
    if any(ord(c) < 32 and c not in "\t\n\r" or ord(c) == 127 for c in v):
        raise ValueError("must not contain control characters")
    return v


def _unique(values: tuple) -> tuple:
    seen, dup = set(), []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    if dup:
        raise ValueError(f"{len(dup)} entr{'y' if len(dup) == 1 else 'ies'} listed twice (positions of "
                         f"the first: {[values.index(d) for d in dup[:5]]})")
    return values


class Selectors(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    authors: tuple[int | str, ...] = Field((), max_length=MAX_SELECTORS)
    question_ids: tuple[str, ...] = Field((), max_length=MAX_SELECTORS)

    @field_validator("authors", mode="before")
    @classmethod
    def _no_bools(cls, v):
        if isinstance(v, (list, tuple)) and any(isinstance(a, (bool, float)) for a in v):
            raise ValueError("an author is a TOFU author name or an integer index")
        return v

    @field_validator("authors")
    @classmethod
    def _authors(cls, v: tuple) -> tuple:
        for a in v:
            if isinstance(a, str):
                _text(a)
                if len(a) > 200:
                    raise ValueError("an author name is at most 200 characters")
        return _unique(v)

    @field_validator("question_ids")
    @classmethod
    def _qids(cls, v: tuple) -> tuple:
        for q in v:
            if not q.strip() or len(q) > 64:
                raise ValueError("a question id is 1-64 characters, not blank")
        return _unique(v)


class DeletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # a folder name in the inbox: starts with a letter or digit (no ".", "..", hidden names)
    request_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    subject: str = Field(min_length=1, max_length=500)
    selectors: Selectors
    requester: str = Field(min_length=1, max_length=500)
    legal_basis: str = Field(min_length=1, max_length=500)
    created_at: dt.datetime | dt.date

    @field_validator("subject", "requester", "legal_basis")
    @classmethod
    def _free_text(cls, v: str) -> str:
        return _text(v)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def digests(self, key: bytes) -> dict:
        """HMAC-SHA256 of the free-text fields under the request's key (r2f.governance.privacy): what
        records and audit reports show instead of the text, unlinkable to it once the key is destroyed
        (a plain hash of a name can be confirmed by guessing the name)."""
        from r2f.governance.privacy import keyed_digest

        return {f"{k}_hmac": keyed_digest(key, getattr(self, k)) for k in ("subject", "requester", "legal_basis")}


def parse_request(raw, source: str) -> DeletionRequest:
    """Validate a parsed request mapping; errors name ``source`` and the field."""
    if not isinstance(raw, dict):
        raise RequestError(f"{source}: a request must be a mapping of {', '.join(FIELDS)}")
    try:
        req = DeletionRequest.model_validate(raw)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RequestError(f"{source}: {msgs}") from exc
    if not req.selectors.authors and not req.selectors.question_ids:
        raise RequestError(f"{source}: selectors: names nothing to forget (authors and question_ids empty)")
    return req


def read_request(path: str | Path) -> DeletionRequest:
    """Parse a request file; errors name the file and the field. Validation of the selectors against
    the data (every id exists, ...) is the GX suite's job (:func:`r2f.governance.validation.validate_request`)
    and :func:`resolve`'s."""
    path = Path(path)
    return parse_request(load_raw(path), str(path))


def load_raw(path: Path):
    """The parsed file, through :mod:`r2f.safeyaml` (size, UTF-8, aliases, depth, duplicate keys)."""
    return load_file(path, "request", RequestError, max_bytes=MAX_BYTES, max_depth=6)


def author_indices(req: DeletionRequest, tofu) -> list[int]:
    """The author selectors as TOFU indices; a name that matches no author (or several) is an error
    naming the selector's position (not the name: it is the subject's)."""
    out = []
    for i, a in enumerate(req.selectors.authors):
        where = f"request {req.request_id}: selectors.authors[{i}]"
        if isinstance(a, int):
            if not 0 <= a < N_AUTHORS:
                raise RequestError(f"{where}: author index {a} is outside 0-{N_AUTHORS - 1}")
            out.append(a)
            continue
        hits = tofu.authors_named(a)
        if not hits:
            raise RequestError(f"{where}: matches no TOFU author (see `r2f request authors`)")
        if len(hits) > 1:
            raise RequestError(f"{where}: matches authors {hits}; select one by index")
        out.append(hits[0])
    return out


def resolve(req: DeletionRequest, tofu) -> list:
    """The selected rows (``QA``) in ``full`` order, without duplicates; a selector that matches
    nothing is an error."""
    authors = author_indices(req, tofu)
    full = {q.id: q for q in tofu.split("full")}
    missing = [i for i in req.selectors.question_ids if i not in full]
    if missing:
        raise RequestError(f"request {req.request_id}: selectors.question_ids: unknown rows {missing[:10]}")
    rows = {q.id: q for q in tofu.authors(sorted(set(authors)))}
    for i in req.selectors.question_ids:
        rows.setdefault(i, full[i])
    return sorted(rows.values(), key=lambda q: q.id)


def eval_split(items) -> str:
    """The smallest TOFU forget split that contains every requested row: its retain model and
    holdout set are the references of the evaluation."""
    authors = {q.author for q in items}
    for s in SPLITS:
        if authors <= set(Tofu.forget_authors(s)):
            return s
    raise RequestError("request: rows outside TOFU's forget10 authors (180-199) have no retain model "
                       "or holdout set to evaluate against in this version")
