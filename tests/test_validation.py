"""Great Expectations data checks (r2f/governance/validation.py): real GX on tiny in-memory inputs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from r2f.config import ValidationConfig
from r2f.governance.validation import (
    ValidationError,
    check,
    validate_disjoint,
    validate_pipeline_data,
    validate_qa,
    validate_request,
)

ROOT = Path(__file__).resolve().parents[1]
VCFG = ValidationConfig()


@pytest.fixture(scope="module")
def forget(tofu):
    return tofu.split("forget01")


def _rows(report, expectation, column):
    return [r for f in report.failures if f.expectation == expectation and f.column == column for r in f.rows]


def test_clean_forget01_passes(forget, capfd):
    report = validate_qa(forget, "forget01", VCFG)
    assert capfd.readouterr() == ("", "")                      # no progress bars, no log lines
    assert report.success and report.failures == [] and report.n_rows == 40
    assert report.suite == "qa-forget01" and report.gx_result["success"] is True
    assert report.gx_result["statistics"]["evaluated_expectations"] >= 15


def test_bad_items_name_their_rows(forget):
    bad = list(forget[:8])
    bad[1] = dataclasses.replace(bad[1], answer="   ")                             # empty after strip
    bad[2] = dataclasses.replace(bad[2], question="  " + bad[3].question + " \n")   # duplicate question
    bad[4] = dataclasses.replace(bad[4], answer="x" * (VCFG.max_answer_chars + 1))  # too long
    bad[5] = dataclasses.replace(bad[5], answer=bad[5].answer + "\ufffd")           # decoding error
    bad[6] = dataclasses.replace(bad[6], question=bad[6].question + "\x00")         # control char
    bad[7] = dataclasses.replace(bad[7], answer="lone \ud800 surrogate")            # not UTF-8 encodable
    report = validate_qa(bad, "bad", VCFG)
    assert not report.success
    ids = [q.id for q in bad]
    assert _rows(report, "expect_column_values_to_match_regex", "answer") == [ids[1]]
    assert ids[1] in _rows(report, "expect_column_values_to_be_between", "answer_chars")
    assert ids[4] in _rows(report, "expect_column_values_to_be_between", "answer_chars")
    assert _rows(report, "expect_column_values_to_be_unique", "question_key") == [ids[2], ids[3]]
    assert _rows(report, "expect_column_values_to_not_match_regex", "answer") == [ids[5], ids[7]]
    assert _rows(report, "expect_column_values_to_not_match_regex", "question") == [ids[6]]
    assert ids[0] not in {r for f in report.failures for r in f.rows}

    with pytest.raises(ValidationError) as exc:
        check([report])
    msg = str(exc.value)
    assert "qa-bad" in msg and f"rows [{ids[2]}, {ids[3]}]" in msg and "duplicate question" in msg
    assert f"rows [{ids[5]}, {ids[7]}]" in msg and "U+FFFD" in msg
    # ids and field names only: no forget-set text in the message or the GX result
    dumped = json.dumps(report.to_dict(), ensure_ascii=False)
    for q in bad:
        for text in (q.question.strip(), q.answer.strip()):
            if len(text) > 3:
                assert text not in msg and text not in dumped


def test_dict_items_missing_fields_and_duplicate_ids(forget):
    items = [{"id": forget[0].id, "question": forget[0].question, "answer": forget[0].answer},
             {"id": forget[0].id, "question": forget[1].question, "answer": forget[1].answer},
             {"question": "Who wrote this book?", "answer": None},
             {"id": "x-1", "question": 42, "answer": "fine"}]
    report = validate_qa(items, "dicts", VCFG)
    assert _rows(report, "expect_column_values_to_be_unique", "id") == [forget[0].id]
    assert _rows(report, "expect_column_values_to_not_be_null", "id") == ["#2"]
    assert _rows(report, "expect_column_values_to_not_be_null", "answer") == ["#2"]
    assert _rows(report, "expect_column_values_to_be_in_set", "question_type") == ["x-1"]
    assert not validate_qa([], "empty", VCFG).success


def test_question_length_bounds_come_from_config(forget):
    strict = ValidationConfig(min_question_chars=60)
    short = [q.id for q in forget if len(q.question.strip()) < 60]
    assert short
    assert _rows(validate_qa(forget, "f", strict), "expect_column_values_to_be_between", "question_chars") == short
    with pytest.raises(ValueError, match="min_answer_chars exceeds max_answer_chars"):
        ValidationConfig(min_answer_chars=10, max_answer_chars=5)


def test_forget_retain_overlap_names_the_id(tofu, forget):
    retain = tofu.split("retain99")
    assert validate_disjoint(forget, retain, tofu.split("holdout01")).success
    leaked = dataclasses.replace(retain[5], question=" ".join(forget[3].question.split()) + "  ")
    report = validate_disjoint(forget, retain[:20] + [forget[7], leaked])
    assert not report.success and report.suite == "disjoint"
    assert _rows(report, "expect_column_values_to_not_be_in_set", "id") == [forget[7].id]
    assert sorted(_rows(report, "expect_column_values_to_not_be_in_set", "question_key")) == sorted(
        [forget[3].id, forget[7].id])
    assert any(retain[5].id in f.reason for f in report.failures)     # names the retain row too
    hold = validate_disjoint(forget, [], [dataclasses.replace(forget[0], id="holdout-0000")])
    assert not hold.success and "holdout" in hold.failures[0].reason


REQ = {"request_id": "req-2025.01_a", "subject": "an author", "requester": "dpo@example.org",
       "legal_basis": "GDPR art. 17", "created_at": "2025-01-31T10:00:00Z",
       "selectors": {"authors": [198], "question_ids": ["tofu-3999"]}}


def _sel(**kw) -> dict:
    return {"selectors": {**REQ["selectors"], **kw}}


@pytest.fixture(scope="module")
def known(tofu):
    # GX copies value sets many times per run: 4,000 known ids cost ~0.5 s per request, 400 ~0.1 s
    return {q.id for q in tofu.split("forget10")}, set(range(200)), tofu.authors_named


def test_valid_request_passes(known):
    report = validate_request(REQ, *known)
    assert report.success and report.suite == "request-req-2025.01_a" and report.n_rows == 2
    named = validate_request({**REQ, **_sel(authors=["Nikolai Abilov", 198])}, *known)
    assert named.success and named.n_rows == 3


@pytest.mark.parametrize("change, row, expectation, column", [
    (_sel(question_ids=["tofu-3999", "tofu-9999"]), "tofu-9999", "expect_column_values_to_be_in_set", "item_id"),
    (_sel(authors=[198, 250]), "selectors.authors[1]=author:250", "expect_column_values_to_be_in_set", "author"),
    (_sel(authors=[198, 198]), ["selectors.authors[0]=author:198", "selectors.authors[1]=author:198"],
     "expect_column_values_to_be_unique", "author"),
    (_sel(authors=[198, "Basil Mahfouz Al-Kuwaiti"]), ["selectors.authors[0]=author:198", "selectors.authors[1]=author:198"],
     "expect_column_values_to_be_unique", "author"),
    (_sel(authors=["Jane Nobody"]), "selectors.authors[0]", "expect_column_values_to_be_in_set", "name_matches"),
    (_sel(authors=[1.5]), "selectors.authors[0]", "expect_column_values_to_be_in_set", "value_ok"),
    ({"request_id": "../etc/passwd"}, "request (invalid request_id)", "expect_column_values_to_match_regex",
     "request_id"),
    ({"selectors": {}}, "request req-2025.01_a", "expect_column_values_to_be_in_set", "kind"),
    ({"legal_basis": "  "}, "request req-2025.01_a", "expect_column_values_to_be_between", "legal_basis_chars"),
    ({"created_at": "2025-02-30"}, "request req-2025.01_a", "expect_column_values_to_be_in_set",
     "created_at_iso"),
    ({"item_ids": ["tofu-0001"]}, "request req-2025.01_a", "expect_column_values_to_be_between", "unknown_fields"),
    (_sel(names=["x"]), "request req-2025.01_a", "expect_column_values_to_be_between", "unknown_fields"),
])
def test_bad_request_fails_naming_the_value(known, change, row, expectation, column):
    report = validate_request({**REQ, **change}, *known)
    assert not report.success
    assert _rows(report, expectation, column) == (row if isinstance(row, list) else [row]), \
        [f.describe() for f in report.failures]
    assert len(report.failures) == 1


def test_check_writes_json_and_raises(tmp_path, known, forget):
    good = validate_qa(forget, "forget01", VCFG)
    bad = validate_request({**REQ, **_sel(question_ids=["tofu-9999"])}, *known)
    bad_id = validate_request({**REQ, "request_id": "a/b"}, *known)
    out = tmp_path / "validation"
    with pytest.raises(ValidationError) as exc:
        check([good, bad, bad_id], out)
    assert sorted(p.name for p in out.iterdir()) == ["qa-forget01.json", "request-invalid.json",
                                                    "request-req-2025.01_a.json"]
    saved = json.loads((out / "request-req-2025.01_a.json").read_text())
    assert saved["success"] is False and saved["failures"][0]["rows"] == ["tofu-9999"]
    assert saved["gx_result"]["meta"]["great_expectations_version"]
    msg = str(exc.value)
    assert "request-req-2025.01_a" in msg and "tofu-9999" in msg and "unknown question id" in msg
    assert "request-invalid" in msg and "qa-forget01" not in msg
    assert len(exc.value.failures) == 2
    check([good], out)                                                  # passing reports: no raise


def test_pipeline_data_forget01(tmp_path, tofu, forget):
    reports = validate_pipeline_data(tofu, forget, VCFG, tmp_path, retain_authors=range(30))
    assert [r.suite for r in reports] == ["qa-forget", "qa-retain", "qa-holdout01", "disjoint"]
    assert all(r.success for r in reports)
    retain = reports[1]
    assert retain.n_rows == 600
    # TOFU itself asks "What is the full name of the author?" of authors 5 and 22: a warning, not an error
    assert [(f.severity, f.rows) for f in retain.failures] == [("warning", ["tofu-0100", "tofu-0440"])]
    assert {p.name for p in tmp_path.iterdir()} == {f"{r.suite}.json" for r in reports}
    with pytest.raises(ValidationError, match="disjoint.*tofu-0005"):
        validate_pipeline_data(tofu, forget + [tofu.split("retain_perturbed")[5]], VCFG)


def test_import_is_cheap():
    code = ("import sys, r2f.governance.validation; "
            f"assert r2f.governance.validation.__file__.startswith({str(ROOT)!r}), r2f.governance.validation.__file__; "
            "assert 'great_expectations' not in sys.modules and 'pandas' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
