"""The audit report of one deletion request (:func:`r2f.governance.audit.audit`) as markdown, json
or html: ids, versions, keyed digests and check results only."""

from __future__ import annotations

import html
import json


def to_markdown(rep: dict) -> str:
    lines = [f"# Audit of deletion request {rep['request_id']}", "", f"**{rep['verdict']}**", "",
             f"State: {rep.get('state')}", ""]
    r = rep.get("request") or {}
    lines += ["## Request", "", f"- file: `{r.get('file')}` sha256 `{r.get('sha256')}`",
              f"- created_at: {r.get('created_at')}",
              f"- subject hmac: `{r.get('subject_hmac')}`; requester hmac: `{r.get('requester_hmac')}`; "
              f"legal basis hmac: `{r.get('legal_basis_hmac')}`", ""]
    if rep.get("forget_set_shredded_at"):
        lines += [f"**Forget set shredded at {rep['forget_set_shredded_at']}** (its key destroyed by retention): "
                  "the checks that need the text or the key are listed as not run.", ""]
    f = rep.get("forget_rows") or {}
    ids = f.get("item_ids") or []
    lines += ["## Forget rows", "", f"- {f.get('n_rows')} rows: {', '.join(ids[:8])}{' …' if len(ids) > 8 else ''}",
              f"- rows hmac `{f.get('rows_hmac_recorded')}`; DVC md5 `{f.get('dvc_md5')}`; git `{f.get('git_sha')}`", ""]
    d = rep.get("decoder") or {}
    reg = (f"registered version {d['version']}" if d.get("version") not in (None, "None")
           else "not registered (no trained weights)")
    lines += ["## Decoder", "", f"- decode used: {d.get('used') or 'not recorded'}"
              + ("" if d.get("trained_weights") in (None, "") else f" (trained weights: {d['trained_weights']})"),
              f"- hash `{d.get('decoder_hash')}`, MLflow run `{d.get('mlflow_run_id')}`, {reg}; "
              f"DVC md5 `{d.get('dvc_md5')}`",
              f"- proxy: {json.dumps(d.get('proxy') or {}, sort_keys=True)}", ""]
    m = rep.get("models") or {}
    before = (f"version {m['before']} (the champion then)" if m.get("before_source") == "champion"
              else "the untouched target" + (f" (version {m['before']})" if m.get("before") not in (None, "None") else ""))
    lines += ["## Model", "", f"- {m.get('registered_model')}: {before} → version {m.get('after')}; "
              f"champion now: version {m.get('champion_now')}", ""]
    g = rep.get("gate")
    if g:
        lines += ["## Gate", "", f"Decision: {'PASSED' if g['passed'] else 'FAILED'} at {g.get('decided_at')}", "",
                  "| rule | value | threshold | passed |", "|---|---|---|---|"]
        lines += [f"| {x['name']} | {x.get('value')} | {x.get('threshold')} | {x.get('passed')} |" for x in g["rules"]]
        lines.append("")
    lines += ["## State history", ""] + [f"- {h['at']}: {h['state']}"
                                         + (f" ({h['reason'][:200]})" if h.get("reason") else "")
                                          for h in rep.get("states") or []]
    lines += ["", "## Checks", "", "| check | ok | detail |", "|---|---|---|"]
    mark = {True: "yes", False: "**NO**", None: "not run"}
    lines += [f"| {c['check']} | {mark[c['ok']]} | {c['detail']} |" for c in rep["checks"]]
    return "\n".join(lines) + "\n"


def render(rep: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rep, indent=2, default=str)
    md = to_markdown(rep)
    if fmt == "md":
        return md
    if fmt == "html":
        body = html.escape(md)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>Audit {html.escape(rep['request_id'])}"
                f"</title></head><body><pre>{body}</pre></body></html>\n")
    raise ValueError(f"format {fmt!r}: expected md, json or html")
