"""Great Expectations checks on forget / retain / holdout QA data and on deletion requests.

Every check is a real, code-first GX 1.x ``ExpectationSuite`` run by a ``ValidationDefinition`` on a
pandas dataframe in an ephemeral (in-memory) context: nothing is configured at import time,
``great_expectations`` and ``pandas`` are imported inside the functions, GX writes no files and
shows no progress bars.

The dataframes hold the raw id/question/answer columns plus derived, non-sensitive columns
(stripped lengths, value types, a digest of the whitespace-normalised question). Results are asked
for with ``exclude_unexpected_values`` and a ``row`` label column, so a report names offending
rows by id (``tofu-0042``, a requested item id, ``author:7``) and never copies question or
answer text into a report, a JSON file or an error message.

``check(reports, out_dir)`` writes each report to ``out_dir/<suite>.json`` and raises
``ValidationError`` listing every failure (suite, expectation, column, row ids, reason).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .config import ValidationConfig
    from .data import QA, Tofu

REQUEST_ID_RE = r"^[A-Za-z0-9._-]{1,64}$"
# U+FFFD (a decoding error upstream), C0/C1 control characters other than \t and \n, lone surrogates.
BAD_CHARS_RE = r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd\ud800-\udfff]"
REQUEST_FIELDS = ("request_id", "authors", "item_ids", "basis", "requested_at")
MAX_ROWS_SHOWN = 10
_CRITICAL, _WARNING = "critical", "warning"


class ValidationError(ValueError):
    """Data failed validation; the message lists suite, expectation, column, row ids and reason."""

    def __init__(self, message: str, failures: list[Failure] | None = None,
                 reports: list[ValidationReport] | None = None):
        super().__init__(message)
        self.failures = failures or []
        self.reports = reports or []


@dataclass(frozen=True)
class Failure:
    suite: str
    expectation: str
    column: str | None
    rows: list[str]          # QA ids (``#<index>`` where an item has no usable id) or requested values
    reason: str
    severity: str = _CRITICAL  # "critical" fails the report; "warning" is recorded only

    def describe(self, limit: int = MAX_ROWS_SHOWN) -> str:
        shown = ", ".join(_short(r) for r in self.rows[:limit])
        more = f" and {len(self.rows) - limit} more" if len(self.rows) > limit else ""
        where = f" on {self.column}" if self.column else ""
        rows = f" rows [{shown}{more}]" if self.rows else ""
        return f"{self.suite}: {self.expectation}{where}:{rows} {self.reason}"


@dataclass(frozen=True)
class ValidationReport:
    suite: str
    success: bool
    n_rows: int
    failures: list[Failure]
    gx_result: dict = field(repr=False)

    @property
    def errors(self) -> list[Failure]:
        return [f for f in self.failures if f.severity == _CRITICAL]

    @property
    def warnings(self) -> list[Failure]:
        return [f for f in self.failures if f.severity != _CRITICAL]

    def to_dict(self) -> dict:
        return {"suite": self.suite, "success": self.success, "n_rows": self.n_rows,
                "failures": [{"suite": f.suite, "expectation": f.expectation, "column": f.column,
                              "rows": list(f.rows), "reason": f.reason, "severity": f.severity}
                             for f in self.failures],
                "gx_result": self.gx_result}


# -- helpers ------------------------------------------------------------------------------------
def _short(label: str, n: int = 64) -> str:
    label = label.encode("ascii", "backslashreplace").decode("ascii")
    return label if len(label) <= n else label[:n - 3] + "..."


def normalise_question(q: str) -> str:
    """Whitespace normalisation used for duplicate / overlap checks (exact otherwise)."""
    return " ".join(q.split())


def question_key(q: Any) -> str | None:
    """Digest of the normalised question: compared instead of the text, so reports never hold it."""
    if not isinstance(q, str):
        return None
    return hashlib.sha256(normalise_question(q).encode("utf-8", "surrogatepass")).hexdigest()[:20]


_SURROGATE = re.compile("[\ud800-\udfff]")


def _safe(v: Any) -> Any:
    """Lone surrogates -> U+FFFD (what a UTF-8 encoder with errors="replace" does) in the copy GX
    sees: pandas cannot hash them. The bad-character check still flags the row."""
    return _SURROGATE.sub("\ufffd", v) if isinstance(v, str) else v


def _type_name(v: Any) -> str | None:
    return None if v is None else type(v).__name__


def _stripped_len(v: Any) -> int | None:
    return len(v.strip()) if isinstance(v, str) else None


def _as_row(item: Any) -> dict:
    if isinstance(item, Mapping):
        return dict(item)
    return {"id": getattr(item, "id", None), "question": getattr(item, "question", None),
            "answer": getattr(item, "answer", None)}


def _gx_context():
    """A fresh ephemeral GX context: in memory, no analytics, no progress bars."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig)

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(),
                               analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False))
    return gx, gx.get_context(mode="ephemeral", project_config=config)


class _Suite:
    """Collects expectations (with a reason, a severity and a scope for each) for one dataframe."""

    def __init__(self, name: str):
        self.name = name
        self.specs: list[tuple[str, dict, dict]] = []   # (expectation class name, kwargs, meta)

    def add(self, expectation: str, reason: str, *, severity: str = _CRITICAL, scope: str = "row",
            detail: str | None = None, **kwargs) -> None:
        meta = {"reason": reason, "scope": scope, "severity": severity}
        if detail:
            meta["detail"] = detail
        self.specs.append((expectation, kwargs, meta))

    def run(self, df, request_label: str | None = None) -> ValidationReport:
        gx, ctx = _gx_context()
        suite = gx.ExpectationSuite(name=self.name)
        for cls_name, kwargs, meta in self.specs:
            cls = getattr(gx.expectations, cls_name)
            suite.add_expectation(cls(**kwargs, meta=meta, severity=meta["severity"]))
        suite = ctx.suites.add(suite)
        batch_def = (ctx.data_sources.add_pandas("r2f").add_dataframe_asset(self.name)
                     .add_batch_definition_whole_dataframe("all"))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=self.name, data=batch_def,
                                                                    suite=suite))
        result = vd.run(batch_parameters={"dataframe": df}, result_format={
            "result_format": "COMPLETE", "unexpected_index_column_names": ["row"],
            "exclude_unexpected_values": True, "return_unexpected_index_query": False,
            "partial_unexpected_count": 0})
        gx_result = result.to_json_dict()
        failures = [_failure(self.name, r, request_label) for r in gx_result["results"] if not r["success"]]
        failures.sort(key=lambda f: f.severity != _CRITICAL)
        return ValidationReport(self.name, not any(f.severity == _CRITICAL for f in failures), len(df),
                                failures, gx_result)


def _rows_of(result: dict) -> list[str]:
    rows: dict[str, None] = {}
    for entry in result.get("unexpected_index_list") or []:
        value = entry.get("row") if isinstance(entry, dict) else entry
        for v in value if isinstance(value, list) else [value]:
            rows[str(v)] = None
    return list(rows)


def _exception_messages(info: Any) -> list[str]:
    """GX 1.x reports exceptions either flat or keyed by metric id."""
    if not isinstance(info, dict):
        return []
    if "raised_exception" in info or "exception_message" in info:
        return [str(info["exception_message"])] if info.get("raised_exception") else []
    return [m for v in info.values() for m in _exception_messages(v)]


def _failure(suite: str, r: dict, request_label: str | None) -> Failure:
    cfg = r["expectation_config"]
    meta = cfg.get("meta") or {}
    res = r.get("result") or {}
    reason = meta.get("reason", cfg["type"])
    if errors := _exception_messages(r.get("exception_info")):
        reason += f" (GX raised: {errors[0][:200]})"
    elif "observed_value" in res and not res.get("unexpected_index_list"):
        reason += f" (observed {res['observed_value']})"
    rows = _rows_of(res)
    if meta.get("scope") == "request" and rows:
        rows = [request_label or "request"]
    elif rows and "unexpected_count" in res:
        reason += f" ({res['unexpected_count']} of {res.get('element_count', '?')} rows)"
    if meta.get("detail"):
        reason += f"; {meta['detail']}"
    return Failure(suite, cfg["type"], cfg["kwargs"].get("column"), rows, reason,
                   meta.get("severity", cfg.get("severity", _CRITICAL)))


# -- QA data ------------------------------------------------------------------------------------
def _qa_frame(items: Iterable[Any]):
    import pandas as pd

    rows = []
    for i, item in enumerate(items):
        r = _as_row(item)
        qid, q, a = r.get("id"), r.get("question"), r.get("answer")
        rows.append({
            "row": _safe(qid) if isinstance(qid, str) and qid.strip() else f"#{i}",
            "id": _safe(qid), "question": _safe(q), "answer": _safe(a),
            "id_type": _type_name(qid), "question_type": _type_name(q), "answer_type": _type_name(a),
            "question_chars": _stripped_len(q), "answer_chars": _stripped_len(a),
            "question_key": question_key(q),
        })
    cols = ["row", "id", "question", "answer", "id_type", "question_type", "answer_type",
            "question_chars", "answer_chars", "question_key"]
    return pd.DataFrame(rows, columns=cols, dtype=object)


def validate_qa(items: list[QA] | list[dict], name: str, vcfg: ValidationConfig, *,
                duplicate_questions: str = _CRITICAL) -> ValidationReport:
    """Suite ``qa-<name>``: id/question/answer present, strings, non-empty after strip, within the
    length bounds of ``vcfg``; unique ids and (whitespace-normalised) questions; no U+FFFD, no
    control characters other than \\n and \\t, no lone surrogates. ``duplicate_questions="warning"``
    records duplicate questions without failing (TOFU's retain authors 5 and 22 share one)."""
    df = _qa_frame(items)
    s = _Suite(f"qa-{name}")
    s.add("ExpectTableRowCountToBeBetween", "the split is empty", scope="table", min_value=1)
    for col in ("id", "question", "answer"):
        s.add("ExpectColumnValuesToNotBeNull", f"{col} is missing or null", column=col)
        s.add("ExpectColumnValuesToBeInSet", f"{col} is not a string", column=f"{col}_type",
              value_set=["str"])
    s.add("ExpectColumnValuesToMatchRegex", "id is empty or blank", column="id", regex=r"\S")
    for col, lo, hi in (("question", vcfg.min_question_chars, vcfg.max_question_chars),
                        ("answer", vcfg.min_answer_chars, vcfg.max_answer_chars)):
        s.add("ExpectColumnValuesToMatchRegex", f"{col} is empty after strip", column=col, regex=r"\S")
        s.add("ExpectColumnValuesToBeBetween", f"{col} length after strip is outside [{lo}, {hi}] characters",
              column=f"{col}_chars", min_value=lo, max_value=hi)
        s.add("ExpectColumnValuesToNotMatchRegex",
              f"{col} contains U+FFFD, a control character other than \\n/\\t, or a lone surrogate",
              column=col, regex=BAD_CHARS_RE)
    s.add("ExpectColumnValuesToMatchRegex", "id contains U+FFFD, a control character or a lone surrogate",
          column="id", regex=r"^[^\x00-\x1f\x7f-\x9f\ufffd\ud800-\udfff]*$")
    s.add("ExpectColumnValuesToBeUnique", "duplicate id", column="id")
    s.add("ExpectColumnValuesToBeUnique", "duplicate question (after whitespace normalisation)",
          column="question_key", severity=duplicate_questions)
    return s.run(df)


# -- disjointness -------------------------------------------------------------------------------
def validate_disjoint(forget: list[QA], retain: list[QA], holdout: list[QA] | None = None,
                      name: str = "disjoint") -> ValidationReport:
    """Suite ``disjoint``: no forget id or normalised question also in retain (or holdout, if given).
    Rows named are forget ids; the reason names the matching retain/holdout ids."""
    df = _qa_frame(forget)
    s = _Suite(name)
    for other_name, other in (("retain", retain), ("holdout", holdout)):
        if other is None:
            continue
        other_rows = [_as_row(o) for o in other]
        ids = sorted({r["id"] for r in other_rows if isinstance(r.get("id"), str)})
        by_key: dict[str, list[str]] = {}
        for r in other_rows:
            if (k := question_key(r.get("question"))) is not None:
                by_key.setdefault(k, []).append(str(r.get("id")))
        key_hits = [i for k in df["question_key"].dropna() for i in by_key.get(k, [])]
        detail = None
        if key_hits:
            more = len(key_hits) - MAX_ROWS_SHOWN
            detail = (f"{other_name} rows with the same question: "
                      + ", ".join(_short(i) for i in key_hits[:MAX_ROWS_SHOWN])
                      + (f" and {more} more" if more > 0 else ""))
        s.add("ExpectColumnValuesToNotBeInSet", f"forget id also in {other_name}", column="id",
              value_set=ids)
        s.add("ExpectColumnValuesToNotBeInSet", f"forget question (whitespace-normalised) also in {other_name}",
              column="question_key", value_set=sorted(by_key), detail=detail)
    return s.run(df)


# -- deletion requests --------------------------------------------------------------------------
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
def _file_name(suite: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", suite).lstrip(".") or "suite"


def _atomic_write_json(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, default=str)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check(reports: list[ValidationReport], out_dir: Path | str | None = None) -> None:
    """Write every report to ``out_dir/<suite>.json`` (atomically) if ``out_dir`` is given, then raise
    ``ValidationError`` listing every critical failure if any report failed. Warnings are only written."""
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for rep in reports:
            stem, n = _file_name(rep.suite), 2
            name = stem
            while name in used:
                name, n = f"{stem}-{n}", n + 1
            used.add(name)
            _atomic_write_json(out / f"{name}.json", rep.to_dict())
    failed = [r for r in reports if not r.success]
    if not failed:
        return
    errors = [f for r in failed for f in r.errors] or [
        Failure(r.suite, "?", None, [], "report marked failed") for r in failed]
    lines = [f"data validation failed: {len(errors)} failing expectation(s) in "
             f"{len(failed)} suite(s) ({', '.join(r.suite for r in failed)})"]
    lines += [f"  - {f.describe()}" for f in errors]
    if out_dir is not None:
        lines.append(f"  reports: {Path(out_dir)}")
    raise ValidationError("\n".join(lines), errors, reports)


# -- the pipeline's data ------------------------------------------------------------------------
def _matching_holdout(tofu: Tofu, forget_authors: set[int]) -> str | None:
    from .data import RETAIN_OF

    for split in RETAIN_OF:
        if forget_authors == set(tofu.forget_authors(split)):
            return "holdout" + split.removeprefix("forget")
    return None


def validate_pipeline_data(tofu: Tofu, forget_items: list[QA], vcfg: ValidationConfig,
                           out_dir: Path | str | None = None, *,
                           retain_authors: Iterable[int] | None = None) -> list[ValidationReport]:
    """QA suites for forget, retain and (if the forget authors are exactly a TOFU forget split's)
    the matching holdout, plus disjointness; then ``check`` (writes JSON to ``out_dir``, raises).

    Retain = ``retain_perturbed`` (the evaluation retain set) plus every other author in
    ``retain_authors`` (default: all 200) that is not a forget author. Duplicate questions inside
    retain are warnings: TOFU itself has one (tofu-0100 / tofu-0440)."""
    from .data import N_AUTHORS

    forget_authors = {a for q in forget_items if (a := getattr(q, "author", None)) is not None}
    retain = list(tofu.split("retain_perturbed"))
    have = {q.author for q in retain}
    extra = [a for a in (range(N_AUTHORS) if retain_authors is None else retain_authors)
             if a not in forget_authors and a not in have]
    retain += tofu.authors(sorted(set(extra)))
    reports = [validate_qa(forget_items, "forget", vcfg),
               validate_qa(retain, "retain", vcfg, duplicate_questions=_WARNING)]
    holdout = None
    if (hname := _matching_holdout(tofu, forget_authors)) is not None:
        holdout = tofu.split(hname)
        reports.append(validate_qa(holdout, hname, vcfg))
    reports.append(validate_disjoint(forget_items, retain, holdout))
    check(reports, out_dir)
    return reports
