"""bench/report.py: figures and tables rendered from result JSONs, stale results labelled, and
--check failing on a number that differs from its JSON or a stale number left unlabelled."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import provenance  # noqa: E402
import report  # noqa: E402

DEPS = ["bench/provenance.py"]


@pytest.fixture()
def results(tmp_path, monkeypatch):
    folder = tmp_path / "results"
    folder.mkdir()
    doc = tmp_path / "doc.md"
    monkeypatch.setattr(report, "RESULTS", folder)
    monkeypatch.setattr(report, "DOCS", [doc])
    monkeypatch.setattr(report, "ROOT", tmp_path)
    report.result.cache_clear()

    def add(stem: str, rows: list[dict], code_sha256: str | None) -> None:
        prov = {"commit": "abcdef0123456789", "date": "2026-12-01T00:00:00Z", "deps": DEPS, "command": "python x",
                "cpus": 2, "load_before": [0.1, 0, 0], "load_after": [1.0, 0, 0], "wall_s": 1.0}
        if code_sha256:
            prov["code_sha256"] = code_sha256
        (folder / f"{stem}.json").write_text(json.dumps({"benchmark": stem, "rows": rows, "provenance": prov}))
        report.result.cache_clear()
    yield add, doc
    report.result.cache_clear()


def test_fresh_figure_and_table(results):
    add, doc = results
    add("b", [{"m": "r2f", "x": 0.123456}, {"m": "npo", "x": 2.5}], provenance.code_sha256(DEPS))
    doc.write_text("R2F <!--r:b#rows[m=r2f].x|.3f-->9<!--/r--> vs\n<!--r:table b cols=m,x fmt=.2f--><!--/r-->\n")
    out = report.render_text(doc.read_text(), "doc")
    assert "R2F <!--r:b#rows[m=r2f].x|.3f-->0.123<!--/r-->" in out
    assert "| r2f | 0.12 |" in out and "| npo | 2.50 |" in out and "commit abcdef0" in out
    assert "stale" not in out


def test_stale_result_is_labelled_and_check_fails_until_rendered(results, capsys):
    add, doc = results
    add("b", [{"m": "r2f", "x": 0.5}], "0" * 64)  # the code changed since: hashes differ
    doc.write_text("x = <!--r:b#rows[m=r2f].x|.1f-->0.5<!--/r-->\n")
    assert report.render_text(doc.read_text(), "doc") == "x = <!--r:b#rows[m=r2f].x|.1f-->0.5 (stale: abcdef0)<!--/r-->\n"
    assert report.result("b").stale and "changed since" in report.result("b").stale
    sys.argv = ["report.py", "--check"]
    assert report.main() == 1  # the unlabelled stale number fails the check
    sys.argv = ["report.py"]
    assert report.main() == 0
    sys.argv = ["report.py", "--check"]
    assert report.main() == 0
    add("legacy", [{"m": "r2f", "x": 1.0}], None)  # written before provenance: stale
    assert "before results recorded" in report.result("legacy").stale


def test_edited_number_fails_the_check(results):
    add, doc = results
    add("b", [{"m": "r2f", "x": 0.5}], provenance.code_sha256(DEPS))
    doc.write_text("x = <!--r:b#rows[m=r2f].x|.1f-->0.6<!--/r-->\n")  # typed by hand, differs from the JSON
    sys.argv = ["report.py", "--check"]
    assert report.main() == 1


@pytest.mark.parametrize("marker, error", [
    ("<!--r:missing#rows[m=r2f].x-->1<!--/r-->", "no result"),
    ("<!--r:b#rows[m=sgd].x-->1<!--/r-->", "0 rows match"),
    ("<!--r:b#rows[m=r2f].y-->1<!--/r-->", "no field 'y'"),
])
def test_bad_markers_name_the_problem(results, marker, error):
    add, doc = results
    add("b", [{"m": "r2f", "x": 0.5}], provenance.code_sha256(DEPS))
    with pytest.raises(report.ReportError, match=error):
        report.render_text(marker, "doc")


def test_code_hash_follows_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    first = provenance.code_sha256(["pkg"])
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    assert provenance.code_sha256(["pkg"]) == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert provenance.code_sha256(["pkg"]) != first
    # "!glob" leaves files out: a change there does not make the result stale
    (tmp_path / "pkg" / "cli.py").write_text("a = 1\n")
    left_out = provenance.code_sha256(["pkg", "!pkg/cli.py"])
    (tmp_path / "pkg" / "cli.py").write_text("a = 2\n")
    assert provenance.code_sha256(["pkg", "!pkg/cli.py"]) == left_out


def test_repository_results_render_cleanly():
    """The committed README, docs and result pages are what report.py renders (make lint runs --check too)."""
    report.result.cache_clear()
    plan = report.planned()
    differ = [str(f.relative_to(ROOT)) for f, t in plan.items() if not f.is_file() or f.read_text() != t]
    assert not differ, f"run `python bench/report.py`: {differ}"
