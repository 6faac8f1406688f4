"""The ``r2f`` command line. Heavy libraries load inside commands, so ``r2f --help`` is instant."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}

app = typer.Typer(help="R2F: Recover-to-Forget LLM unlearning (TOFU default, offline, CPU).",
                  no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Train or inspect the embedded default models.", no_args_is_help=True)
decoder_app = typer.Typer(help="Train the gradient decoder on the proxy.", no_args_is_help=True)
request_app = typer.Typer(help="Deletion requests: submit to the inbox, list their states, find author names.",
                          no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(decoder_app, name="decoder")
app.add_typer(request_app, name="request")

ParamsOpt = typer.Option("params.yaml", "--params", "-p", help="Parameter file (params.yaml).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a parameter: --set lora.rank=4 (YAML value).")


def _setup() -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def _overrides(sets: Optional[list[str]]) -> dict:
    """``--set key=value`` options as a dict (values parsed as YAML)."""
    import yaml

    overrides = {}
    for s in sets or []:
        if "=" not in s:
            raise typer.BadParameter(f"--set expects key=value, got '{s}'")
        k, v = s.split("=", 1)
        overrides[k.strip()] = yaml.safe_load(v)
    return overrides


def _cfg(params: Path, sets: Optional[list[str]], **extra):
    from .config import ConfigError, load_config

    overrides = _overrides(sets)
    overrides.update({k: v for k, v in extra.items() if v is not None})
    try:
        return load_config(params, overrides)
    except ConfigError as exc:
        _fail(str(exc))


def _fail(msg: str):
    from rich.console import Console
    from rich.markup import escape

    # escaped: messages carry row lists like [tofu-9999] that rich would take for markup
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(msg)}")
    raise typer.Exit(2)


@contextmanager
def _ui():
    """(log, progress_factory) printing through one rich Progress."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as prog:
        def factory(label: str, total: int):
            task = prog.add_task(label, total=total)
            return lambda n=1: prog.advance(task, n)
        yield prog.console.print, factory


def _errors():
    from .data import DataError
    from .decoder import DecoderError
    from .models import ModelError
    from .unlearn import UnlearnError
    return (DataError, DecoderError, ModelError, UnlearnError)


@models_app.command("train")
def models_train(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Train (or load from the cache) the tokenizer and the target, proxy and retain models."""
    _setup()
    from .stages import train_models

    cfg = _cfg(params, set_)
    with _ui() as (log, prog):
        rep = train_models(cfg, log, prog)
    typer.echo(json.dumps({r: {k: v for k, v in m.items() if k != "loss_curve"} for r, m in rep["roles"].items()}, indent=2))
    typer.echo(f"models: {rep['models_dir']}")


@decoder_app.command("train")
def decoder_train(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
                  force: bool = typer.Option(False, help="Retrain even if a cached decoder exists.")) -> None:
    """Train the learned gradient decoder on (LoRA-grad, full-grad) pairs from the proxy."""
    _setup()
    from .stages import train_decoder

    cfg = _cfg(params, set_)
    with _ui() as (log, prog):
        rep = train_decoder(cfg, log, prog, force=force)
    typer.echo(f"decoder: {rep['decoder_dir']}")


@app.command()
def unlearn(
    method: str = typer.Option(None, "--method", "-m", help="r2f, fullgrad, lora_sin, lora_mul, gradascent, graddiff, npo, retrain."),
    forget: str = typer.Option(None, "--forget", "-f", help="Forget split: forget01, forget05, forget10."),
    model: Optional[Path] = typer.Option(None, help="Model folder or .gguf (default: the embedded target)."),
    out: Optional[Path] = typer.Option(None, help="Write the unlearned model here (HF folder)."),
    report: Optional[Path] = typer.Option(None, help="Write the JSON report here."),
    params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
) -> None:
    """Unlearn a forget split from the target and report NLL before/after and the chosen eta."""
    _setup()
    from .stages import unlearn as run_unlearn, write_json

    cfg = _cfg(params, set_, **{"data.forget_split": forget})
    try:
        with _ui() as (log, prog):
            rep = run_unlearn(cfg, method, forget, model, out, log, prog)
    except _errors() as exc:
        _fail(str(exc))
    if report:
        write_json(report, rep)
    _print_report(rep)


@app.command("eval")
def eval_(
    model: Optional[Path] = typer.Option(None, help="Model folder or .gguf (default: the embedded target)."),
    split: str = typer.Option(None, "--split", help="Forget split: forget01, forget05, forget10."),
    out: Optional[Path] = typer.Option(None, help="Folder for TOFU_EVAL.json and TOFU_SUMMARY.json "
                                       "(default: <state_dir>/eval/<model name>-<split>)."),
    params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
) -> None:
    """TOFU metrics (open-unlearning's keys) plus the paper's USR, GUR, RAP and identity drift.

    The retain model's evaluation (the forget-quality reference) and the target's (GUR, drift) are
    computed on first use and cached."""
    _setup()
    from .evaluation import EvalError
    from .stages import evaluate_model

    cfg = _cfg(params, set_, **{"data.forget_split": split})
    split = cfg.data.forget_split
    out = out or Path(cfg.state_dir) / "eval" / f"{(model.stem if model else 'target')}-{split}"
    try:
        with _ui() as (log, prog):
            rep = evaluate_model(cfg, model, split, out, log, prog)
    except (*_errors(), EvalError) as exc:
        _fail(str(exc))
    _print_summary(rep)
    typer.echo(f"results: {out / 'TOFU_SUMMARY.json'}")


SUMMARY_ROWS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
                "privleak", "extraction_strength", "usr", "gur", "rap", "drift_kl")


def _print_summary(rep: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{rep['model']} on {rep['split']}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in SUMMARY_ROWS:
        v = rep["summary"].get(k)
        t.add_row(k, "-" if v is None else f"{v:.4g}")
    Console().print(t)


def _print_report(rep: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{rep['method']} on {rep['forget_split']}  (eta={rep['eta']}, {rep['wall_s']} s)")
    t.add_column("answer NLL")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    for k in rep["nll_before"]:
        t.add_row(k, f"{rep['nll_before'][k]:.3f}", f"{rep['nll_after'][k]:.3f}")
    Console().print(t)


def _state_env(cfg) -> None:
    """Point Prefect and DVC state into the project's state folder (before they are imported)."""
    state = Path(cfg.state_dir).resolve()
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(state / "dvc-site-cache"))
    # the temporary Prefect server can take long to start on a loaded 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _pipeline_errors():
    from .pipeline import PipelineError
    from .requests import RequestError
    from .validation import ValidationError
    from .versioning import VersioningError
    from .config import ConfigError
    return (*_errors(), ConfigError, PipelineError, RequestError, ValidationError, VersioningError, OSError)


@app.command()
def stage(name: Optional[str] = typer.Argument(None, help="Stage: prepare, validate, train_models, "
                                               "train_decoder, unlearn, evaluate, gate, promote."),
          params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
          dvc_yaml: bool = typer.Option(False, "--dvc-yaml", help="Print dvc.yaml generated from the stage list.")) -> None:
    """Run one pipeline stage (what dvc.yaml calls; the Prefect flow runs the same functions)."""
    _setup()
    from .pipeline import run_stage

    if dvc_yaml:
        from .pipeline import dvc_yaml as gen

        typer.echo(gen(), nl=False)
        return
    if not name:
        _fail("a stage name is required (see r2f stage --help)")
    cfg = _cfg(params, set_)
    _state_env(cfg)
    try:
        with _ui() as (log, prog):
            res = run_stage(cfg, name, log, prog)
    except _pipeline_errors() as exc:
        _fail(str(exc))
    typer.echo(json.dumps(res, indent=2, default=str))


@app.command()
def run(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """The main job: the deletion request of pipeline.request through the whole pipeline (Prefect
    flow: prepare, validate, train models and decoder (cached), unlearn, evaluate, gate, promote),
    versioned with DVC and tracked in MLflow. Exit 0: promoted; 3: the gate rejected the candidate;
    2: bad input or a failed stage (nothing promoted)."""
    _setup()
    cfg = _cfg(params, set_)
    _state_env(cfg)
    overrides = _overrides(set_)
    try:
        from flows.unlearning import unlearning_flow

        results = unlearning_flow(str(params), overrides)
    except _pipeline_errors() as exc:
        _fail(str(exc))
    _print_run_summary(cfg, results)
    if not results["gate"]["passed"]:
        raise typer.Exit(3)


def _print_run_summary(cfg, results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from .tracking import resolve_uris

    req, gate, promo = results["prepare"], results["gate"], results["promote"]
    con = Console()
    con.print(f"[bold]request {req['request_id']}[/]: forgot {req['n_rows']} rows "
              f"(sha256 {req['rows_sha256'][:12]}…), evaluated on {req['eval_split']}, "
              f"method {results['unlearn']['method']} (eta {results['unlearn']['eta']})")
    t = Table(title="gate")
    for c in ("rule", "value", "threshold", "passed"):
        t.add_column(c)
    for r in gate["rules"]:
        v = r["value"]
        t.add_row(r["name"], "-" if v is None else f"{v:.4g}", f"{r['threshold']:g}", "yes" if r["passed"] else "[red]no[/]")
    con.print(t)
    if gate["passed"]:
        con.print(f"[green]PROMOTED[/]: {promo['registered_model']} version {promo['version']} is the new champion")
    else:
        con.print(f"[red]NOT PROMOTED[/]: {'; '.join(gate['reasons'])}. Champion stays version "
                  f"{promo.get('champion_version')}; candidate is version {promo['version']}")
    uri, _ = resolve_uris(cfg)
    con.print(f"MLflow: {uri}  (open the UI with `r2f ui`)")


@app.command()
def ui(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
       port: int = typer.Option(5000, help="Port on 127.0.0.1.")) -> None:
    """Start the MLflow UI (mlflow server on 127.0.0.1) over the project's tracking store."""
    _setup()
    from .tracking import ui_command

    cfg = _cfg(params, set_)
    argv = ui_command(cfg, port=port)
    typer.echo(" ".join(argv))
    os.execvp(argv[0], argv)


# -- deletion requests, schedule, audit ---------------------------------------------------------------
@request_app.command("submit")
def request_submit(file: Path = typer.Argument(..., help="Request file (YAML/JSON, docs/requests.md)."),
                   params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Validate a deletion request (schema + Great Expectations suite against the data) and put it
    in the inbox as pending. Invalid: exit 2, nothing is written."""
    _setup()
    from .data import load_tofu
    from .inbox import InboxError, inbox

    cfg = _cfg(params, set_)
    try:
        rec = inbox(cfg).submit(file, load_tofu(cfg.data.tofu_dir))
    except (*_pipeline_errors(), InboxError) as exc:
        _fail(str(exc))
    typer.echo(f"request {rec.request_id}: {rec.state} (submitted {rec.submitted_at}, sha256 {rec.source_sha256[:12]})")


@request_app.command("list")
def request_list(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
                 as_json: bool = typer.Option(False, "--json", help="JSON instead of a table.")) -> None:
    """Every request in the inbox with its state and the time it reached each state."""
    _setup()
    from .inbox import STATES, inbox

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
def request_authors(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
                    contains: Optional[str] = typer.Option(None, help="Only names containing this text.")) -> None:
    """TOFU author indices and names, for the selectors.authors of a request."""
    _setup()
    from .data import load_tofu

    names = load_tofu(_cfg(params, set_).data.tofu_dir).author_names()
    for a, n in sorted(names.items()):
        if not contains or contains.casefold() in n.casefold():
            typer.echo(f"{a:3d}  {n}")


@app.command()
def serve(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt,
          cron: Optional[str] = typer.Option(None, help="Cron schedule (default: schedule.cron)."),
          once: bool = typer.Option(False, "--once", help="Run one tick now and exit (no deployment).")) -> None:
    """Serve the scheduled deletion-request deployment (a Prefect flow.serve): every tick runs all
    pending inbox requests through the pipeline, each from the current champion. --once runs a
    single tick in the foreground (exit 0; 2 if a request failed)."""
    _setup()
    cfg = _cfg(params, set_)
    _state_env(cfg)
    from flows.unlearning import tick_flow

    if once:
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


@app.command()
def audit(request_id: str = typer.Argument(..., help="The request id."),
          fmt: str = typer.Option("md", "--format", "-f", help="md, json or html."),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the report here."),
          params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Reconstruct and verify a request's lineage offline (request file → forget rows and their DVC
    md5 → decoder and proxy → model before/after → gate → who/when). Prints VERIFIED, or names what
    does not match (exit 4). Ids and hashes only, never the forgotten text."""
    _setup()
    from .audit import AuditError, audit as run_audit, render

    if fmt not in ("md", "json", "html"):
        _fail(f"--format {fmt}: expected md, json or html")
    cfg = _cfg(params, set_)
    _state_env(cfg)
    try:
        rep = run_audit(cfg, request_id)
    except (AuditError, *_errors()) as exc:
        _fail(str(exc))
    text = render(rep, fmt)
    if out:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"{rep['verdict']} (report: {out})")
    else:
        typer.echo(text, nl=False)
    if not rep["verified"]:
        raise typer.Exit(4)


@app.command()
def history(params: Path = ParamsOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Processed deletion requests (promoted, rejected or failed), oldest first."""
    _setup()
    from .inbox import FINAL, inbox

    recs = [r for r in inbox(_cfg(params, set_)).records() if r.state in FINAL]
    if not recs:
        typer.echo("no processed requests")
    for r in recs:
        res = r.result
        typer.echo(f"{r.at(r.state)}  {r.request_id}  {r.state}  model version {res.get('model_version', '-')}  "
                   f"champion {res.get('champion_version', '-')}  run {res.get('mlflow_run_id', '-')}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
