"""Deletion requests: a YAML/JSON file naming what must be forgotten, resolved to concrete TOFU rows.

    request_id: req-2026-0001        # [A-Za-z0-9._-]{1,64}
    basis: GDPR art. 17              # why (free text, kept out of logs beyond its hash)
    requested_at: 2026-11-29
    authors: [198, 199]              # TOFU author indices, and/or
    item_ids: [tofu-3960]            # single QA rows

The concrete rows are the forget set the pipeline versions (DVC) and unlearns; logs and MLflow only
ever see the request id, row ids and sha256 hashes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SPLITS = ("forget01", "forget05", "forget10")


class RequestError(ValueError):
    """A deletion request is unreadable or invalid; the message names the file and the field."""


class DeletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    basis: str = Field(min_length=1, max_length=500)
    requested_at: dt.date
    authors: tuple[int, ...] = ()
    item_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


def read_request(path: str | Path) -> DeletionRequest:
    """Parse a request file; errors name the file and the field. Validation of the rows against
    the data (every id exists, ...) is the GX suite's job (:func:`r2f.validation.validate_request`)."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RequestError(f"{path}: file not found") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RequestError(f"{path}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise RequestError(f"{path}: a request must be a mapping")
    try:
        req = DeletionRequest.model_validate(raw)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RequestError(f"{path}: {msgs}") from exc
    if not req.authors and not req.item_ids:
        raise RequestError(f"{path}: authors / item_ids: the request names nothing to forget")
    return req


def resolve(req: DeletionRequest, tofu) -> list:
    """The requested rows (``QA``), authors first then single items, without duplicates."""
    from .data import N_AUTHORS

    bad = [a for a in req.authors if not 0 <= a < N_AUTHORS]
    if bad:
        raise RequestError(f"request {req.request_id}: authors: unknown author index {bad[:10]}")
    full = {q.id: q for q in tofu.split("full")}
    missing = [i for i in req.item_ids if i not in full]
    if missing:
        raise RequestError(f"request {req.request_id}: item_ids: unknown rows {missing[:10]}")
    rows = {q.id: q for q in tofu.authors(sorted(set(req.authors)))}
    for i in req.item_ids:
        rows.setdefault(i, full[i])
    return sorted(rows.values(), key=lambda q: q.id)


def eval_split(items) -> str:
    """The smallest TOFU forget split that contains every requested row: its retain model and
    holdout set are the references of the evaluation."""
    from .data import Tofu

    authors = {q.author for q in items}
    for s in SPLITS:
        if authors <= set(Tofu.forget_authors(s)):
            return s
    raise RequestError("request: rows outside TOFU's forget10 authors (180-199) have no retain model "
                       "or holdout set to evaluate against in this version")


def rows_digest(items) -> str:
    """sha256 over the rows' ids and content digests: the forget set's identity in logs and lineage."""
    return hashlib.sha256("\n".join(f"{q.id}:{q.digest()}" for q in items).encode()).hexdigest()


def write_forget_set(items, path: Path) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for q in items:
            fh.write(json.dumps({"id": q.id, "question": q.question, "answer": q.answer}, ensure_ascii=False) + "\n")
