"""QA-data suites: forget / retain / holdout fields, lengths, duplicates, clean text, and disjointness."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from r2f.config import ValidationConfig
    from r2f.engine.data import QA, Tofu

from r2f.governance.validation.report import (
    _CRITICAL,
    _WARNING,
    BAD_CHARS_RE,
    MAX_ROWS_SHOWN,
    ValidationReport,
    _short,
    check,
)
from r2f.governance.validation.suite import _as_row, _safe, _stripped_len, _Suite, _type_name, question_key


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


def _matching_holdout(tofu: Tofu, forget_authors: set[int]) -> str | None:
    from r2f.engine.data import RETAIN_OF

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
    from r2f.engine.data import N_AUTHORS

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
