"""Running one code-first GX suite on a pandas frame (ephemeral context) and turning its result into
a ``ValidationReport`` that names rows by id, never by text."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

from r2f.governance.validation.report import _CRITICAL, Failure, ValidationReport


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
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

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
