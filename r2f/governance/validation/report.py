"""Validation results: failures, reports, the error, and ``check`` (write JSON, raise)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from r2f.atomic import write_json
from r2f.errors import R2FError

REQUEST_ID_RE = r"^[A-Za-z0-9._-]{1,64}$"
# U+FFFD (a decoding error upstream), C0/C1 control characters other than \t and \n, lone surrogates.
BAD_CHARS_RE = r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd\ud800-\udfff]"
REQUEST_FIELDS = ("request_id", "subject", "selectors", "requester", "legal_basis", "created_at")
SELECTOR_FIELDS = ("authors", "question_ids")
MAX_ROWS_SHOWN = 10
_CRITICAL, _WARNING = "critical", "warning"


def _short(label: str, n: int = 64) -> str:
    label = label.encode("ascii", "backslashreplace").decode("ascii")
    return label if len(label) <= n else label[:n - 3] + "..."


class ValidationError(R2FError, ValueError):
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


def _file_name(suite: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", suite).lstrip(".") or "suite"


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
            write_json(out / f"{name}.json", rep.to_dict(), indent=1, sort_keys=False, newline=True)
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
