"""The deletion-request suite: id format, fields, every requested row and author exists, no duplicates."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

from r2f.governance.validation.report import (
    REQUEST_FIELDS,
    REQUEST_ID_RE,
    SELECTOR_FIELDS,
    ValidationError,
    ValidationReport,
)
from r2f.governance.validation.suite import _safe, _stripped_len, _Suite


def _iso_ok(v: Any) -> bool:
    if not isinstance(v, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][0-9:.+\-Z]+)?", v):
        return False
    try:
        datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


def _jsonable(v: Any) -> Any:
    return v.isoformat() if isinstance(v, date) else v


def validate_request(request: dict, known_ids: set[str], known_authors: set[int],
                     authors_named: Callable[[str], list[int]] | None = None) -> ValidationReport:
    """Suite ``request-<request_id>``: one row per selector (a placeholder row when there are none),
    labelled by position (``selectors.authors[0]``), never by the name it carries. Checks:
    request_id matches ``REQUEST_ID_RE``; at least one selector; question ids strings in
    ``known_ids``; authors an index in ``known_authors`` or a name matching exactly one author
    (``authors_named``); no duplicates; ``subject`` / ``requester`` / ``legal_basis`` non-empty;
    ``created_at`` ISO 8601; no unknown fields."""
    import pandas as pd

    if not isinstance(request, Mapping):
        raise ValidationError(f"a deletion request must be a JSON object, got {type(request).__name__}")
    rid = request.get("request_id")
    rid_ok = isinstance(rid, str) and re.fullmatch(REQUEST_ID_RE, rid) is not None
    label = f"request {rid}" if rid_ok else "request (invalid request_id)"
    sel = request.get("selectors")
    sel = sel if isinstance(sel, Mapping) else {}
    unknown = sorted(str(k) for k in request if k not in REQUEST_FIELDS)
    unknown += sorted(f"selectors.{k}" for k in sel if k not in SELECTOR_FIELDS)
    if "selectors" in request and not isinstance(request["selectors"], Mapping):
        unknown.append("selectors (not a mapping)")
    common = {"request_id": _safe(rid) if isinstance(rid, str) else None,
              **{f"{k}_chars": _stripped_len(request.get(k)) for k in ("subject", "requester", "legal_basis")},
              "created_at_iso": _iso_ok(_jsonable(request.get("created_at"))), "unknown_fields": len(unknown)}

    rows = []
    qids = sel.get("question_ids")
    for i, v in enumerate(qids if isinstance(qids, list | tuple) else [] if qids is None else [qids]):
        rows.append({**common, "row": _safe(v) if isinstance(v, str) else f"selectors.question_ids[{i}]",
                     "kind": "question_id", "item_id": _safe(v) if isinstance(v, str) else None,
                     "author": None, "name_matches": 1,
                     "value_ok": bool(isinstance(qids, list | tuple) and isinstance(v, str))})
    authors = sel.get("authors")
    for i, v in enumerate(authors if isinstance(authors, list | tuple) else [] if authors is None else [authors]):
        index, matches = None, 1
        if isinstance(v, int) and not isinstance(v, bool):
            index = v
        elif isinstance(v, str) and authors_named is not None:
            hits = authors_named(v)
            matches = len(hits)
            index = hits[0] if matches == 1 else None
        ok = isinstance(authors, list | tuple) and (isinstance(v, str) or isinstance(v, int) and not isinstance(v, bool))
        rows.append({**common, "row": f"selectors.authors[{i}]" + (f"=author:{index}" if index is not None else ""),
                     "kind": "author", "item_id": None, "author": index, "name_matches": matches,
                     "value_ok": bool(ok)})
    if not rows:
        rows.append({**common, "row": label, "kind": "none", "item_id": None, "author": None, "name_matches": 1,
                     "value_ok": True})
    cols = ["row", "kind", "item_id", "author", "name_matches", "value_ok", "request_id", "subject_chars",
            "requester_chars", "legal_basis_chars", "created_at_iso", "unknown_fields"]
    df = pd.DataFrame(rows, columns=cols, dtype=object)

    s = _Suite(f"request-{rid}" if rid_ok else "request-invalid")
    s.add("ExpectColumnValuesToNotBeNull", "request_id is missing or not a string", scope="request",
          column="request_id")
    s.add("ExpectColumnValuesToMatchRegex", f"request_id must match {REQUEST_ID_RE}", scope="request",
          column="request_id", regex=REQUEST_ID_RE)
    s.add("ExpectColumnValuesToBeInSet", "the selectors name no authors and no question_ids", scope="request",
          column="kind", value_set=["question_id", "author"])
    s.add("ExpectColumnValuesToBeInSet", "selectors.question_ids must be a list of strings and "
          "selectors.authors a list of names or indices", column="value_ok", value_set=[True])
    s.add("ExpectColumnValuesToBeInSet", "unknown question id", column="item_id", value_set=sorted(known_ids))
    s.add("ExpectColumnValuesToBeInSet", "author name matches no TOFU author, or several (see `r2f request "
          "authors`)", column="name_matches", value_set=[1])
    s.add("ExpectColumnValuesToBeInSet", "unknown author index", column="author", value_set=sorted(known_authors))
    s.add("ExpectColumnValuesToBeUnique", "question id selected more than once", column="item_id")
    s.add("ExpectColumnValuesToBeUnique", "author selected more than once", column="author")
    for k in ("subject", "requester", "legal_basis"):
        s.add("ExpectColumnValuesToNotBeNull", f"{k} is missing or not a string", scope="request",
              column=f"{k}_chars")
        s.add("ExpectColumnValuesToBeBetween", f"{k} is empty or longer than 500 characters", scope="request",
              column=f"{k}_chars", min_value=1, max_value=500)
    s.add("ExpectColumnValuesToBeInSet", "created_at must be an ISO 8601 date or date-time",
          scope="request", column="created_at_iso", value_set=[True])
    s.add("ExpectColumnValuesToBeBetween",
          f"unknown request fields {unknown[:10]}; allowed: {', '.join(REQUEST_FIELDS)} "
          f"(selectors: {', '.join(SELECTOR_FIELDS)})",
          scope="request", column="unknown_fields", min_value=0, max_value=0)
    return s.run(df, request_label=label)
