"""Shared pieces of the ``r2f`` command line: options, configuration loading, errors, progress UI.
Heavy libraries load inside the functions, so ``r2f --help`` stays instant."""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import typer

from r2f.errors import R2FError
from r2f.progress import PlainProgress

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}

ParamsOpt = typer.Option("params.yaml", "--params", "-p",
                         help="Parameter file (params.yaml; a variant may `extends:` it, e.g. params-smollm2-tofu.yaml).")
SetOpt = typer.Option(None, "--set", "-s", help="Override a parameter: --set lora.rank=4 (YAML value).")


def _setup() -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def _overrides(sets: list[str] | None) -> dict:
    """``--set key=value`` options as a dict (values parsed as YAML)."""
    import yaml

    overrides = {}
    for s in sets or []:
        if "=" not in s:
            raise typer.BadParameter(f"--set expects key=value, got '{s}'")
        k, v = s.split("=", 1)
        overrides[k.strip()] = yaml.safe_load(v)
    return overrides


def _cfg(params: Path, sets: list[str] | None, **extra):
    from r2f.config import ConfigError, load_config

    overrides = _overrides(sets)
    overrides.update({k: v for k, v in extra.items() if v is not None})
    try:
        return load_config(params, overrides)
    except ConfigError as exc:
        _fail(str(exc))


def _fail(msg: str, code: int = 2):
    from rich.console import Console
    from rich.markup import escape

    # escaped: messages carry row lists like [tofu-9999] that rich would take for markup
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(msg)}")
    raise typer.Exit(code)


@contextmanager
def _ui():
    """(log, progress_factory): one rich Progress on a terminal, plain progress lines otherwise."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        def write(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)
        yield write, PlainProgress(write)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as prog:
        def factory(label: str, total: int):
            task = prog.add_task(label, total=total)
            return lambda n=1: prog.advance(task, n)
        yield prog.console.print, factory


def _errors():
    """What a command turns into a clear message and its exit code: every :class:`R2FError`."""
    return (R2FError,)


def _fail_on(exc: BaseException):
    """:func:`_fail` with the error's message and its ``exit_code`` (2 for an ``OSError``)."""
    _fail(str(exc), getattr(exc, "exit_code", 2))

def _state_env(cfg) -> None:
    """Point Prefect and DVC state into the project's state folder (before they are imported)."""
    state = Path(cfg.state_dir).resolve()
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    # Prefect creates only the last folder of its home: without the parents its temporary server
    # cannot open its database and the first flow times out
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(state / "dvc-site-cache"))
    # the temporary Prefect server can take long to start on a loaded 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


class _StageEcho(logging.Handler):
    """Shows the person what a flow is doing: R2F's own lines (stages, what each does; records
    marked ``r2f`` by flows/unlearning.py), and anything at WARNING or above. Prefect's engine lines
    (task created, finished in state ...) stay in the log file."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            print(f"{record.levelname.lower()}: {msg}", file=sys.stderr, flush=True)
        elif getattr(record, "r2f", False):
            print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def quiet_prefect_env() -> None:
    """Before Prefect is imported: its console handler shows warnings and errors only (its INFO
    lines still reach Prefect's own run log and the file of :func:`flow_console`); MLflow's
    INFO notices (database set-up) are not shown either."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


@contextmanager
def flow_console(cfg, command: str):
    """While a Prefect flow runs: every flow and task log line (INFO and up) goes to
    ``<state_dir>/logs/<command>-<time>.log``; the console gets the stage lines and warnings.
    Yields the log file's path."""
    folder = Path(cfg.state_dir) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{command}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    file = logging.FileHandler(path, encoding="utf-8")
    file.setLevel(logging.INFO)
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    echo = _StageEcho(logging.INFO)
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    for lg in loggers:
        lg.addHandler(file)
        lg.addHandler(echo)
    try:
        yield path
    finally:
        for lg in loggers:
            lg.removeHandler(file)
            lg.removeHandler(echo)
        file.close()


def _pipeline_errors():
    """Commands that write state report OS errors (disk full, permissions) the same way."""
    return (R2FError, OSError)
