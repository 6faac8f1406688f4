"""The deletion-request suite: id format, fields, every requested row and author exists, no duplicates."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .report import REQUEST_FIELDS, REQUEST_ID_RE, ValidationError, ValidationReport
from .suite import _Suite, _safe, _stripped_len

def _iso_ok(v: Any) -> bool:
    if not isinstance(v, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][0-9:.+\-Z]+)?", v):
        return False
    try:
        datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


def validate_request(request: dict, known_ids: set[str], known_authors: set[int]) -> ValidationReport:
    """Suite ``request-<request_id>``: one row per requested item id and author (a placeholder row when
    there are none). Checks: request_id matches ``REQUEST_ID_RE``; at least one author or item id;
    every item id in ``known_ids``, every author in ``known_authors``; item ids strings and authors
    ints; no duplicates; ``basis`` non-empty; ``requested_at`` an ISO 8601 date; no unknown fields."""
    import pandas as pd

    if not isinstance(request, Mapping):
        raise ValidationError(f"a deletion request must be a JSON object, got {type(request).__name__}")
    rid = request.get("request_id")
    rid_ok = isinstance(rid, str) and re.fullmatch(REQUEST_ID_RE, rid) is not None
    label = f"request {rid}" if rid_ok else "request (invalid request_id)"
    basis = request.get("basis")
    unknown = sorted(str(k) for k in request if k not in REQUEST_FIELDS)
    common = {"request_id": _safe(rid) if isinstance(rid, str) else None,
              "basis_chars": _stripped_len(basis),
              "requested_at_iso": _iso_ok(request.get("requested_at")), "unknown_fields": len(unknown)}

    rows = []
    for kind, key, ok in (("item_id", "item_ids", lambda v: isinstance(v, str)),
                          ("author", "authors", lambda v: isinstance(v, int) and not isinstance(v, bool))):
        values = request.get(key)
        listed = isinstance(values, list | tuple)
        for v in (values if listed else [] if values is None else [values]):
            rows.append({**common, "row": _safe(f"author:{v}" if kind == "author" else str(v)), "kind": kind,
                         "item_id": _safe(v) if kind == "item_id" else None,
                         "author": v if kind == "author" and ok(v) else None,
                         "value_ok": bool(listed and ok(v))})
    if not rows:
        rows.append({**common, "row": label, "kind": "none", "item_id": None, "author": None, "value_ok": True})
    cols = ["row", "kind", "item_id", "author", "value_ok", "request_id", "basis_chars",
            "requested_at_iso", "unknown_fields"]
    df = pd.DataFrame(rows, columns=cols, dtype=object)

    s = _Suite(f"request-{rid}" if rid_ok else "request-invalid")
    s.add("ExpectColumnValuesToNotBeNull", "request_id is missing or not a string", scope="request",
          column="request_id")
    s.add("ExpectColumnValuesToMatchRegex", f"request_id must match {REQUEST_ID_RE}", scope="request",
          column="request_id", regex=REQUEST_ID_RE)
    s.add("ExpectColumnValuesToBeInSet", "the request names no authors and no item_ids", scope="request",
          column="kind", value_set=["item_id", "author"])
    s.add("ExpectColumnValuesToBeInSet", "item_ids must be a list of strings and authors a list of ints",
          column="value_ok", value_set=[True])
    s.add("ExpectColumnValuesToBeInSet", "unknown item id", column="item_id", value_set=sorted(known_ids))
    s.add("ExpectColumnValuesToBeInSet", "unknown author", column="author", value_set=sorted(known_authors))
    s.add("ExpectColumnValuesToBeUnique", "item id requested more than once", column="item_id")
    s.add("ExpectColumnValuesToBeUnique", "author requested more than once", column="author")
    s.add("ExpectColumnValuesToNotBeNull", "basis is missing or not a string", scope="request",
          column="basis_chars")
    s.add("ExpectColumnValuesToBeBetween", "basis is empty", scope="request", column="basis_chars",
          min_value=1)
    s.add("ExpectColumnValuesToBeInSet", "requested_at must be an ISO 8601 date or datetime string",
          scope="request", column="requested_at_iso", value_set=[True])
    s.add("ExpectColumnValuesToBeBetween",
          f"unknown request fields {unknown[:10]}; allowed: {', '.join(REQUEST_FIELDS)}",
          scope="request", column="unknown_fields", min_value=0, max_value=0)
    return s.run(df, request_label=label)


# -- reporting ----------------------------------------------------------------------------------
