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

from r2f.governance.validation.qa import validate_disjoint, validate_pipeline_data, validate_qa
from r2f.governance.validation.report import (
                     BAD_CHARS_RE,
                     MAX_ROWS_SHOWN,
                     REQUEST_FIELDS,
                     REQUEST_ID_RE,
                     Failure,
                     ValidationError,
                     ValidationReport,
                     check,
)
from r2f.governance.validation.request import validate_request
from r2f.governance.validation.suite import normalise_question, question_key

__all__ = ["BAD_CHARS_RE", "MAX_ROWS_SHOWN", "REQUEST_FIELDS", "REQUEST_ID_RE", "Failure", "ValidationError",
           "ValidationReport", "check", "normalise_question", "question_key", "validate_disjoint",
           "validate_pipeline_data", "validate_qa", "validate_request"]
