"""Bad input fails closed (issue #8): every case of tests/data/bad_inputs/cases.yaml is rejected by
each of its real entry points with a message naming the problem, and nothing changes (registry,
MLflow runs, DVC, inbox, stage outs). Plus a property-based test of the request parser."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from bad_input_lib import cases, run_case
from conftest import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_lib import make_project

CASES = cases()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("badproj"), TINY)


def test_the_corpus_is_large_and_varied():
    kinds = {c["kind"] for c in CASES}
    assert len(CASES) >= 30 and kinds == {"request", "params", "tofu", "model"}
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_is_rejected_and_changes_nothing(case, project, tmp_path):
    res = run_case(case, project, tmp_path)
    assert res["rejected"], res["messages"]
    assert res["message_ok"], (case["expect"], res["messages"])
    assert res["state_changes"] == [], res
    assert not os.path.exists("/tmp/pwned")  # the remote-code model case never ran its code


def test_the_state_probe_sees_a_valid_request(tmp_path):
    """Control: the same runner and probe on a valid request record an accepted input and a change
    (the inbox gains it), so the zero-change assertions above can fail."""
    from conftest import ROOT

    proj = make_project(tmp_path / "p", TINY)
    case = {"kind": "request", "file": str(ROOT / "requests/forget01-authors.yaml"), "expect": "", "why": "control",
            "id": "control", "name": "control"}
    res = run_case(case, proj, tmp_path / "w")
    assert not res["rejected"] and "inbox" in res["state_changes"], res


def test_messages_do_not_echo_the_subject(project, tmp_path):
    """A rejected request's message names the file and field, never the free text it holds."""
    from r2f.governance.requests import RequestError, read_request

    f = tmp_path / "r.yaml"
    f.write_text("request_id: req-x\nsubject: Jane Q Secretperson\nselectors: {authors: [Jane Q Secretperson, 3.5]}\n"
                 "requester: r\nlegal_basis: b\ncreated_at: 2026-01-01\n")
    with pytest.raises(RequestError) as exc:
        read_request(f)
    assert str(f) in str(exc.value) and "selectors.authors" in str(exc.value)
    assert "Secretperson" not in str(exc.value)


# -- property-based: the parser accepts exactly the valid requests --------------------------------
_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
_text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, blacklist_categories=("Cs", "Cc")),
                min_size=1, max_size=60).filter(lambda s: s.strip())
_value = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(), st.text(max_size=20),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@st.composite
def requests_(draw):
    qids = draw(st.lists(st.from_regex(r"tofu-[0-9]{4}", fullmatch=True), max_size=5, unique=True))
    authors = draw(st.lists(st.integers(0, 199), max_size=3, unique=True))
    return {"request_id": draw(_id), "subject": draw(_text), "requester": draw(_text), "legal_basis": draw(_text),
            "created_at": draw(st.dates(dt.date(2000, 1, 1), dt.date(2100, 1, 1))).isoformat(),
            "selectors": {"question_ids": qids, "authors": authors}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests_())
def test_valid_requests_parse_and_round_trip(raw):
    from r2f.governance.requests import RequestError, parse_request

    empty = not raw["selectors"]["question_ids"] and not raw["selectors"]["authors"]
    if empty:
        with pytest.raises(RequestError, match="names nothing to forget"):
            parse_request(raw, "prop.yaml")
        return
    req = parse_request(raw, "prop.yaml")
    assert parse_request(req.to_dict(), "again.yaml") == req
    assert req.request_id == raw["request_id"] and list(req.selectors.question_ids) == raw["selectors"]["question_ids"]


@settings(max_examples=300, deadline=None)
@given(requests_(), st.sampled_from(["request_id", "subject", "requester", "legal_basis", "created_at", "selectors"]),
       _value, st.booleans())
def test_corrupted_requests_raise_request_error_only(raw, field, value, drop):
    """Any field dropped or replaced by a value of another kind: either still a valid request or a
    RequestError naming the source; never another exception."""
    from r2f.governance.requests import RequestError, parse_request

    bad = dict(raw)
    if drop:
        bad.pop(field)
    else:
        bad[field] = value
    try:
        parse_request(bad, "prop.yaml")
    except RequestError as exc:
        assert str(exc).startswith("prop.yaml: ")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_reader(tmp_path_factory, data):
    from r2f.governance.requests import RequestError, read_request

    f = tmp_path_factory.mktemp("fuzz") / "r.yaml"
    f.write_bytes(data)
    try:
        read_request(f)
    except RequestError as exc:
        assert str(f) in str(exc)


# -- property-based: whatever YAML scalar the loader meets, accepted or a clear error --------------
_yaml_scalar = st.one_of(
    st.builds(lambda y, m, d: f"{y:04d}-{m:02d}-{d:02d}", st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32)),
    st.builds(lambda d, h, mi: f"{d}T{h:02d}:{mi:02d}:00Z", st.sampled_from(["2026-01-31", "2026-02-30", "0000-00-00"]),
              st.integers(0, 25), st.integers(0, 61)),
    st.sampled_from(["!!timestamp x", "!!int x", "!!float x", "!!bool maybe", "!!binary @@", "!!null x", "!!set [1]",
                     "!!omap [1]", "!!pairs 3", "!!python/name:os.system", "!foo bar", "&a 1", "*a", "0x1G", "1e999",
                     ".nan", "-.inf", "~", "[2026-02-30]", "{a: 2026-13-01}", "'2026-02-30'", "2026-02-30 extra"]),
    st.integers().map(str), st.floats().map(repr),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x7E), max_size=30),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_yaml_scalar)
def test_any_yaml_scalar_for_created_at_is_accepted_or_a_clear_error(tmp_path, scalar):
    """Issue #22 item 4: dates, numbers, tags, anchors as ``created_at``: the request loader accepts
    the file or raises RequestError naming it; never another exception."""
    from r2f.governance.requests import RequestError, read_request

    f = tmp_path / "r.yaml"
    f.write_text("request_id: req-p\nsubject: s\nselectors: {question_ids: [tofu-3990]}\nrequester: r\n"
                 f"legal_basis: b\ncreated_at: {scalar}\n")
    try:
        read_request(f)
    except RequestError as exc:
        assert str(exc).startswith(str(f)), exc


def test_an_impossible_date_is_a_clear_error_with_its_line(tmp_path):
    from r2f.governance.requests import RequestError, read_request

    f = tmp_path / "r.yaml"
    f.write_text("request_id: req-p\nsubject: s\nselectors: {question_ids: [tofu-3990]}\nrequester: r\n"
                 "legal_basis: b\ncreated_at: 2026-02-30\n")
    with pytest.raises(RequestError, match=r"line 6: value '2026-02-30' cannot be read: day is out of range"):
        read_request(f)
