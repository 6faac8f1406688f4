"""The ``r2f`` command line. Heavy libraries load inside commands, so ``r2f --help`` is instant."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import typer
from typer.core import TyperCommand

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
    _ui,
    flow_console,
    quiet_prefect_env,
)
from r2f.cli.requests import register as register_requests

app = typer.Typer(help="R2F: Recover-to-Forget LLM unlearning (TOFU default, offline, CPU).",
                  no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Train the embedded default models; list and convert packaged real models.",
                         no_args_is_help=True)
decoder_app = typer.Typer(help="Train the gradient decoder on the proxy.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(decoder_app, name="decoder")


@models_app.command("train")
def models_train(params: Path = ParamsOpt, set_: list[str] | None = SetOpt) -> None:
    """Train (or load from the cache) the target, proxy and the retain model of data.forget_split.

    params.yaml: the toy world (trained from scratch); params-smollm2-tofu.yaml: the packaged
    SmolLM2 fine-tuned on TOFU, checkpointed every epoch so an interrupted run resumes (docs/worlds.md)."""
    _setup()
    from r2f.engine.api import train_zoo

    cfg = _cfg(params, set_)
    with _ui() as (log, prog):
        rep = train_zoo(cfg, log, prog)
    typer.echo(json.dumps({r: {k: v for k, v in m.items() if k != "loss_curve"} for r, m in rep["roles"].items()}, indent=2))
    typer.echo(f"models: {rep['models_dir']}")


@models_app.command("packaged")
def models_packaged() -> None:
    """List the real pretrained models R2F can load from pinned PyPI packages (offline)."""
    import importlib.metadata as md

    from r2f.engine.pretrained import PACKAGED

    for s in PACKAGED.values():
        try:
            have = md.distribution(s.distribution).version
        except md.PackageNotFoundError:
            have = "not installed"
        typer.echo(f"{s.name}: {s.distribution}=={s.version} ({have}), {s.family}, {s.license}, "
                   f"prompt format {s.prompt_format}; sha256 {s.sha256[:16]}...")


@models_app.command("convert")
def models_convert(name: str = typer.Argument(..., help="A name from `r2f models packaged`."),
                   params: Path = ParamsOpt, set_: list[str] | None = SetOpt) -> None:
    """Check a packaged model's sha256 and convert it once to a cached HF folder; prints the folder
    (pass it to `r2f unlearn --model` / `r2f eval --model`)."""
    _setup()
    from r2f.engine.models.io import ModelError
    from r2f.engine.pretrained import materialize

    cfg = _cfg(params, set_)
    try:
        with _ui() as (log, _prog):
            out = materialize(cfg.state_dir, name, log)
    except ModelError as e:
        _fail(str(e))
    typer.echo(str(out))


@decoder_app.command("train")
def decoder_train(params: Path = ParamsOpt, set_: list[str] | None = SetOpt,
                  force: bool = typer.Option(False, help="Retrain even if a cached decoder exists.")) -> None:
    """Fit the gradient decoder of the configured method on the proxy: under the default activation
    basis only the token weighting is fitted; with unlearn.method r2f_paper (or lora.init peft) the
    learned decoder is trained on (LoRA-grad, full-grad) pairs."""
    _setup()
    from r2f.engine.api import ensure_decoder
    from r2f.engine.unlearn import method_config

    cfg = method_config(_cfg(params, set_))
    with _ui() as (log, prog):
        rep = ensure_decoder(cfg, log, prog, force=force)
    typer.echo(f"decoder: {rep['decoder_dir']}")


@app.command()
def unlearn(
    method: str = typer.Option(None, "--method", "-m",
                               help="r2f, r2f_pc, r2f_paper (the paper's configuration), fullgrad, fused (needs "
                                    "unlearn.eta.value), lora_sin, lora_mul, gradascent, graddiff, npo, retrain."),
    forget: str = typer.Option(None, "--forget", "-f", help="Forget split: forget01, forget05, forget10."),
    model: Path | None = typer.Option(None, help="Model folder or .gguf (default: the embedded target)."),
    out: Path | None = typer.Option(None, help="Write the unlearned model here (HF folder)."),
    report: Path | None = typer.Option(None, help="Write the JSON report here."),
    params: Path = ParamsOpt, set_: list[str] | None = SetOpt,
) -> None:
    """Unlearn a forget split from the target and report NLL before/after and the chosen eta.
    The report names the decoder really used (configured vs used, trained weights or not) and the
    settings that had no effect in this configuration (also printed).
    Exit 2 with nothing written on bad input (a --model none of whose layers is in
    lora.target_modules is refused before any work), a NaN update, or when no eta of unlearn.eta.grid keeps
    the retain NLL within unlearn.eta.retain_budget (the step is refused, never applied anyway)."""
    _setup()
    from r2f.atomic import write_json
    from r2f.engine.api import unlearn_model

    cfg = _cfg(params, set_, **{"data.forget_split": forget})
    try:
        with _ui() as (log, prog):
            rep = unlearn_model(cfg, method, forget, model, out, log, prog)
    except _errors() as exc:
        _fail_on(exc)
    if report:
        write_json(report, rep)
    _print_report(rep)


@app.command("eval")
def eval_(
    model: Path | None = typer.Option(None, help="Model folder or .gguf (default: the embedded target)."),
    split: str = typer.Option(None, "--split", help="Forget split: forget01, forget05, forget10."),
    out: Path | None = typer.Option(None, help="Folder for TOFU_EVAL.json and TOFU_SUMMARY.json "
                                       "(default: <state_dir>/eval/<model name>-<split>)."),
    params: Path = ParamsOpt, set_: list[str] | None = SetOpt,
) -> None:
    """TOFU metrics (open-unlearning's keys) plus the paper's USR, GUR, RAP and identity drift.

    The retain model's evaluation (the forget-quality reference) and the target's (GUR, drift) are
    computed on first use and cached."""
    _setup()
    from r2f.engine.api import evaluate_model

    cfg = _cfg(params, set_, **{"data.forget_split": split})
    split = cfg.data.forget_split
    out = out or Path(cfg.state_dir) / "eval" / f"{(model.stem if model else 'target')}-{split}"
    try:
        with _ui() as (log, prog):
            rep = evaluate_model(cfg, model, split, out, log, prog)
    except _errors() as exc:
        _fail_on(exc)
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
    con = Console()
    con.print(t)
    d = rep.get("decoder")
    if d:
        con.print(f"decoder used: {d['used']} (configured {d['configured']}; trained weights: "
                  f"{'yes' if d['trained_weights'] else 'no'}; token weighting: {d['weighting_source']})")
    if rep.get("unused_settings"):
        con.print(f"settings with no effect here: {', '.join(rep['unused_settings'])}")



class _StageCommand(TyperCommand):
    """``r2f stage --help`` lists the stages of ``STAGES`` with their help lines (read when the help is
    shown: the pipeline module stays out of ``r2f --help``)."""

    def format_help(self, ctx, formatter) -> None:
        from r2f.governance.pipeline import STAGES

        doc = inspect.cleandoc(self.callback.__doc__ or "")
        width = max(len(s.name) for s in STAGES)
        self.help = f"{doc}\n\nStages, in order:\n" + "\n".join(f"{s.name:<{width}}  {s.help}" for s in STAGES)
        super().format_help(ctx, formatter)


@app.command(cls=_StageCommand)
def stage(name: str | None = typer.Argument(None, help="The stage to run (listed below)."),
          params: Path = ParamsOpt, set_: list[str] | None = SetOpt,
          dvc_yaml: bool = typer.Option(False, "--dvc-yaml", help="Print dvc.yaml generated from the stage list.")) -> None:
    """Run one pipeline stage (what dvc.yaml calls; the Prefect flow runs the same functions)."""
    _setup()
    from r2f.governance.pipeline import run_stage

    if dvc_yaml:
        from r2f.governance.pipeline import dvc_yaml as gen

        typer.echo(gen(), nl=False)
        return
    if not name:
        _fail("a stage name is required (see r2f stage --help)")
    cfg = _cfg(params, set_)
    _state_env(cfg)
    from r2f.governance.locks import pipeline_lock

    try:
        with pipeline_lock(cfg.state_dir), _ui() as (log, prog):
            res = run_stage(cfg, name, log, prog)
    except _pipeline_errors() as exc:
        _fail_on(exc)
    typer.echo(json.dumps(res, indent=2, default=str))


@app.command()
def run(params: Path = ParamsOpt, set_: list[str] | None = SetOpt) -> None:
    """The main job: the deletion request of pipeline.request through the whole pipeline (Prefect
    flow: prepare, validate, train models and decoder (cached), unlearn, evaluate, gate, promote),
    versioned with DVC and tracked in MLflow. A request is processed once: when the registry already
    holds its decision, nothing is done (pipeline.rerun=true runs it again); a run killed midway is
    finished by the next one. One run per state folder at a time (others exit 2 at once).
    --set scale.executor=dask runs the gradient and evaluation shards as Prefect tasks on Dask (a
    LocalCluster, or scale.address / $DASK_SCHEDULER_ADDRESS; docs/deployment.md).
    Exit 0: promoted; 3: the gate rejected the candidate; 2: bad input, a failed stage or another
    run busy (nothing promoted).
    The console shows each stage, R2F's progress lines and the summary; Prefect's own log lines go to
    <state_dir>/logs/run-<time>.log (named on the first line)."""
    _setup()
    cfg = _cfg(params, set_)
    _state_env(cfg)
    quiet_prefect_env()
    overrides = _overrides(set_)
    try:
        from flows.unlearning import unlearning_flow

        with flow_console(cfg, "run") as log_path:
            typer.echo(f"r2f run: request {cfg.pipeline.request}; Prefect's log lines go to {log_path}", err=True)
            results = unlearning_flow(str(params), overrides)
    except _pipeline_errors() as exc:
        _fail_on(exc)
    if "already_processed" in results:
        done = results["already_processed"]
        typer.echo(f"request {done['request_id']} was already processed: {done['registered_model']} version "
                   f"{done['version']} {done['decision']}. Nothing was done (set pipeline.rerun=true to run it "
                   "again as a new candidate).")
        if not done["passed"]:
            raise typer.Exit(3)
        return
    _print_run_summary(cfg, results)
    if not results["gate"]["passed"]:
        raise typer.Exit(3)


def _print_run_summary(cfg, results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from r2f.governance.tracking_setup import resolve_uris

    req, gate, promo = results["prepare"], results["gate"], results["promote"]
    con = Console()
    con.print(f"[bold]request {req['request_id']}[/]: forgot {req['n_rows']} rows "
              f"(hmac {req['rows_hmac'][:12]}…), evaluated on {req['eval_split']}, "
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
def ui(params: Path = ParamsOpt, set_: list[str] | None = SetOpt,
       port: int = typer.Option(5000, help="Port on 127.0.0.1.")) -> None:
    """Start the MLflow UI (mlflow server on 127.0.0.1) over the project's tracking store."""
    _setup()
    from r2f.governance.tracking_setup import ui_command

    cfg = _cfg(params, set_)
    argv = ui_command(cfg, port=port)
    typer.echo(" ".join(argv))
    os.execvp(argv[0], argv)


register_requests(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
