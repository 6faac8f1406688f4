"""``r2f request submit|list|authors``, ``r2f serve``, ``r2f audit``, ``r2f history`` and ``r2f retention
enforce|shred``: deletion requests through the inbox, the scheduled deployment, the lineage audit
(docs/requests.md) and the crypto-shredding of forget sets (docs/privacy.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from r2f.cli.common import (
    ParamsOpt,
    SetOpt,
    _cfg,
    _errors,
    _fail,
    _fail_on,
    _overrides,
    _pipeline_errors,
    _setup,
    _state_env,
    flow_console,
    quiet_prefect_env,
)

request_app = typer.Typer(help="Deletion requests: submit to the inbox, list their states, find author names.",
                          no_args_is_help=True)


@request_app.command("submit")
def request_submit(file: Path = typer.Argument(..., help="Request file (YAML/JSON, docs/requests.md)."),
                   params: Path = ParamsOpt, set_: list[str] | None = SetOpt) -> None:
    """Validate a deletion request (schema + Great Expectations suite against the data) and put it
    in the inbox as pending. Invalid: exit 2, nothing is written."""
    _setup()
    from r2f.engine.data import load_tofu
    from r2f.governance.inbox import inbox

    cfg = _cfg(params, set_)
    try:
        rec = inbox(cfg).submit(file, load_tofu(cfg.data.tofu_dir))
    except _pipeline_errors() as exc:
        _fail_on(exc)
    typer.echo(f"request {rec.request_id}: {rec.state} (submitted {rec.submitted_at}, sha256 {rec.source_sha256[:12]})")


@request_app.command("list")
def request_list(params: Path = ParamsOpt, set_: list[str] | None = SetOpt,
                 as_json: bool = typer.Option(False, "--json", help="JSON instead of a table.")) -> None:
    """Every request in the inbox with its state and the time it reached each state."""
    _setup()
    from r2f.governance.inbox import STATES, inbox

    recs = inbox(_cfg(params, set_)).records()
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in recs], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{len(recs)} request(s)")
    for c in ("request", "state", *STATES[:4], "final at", "model version"):
        t.add_column(c)
    for r in recs:
        final = r.at(r.state) if r.state in ("promoted", "rejected", "failed") else ""
        t.add_row(r.request_id, r.state, *[(r.at(s) or "")[5:16].replace("T", " ") for s in STATES[:4]],
                  (final or "")[5:16].replace("T", " "), str(r.result.get("model_version") or ""))
    Console().print(t)


@request_app.command("authors")
def request_authors(params: Path = ParamsOpt, set_: list[str] | None = SetOpt,
                    contains: str | None = typer.Option(None, help="Only names containing this text.")) -> None:
    """TOFU author indices and names, for the selectors.authors of a request."""
    _setup()
    from r2f.engine.data import load_tofu

    names = load_tofu(_cfg(params, set_).data.tofu_dir).author_names()
    for a, n in sorted(names.items()):
        if not contains or contains.casefold() in n.casefold():
            typer.echo(f"{a:3d}  {n}")


def serve(params: Path = ParamsOpt, set_: list[str] | None = SetOpt,
          cron: str | None = typer.Option(None, help="Cron schedule (default: schedule.cron)."),
          once: bool = typer.Option(False, "--once", help="Run one tick now and exit (no deployment).")) -> None:
    """Serve the scheduled deletion-request deployment (a Prefect flow.serve): every tick runs all
    pending inbox requests through the pipeline, each from the current champion. --once runs a
    single tick in the foreground (exit 0; 2 if a request failed)."""
    _setup()
    cfg = _cfg(params, set_)
    _state_env(cfg)
    quiet_prefect_env()
    from flows.unlearning import tick_flow

    if once:
        with flow_console(cfg, "serve-once") as log_path:
            typer.echo(f"r2f serve --once: Prefect's log lines go to {log_path}", err=True)
            res = tick_flow(str(params), _overrides(set_))
        for p in res["processed"]:
            typer.echo(f"{p['request_id']}: {p['state']}")
        if not res["processed"]:
            typer.echo("busy: another tick is running" if res["busy"] else "nothing pending")
        if any(p["state"] == "failed" for p in res["processed"]):
            raise typer.Exit(2)
        return
    from prefect import serve as prefect_serve

    from flows.unlearning import tick_deployment

    typer.echo(f"serving r2f-scheduled-tick on cron '{cron or cfg.schedule.cron}' (Ctrl-C to stop)")
    prefect_serve(tick_deployment(str(params), _overrides(set_), cron or cfg.schedule.cron))


def audit(request_id: str = typer.Argument(..., help="The request id."),
          fmt: str = typer.Option("md", "--format", "-f", help="md, json or html."),
          out: Path | None = typer.Option(None, "--out", "-o", help="Write the report here."),
          params: Path = ParamsOpt, set_: list[str] | None = SetOpt) -> None:
    """Reconstruct and verify a request's lineage offline (request file → forget rows and their DVC
    md5 → decoder and proxy → model before/after → gate → who/when). Prints VERIFIED, or names what
    does not match (exit 4). Ids and hashes only, never the forgotten text."""
    _setup()
    from r2f.governance.audit import audit as run_audit
    from r2f.governance.audit_report import render

    if fmt not in ("md", "json", "html"):
        _fail(f"--format {fmt}: expected md, json or html")
    cfg = _cfg(params, set_)
    _state_env(cfg)
    try:
        rep = run_audit(cfg, request_id)
    except _errors() as exc:
        _fail_on(exc)
    text = render(rep, fmt)
    if out:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"{rep['verdict']} (report: {out})")
    else:
        typer.echo(text, nl=False)
    if not rep["verified"]:
        raise typer.Exit(4)


def history(params: Path = ParamsOpt, set_: list[str] | None = SetOpt) -> None:
    """Processed deletion requests (promoted, rejected or failed), oldest first."""
    _setup()
    from r2f.governance.inbox import FINAL, inbox

    recs = [r for r in inbox(_cfg(params, set_)).records() if r.state in FINAL]
    if not recs:
        typer.echo("no processed requests")
    for r in recs:
        res = r.result
        typer.echo(f"{r.at(r.state)}  {r.request_id}  {r.state}  model version {res.get('model_version', '-')}  "
                   f"champion {res.get('champion_version', '-')}  run {res.get('mlflow_run_id', '-')}")


retention_app = typer.Typer(help="Retention of forget sets: crypto-shred final requests once privacy.retention_days "
                                 "have passed (docs/privacy.md).", no_args_is_help=True)


@retention_app.command("enforce")
def retention_enforce(params: Path = ParamsOpt, set_: list[str] | None = SetOpt,
                      now: str | None = typer.Option(None, help="Judge the windows at this ISO time instead of now "
                                                                "(a dry look ahead is `r2f request list`).")) -> None:
    """Shred every inbox request that is final and past its retention window: destroy its key (the
    encrypted forget set in the run folder, DVC cache and remote becomes unreadable), remove its
    plaintext request file, record the time in the inbox and on its MLflow run. Every scheduled tick
    does the same. Exit 0 (also when nothing is due); 2 on an error."""
    _setup()
    import datetime as dt

    from r2f.governance.retention import enforce

    cfg = _cfg(params, set_)
    _state_env(cfg)
    try:
        at = dt.datetime.fromisoformat(now) if now else None
    except ValueError:
        _fail(f"--now {now!r}: not an ISO date/time")
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    try:
        done = enforce(cfg, at, log=typer.echo)
    except _pipeline_errors() as exc:
        _fail_on(exc)
    typer.echo(f"retention: {len(done)} request(s) shredded")


@retention_app.command("shred")
def retention_shred(request_id: str = typer.Argument(..., help="The request id."),
                    force: bool = typer.Option(False, "--force", help="Also a request that is not final yet."),
                    params: Path = ParamsOpt, set_: list[str] | None = SetOpt) -> None:
    """Shred one request now, whatever its retention window (a final request; --force for one still
    pending, e.g. withdrawn). Exit 2 when it is unknown or not final."""
    _setup()
    from r2f.governance.retention import shred

    cfg = _cfg(params, set_)
    _state_env(cfg)
    try:
        shred(cfg, request_id, log=typer.echo, force=force)
    except _pipeline_errors() as exc:
        _fail_on(exc)


def register(app: typer.Typer) -> None:
    """Add these commands to the main ``r2f`` app."""
    app.add_typer(request_app, name="request")
    app.add_typer(retention_app, name="retention")
    app.command()(serve)
    app.command()(audit)
    app.command()(history)
