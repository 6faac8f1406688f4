"""Issue #22 end to end: a request through a scheduled tick leaves no forget text anywhere under the
state folder or in the DVC cache (the forget set is ciphertext), retention shreds it (key destroyed,
request file removed), after which the text is nowhere and the audit still verifies every other link."""

from __future__ import annotations

import pytest
from conftest import TINY
from reliability_lib import EASY_GATE, FAST_EVAL, make_project, shredding_check

pytestmark = pytest.mark.slow


def test_a_served_request_is_encrypted_at_rest_then_crypto_shredded(tmp_path):
    project = make_project(tmp_path / "p", {**TINY, **FAST_EVAL, **EASY_GATE})
    res = shredding_check(project)
    assert res["tick_rc"] == 0 and res["state"] == "promoted", res["tick_log_tail"]
    assert res["searched_strings"] >= 100
    assert res["before"] == [], res["before"][:5]  # the DVC objects and every other file: ciphertext only
    assert res["control_hits"] >= res["searched_strings"] // 2  # the search finds plaintext when it is there
    assert res["enforce_rc"] == 0 and "1 request(s) shredded" in res["enforce_log"], res["enforce_log"]
    assert res["shredded"] == 1 and not res["key_file_left"]
    assert res["after"] == [], res["after"][:5]
    assert res["audit_rc"] == 0 and res["audit_verdict"] == "VERIFIED", res
    assert res["audit_shredded_at"] and res["audit_not_run"] == [  # what needs the key; the rest verified
        "request file matches its records", "selectors re-resolve to the recorded forget rows",
        "versioned forget set decrypts to the recorded rows"], res["audit_not_run"]
