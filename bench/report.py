"""Render every result-backed number in README.md and docs/*.md from bench/results/*.json.

    python bench/report.py            # rewrite the marked figures, tables and result pages
    python bench/report.py --check    # fail (exit 1) when anything differs from what it would write

What it renders (nothing else in the files is touched):

* **Figures** inside prose: ``<!--r:STEM#PATH|FMT-->0.51<!--/r-->``. ``STEM`` is a result file
  under bench/results without ``.json`` (``cost``, ``cost-1.7b/cost``); ``PATH`` walks the JSON:
  dotted keys, and ``rows[k=v,k2=v2]`` picks the one row whose fields equal those values (exactly
  one must match); ``FMT`` is a Python format spec (default ``.3g``; ``.1%`` gives ``29.2%``).
* **Tables**: ``<!--r:table STEM cols=a,b,c [where=k=v;k2=v2] [fmt=.3g]-->...<!--/r-->``: those
  columns of the matching rows, with a line naming the file, its commit and date.
* **Result pages** (bench/results/*.md, written by the benches): a status line at the top
  (commit, date, command, machine load; stale or not) and the hand-written reading kept beside the
  result in ``<stem>.reading.md`` (its first line ``<!-- reads: COMMIT -->`` names the commit whose
  result it reads; when the result is newer, the page says so).
* ``bench/results/INDEX.md``: every result with its status.

A result is **stale** when the code it measures changed after it was written: its provenance records
the bench's dependency paths and a hash of their files (bench/provenance.py), and the hash of the
current files differs; a result without provenance (written before it existed) is stale too. Every
figure and table from a stale result is labelled ``(stale: COMMIT)``, so ``--check`` fails when a
number differs from its JSON or when a stale number is not labelled: rerun the bench, or run this
script to label it, and commit.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, code_sha256  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"<!--r:(.*?)-->(.*?)<!--/r-->", re.S)
READS = re.compile(r"^<!-- reads: ([0-9a-f]{7,40}) -->\n?")


class ReportError(Exception):
    """A marker names a result, row or field that does not exist."""


@dataclass
class Result:
    stem: str
    data: dict

    @property
    def prov(self) -> dict:
        return self.data.get("provenance") or {}

    @property
    def commit(self) -> str:
        return (self.prov.get("commit") or self.data.get("env", {}).get("git_sha") or "unknown")[:7]

    @property
    def date(self) -> str:
        return (self.prov.get("date") or self.data.get("env", {}).get("date") or "?")[:10]

    @property
    def stale(self) -> str | None:
        """None when fresh; else why it is stale."""
        if not self.prov.get("code_sha256"):
            return "written before results recorded the code they measure"
        if self.prov.get("code_changed_during_run"):
            return "the code it measures changed while it ran"
        if _hash(tuple(self.prov["deps"])) != self.prov["code_sha256"]:
            return "the code it measures (" + ", ".join(self.prov["deps"]) + ") changed since"
        return None

    def label(self) -> str:
        return f" (stale: {self.commit})" if self.stale else ""


@cache
def _hash(deps: tuple[str, ...]) -> str:
    return code_sha256(deps)


@cache
def result(stem: str) -> Result:
    path = RESULTS / f"{stem}.json"
    if not path.is_file():
        raise ReportError(f"no result bench/results/{stem}.json")
    return Result(stem, json.loads(path.read_text()))


def all_results() -> list[Result]:
    """Every bench result under bench/results (JSONs with ``benchmark`` and ``rows``)."""
    found = (result(str(p.relative_to(RESULTS).with_suffix(""))) for p in sorted(RESULTS.rglob("*.json")))
    return [r for r in found if isinstance(r.data, dict) and "benchmark" in r.data and "rows" in r.data]


# -- figures --------------------------------------------------------------------------------------
def _select(rows: list[dict], cond: str, where: str) -> dict:
    want = dict(kv.split("=", 1) for kv in cond.split(",") if kv)
    hits = [r for r in rows if all(str(r.get(k)) == v for k, v in want.items())]
    if len(hits) != 1:
        raise ReportError(f"{where}: {len(hits)} rows match [{cond}] (exactly one must)")
    return hits[0]


def lookup(data, path: str, where: str):
    cur = data
    for part in re.findall(r"[^.\[]+(?:\[[^\]]*\])?", path):
        m = re.fullmatch(r"([^\[]+)(?:\[([^\]]*)\])?", part)
        key, cond = m.group(1), m.group(2)
        if not isinstance(cur, dict) or key not in cur:
            raise ReportError(f"{where}: no field '{key}'")
        cur = cur[key]
        if cond is not None:
            cur = _select(cur, cond, where)
    return cur


def fmt(value, spec: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if spec.endswith("d") and isinstance(value, float) and value.is_integer():
        value = int(value)
    return format(value, spec)


def figure(query: str, where: str) -> str:
    ref, _, spec = query.partition("|")
    stem, _, path = ref.partition("#")
    res = result(stem.strip())
    return fmt(lookup(res.data, path.strip(), f"{where} {stem}"), spec.strip() or ".3g") + res.label()


# -- tables ---------------------------------------------------------------------------------------
def table(query: str, where: str) -> str:
    words = query.split()
    stem, opts = words[1], dict(w.split("=", 1) for w in words[2:])
    res = result(stem)
    cols = opts["cols"].split(",")
    rows = res.data["rows"]
    for cond in filter(None, opts.get("where", "").split(";")):
        k, v = cond.split("=", 1)
        rows = [r for r in rows if str(r.get(k)) == v]
    if not rows:
        raise ReportError(f"{where}: no rows of {stem} match {opts.get('where')}")
    spec = opts.get("fmt", ".3g")
    lines = ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c), spec) if r.get(c) is not None else "" for c in cols) + " |"
              for r in rows]
    status = f"; **stale**: {res.stale}" if res.stale else ""
    lines += ["", f"*bench/results/{stem}.json, commit {res.commit}, {res.date}{status}.*", ""]
    return "\n".join(lines)


def render_text(text: str, where: str) -> str:
    def sub(m: re.Match) -> str:
        query = m.group(1).strip()
        if query.startswith("table "):
            body = table(query, where)
        elif query.startswith(("status ", "reading ")):
            body = page_block(query, where)
        else:
            body = figure(query, where)
        return f"<!--r:{m.group(1)}-->{body}<!--/r-->"
    return MARK.sub(sub, text)


# -- result pages ---------------------------------------------------------------------------------
def page_block(query: str, where: str) -> str:
    kind, stem = query.split(None, 1)
    res = result(stem)
    if kind == "status":
        p = res.prov
        if not p:
            return (f"\n> **Stale**: measured at commit {res.commit} on {res.date}, before results recorded "
                    "the code they measure; rerun the bench.\n")
        load = f"load {p['load_before'][0]} before / {p['load_after'][0]} after on {p['cpus']} CPUs"
        state = f"**stale**: {res.stale}" if res.stale else "current"
        dirty = " (uncommitted changes in the measured paths, included in the code hash)" if p.get("dirty") else ""
        return (f"\n> Measured at commit {res.commit}{dirty} on {res.date} ({p.get('wall_s')} s, {load}): "
                f"{state}. `{p['command']}`\n")
    reading = RESULTS / f"{stem}.reading.md"
    text = reading.read_text()
    m = READS.match(text)
    if not m:
        raise ReportError(f"{reading}: the first line must be <!-- reads: COMMIT -->")
    reads = m.group(1)[:7]
    head = f"\n## Reading (of the result of commit {reads})\n\n"
    if reads != res.commit:
        head += (f"> This reading was written for the result of commit {reads}; the table above is from "
                 f"commit {res.commit}. Check that it still holds.\n\n")
    return head + text[m.end():].strip() + "\n"


def render_page(md: Path) -> str:
    stem = str(md.relative_to(RESULTS).with_suffix(""))
    text = md.read_text()
    if f"<!--r:status {stem}-->" not in text:
        first, _, rest = text.partition("\n")
        text = f"{first}\n<!--r:status {stem}--><!--/r-->\n{rest}"
    reading = RESULTS / f"{stem}.reading.md"
    if reading.is_file() and f"<!--r:reading {stem}-->" not in text:
        text = text.rstrip("\n") + f"\n\n<!--r:reading {stem}--><!--/r-->\n"
    return render_text(text, str(md.relative_to(ROOT)))


def index() -> str:
    lines = ["# Results index", "",
             "Written by `bench/report.py` from every JSON here. A stale result was measured on code that has "
             "changed since: its numbers are labelled wherever README and docs quote them.", "",
             "| result | benchmark | commit | date | status | command |", "|---|---|---|---|---|---|"]
    for r in all_results():
        cmd = r.prov.get("command", "")
        lines.append(f"| [{r.stem}]({r.stem}.md) | {r.data['benchmark']} | {r.commit} | {r.date} | "
                     f"{'stale: ' + r.stale if r.stale else 'current'} | `{cmd}` |")
    return "\n".join(lines) + "\n"


def planned() -> dict[Path, str]:
    """Every managed file and the text it should hold."""
    out: dict[Path, str] = {}
    for doc in DOCS:
        out[doc] = render_text(doc.read_text(), str(doc.relative_to(ROOT)))
    for r in all_results():
        md = RESULTS / f"{r.stem}.md"
        if md.is_file():
            out[md] = render_page(md)
    out[RESULTS / "INDEX.md"] = index()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if any file would change")
    args = p.parse_args()
    try:
        plan = planned()
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    changed = {f: t for f, t in plan.items() if not f.is_file() or f.read_text() != t}
    stale = [r for r in all_results() if r.stale]
    if args.check:
        for f, t in changed.items():
            old = f.read_text().splitlines() if f.is_file() else []
            diff = difflib.unified_diff(old, t.splitlines(), str(f.relative_to(ROOT)), "rendered", lineterm="", n=0)
            print("\n".join(list(diff)[:40]))
        if changed:
            print(f"report --check: {len(changed)} file(s) differ from bench/results/*.json "
                  "(run `python bench/report.py` and commit, or rerun the benches)", file=sys.stderr)
            return 1
        print(f"report --check: README, docs and result pages match bench/results ({len(stale)} stale results "
              "labelled)")
        return 0
    for f, t in changed.items():
        f.write_text(t)
        print(f"rendered {f.relative_to(ROOT)}")
    print(f"{len(stale)} stale results: " + ", ".join(r.stem for r in stale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
