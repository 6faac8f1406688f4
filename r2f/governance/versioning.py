"""DVC versioning of the pipeline's artifacts (forget sets, models, decoder, unlearned model, eval).

The project is a DVC repo whose ``dvc.yaml`` declares every stage's outs. Under ``dvc repro`` DVC
records them itself; under the Prefect runner each stage's outs are recorded with ``dvc commit``
right after the stage, then pushed, so both runners leave the same ``dvc.lock`` and ``dvc repro``
afterwards finds everything up to date. The default remote is a folder under the state directory;
``versioning.remote_url`` points it anywhere DVC can reach (``s3://`` with ``remote_options`` such as
``endpointurl``: tests/test_remote_tracking.py runs the flow against an S3-compatible server). DVC's
site cache is kept in the state directory (``DVC_SITE_CACHE_DIR``), so nothing is written to the system temp folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from r2f.config import Config
from r2f.errors import R2FError

REMOTE = "r2f"


class VersioningError(R2FError, RuntimeError):
    """A DVC command failed; the message holds DVC's own error."""


def find_root(start: str | Path | None = None) -> Path | None:
    """The nearest folder (upwards) that holds ``dvc.yaml``."""
    p = Path(start or Path.cwd()).resolve()
    for d in (p, *p.parents):
        if (d / "dvc.yaml").is_file():
            return d
    return None


def _env(cfg: Config, root: Path) -> dict:
    env = dict(os.environ)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["DVC_SITE_CACHE_DIR"] = str((root / cfg.state_dir / "dvc-site-cache").resolve())
    return env


def dvc(cfg: Config, root: Path, *args: str) -> str:
    """Run one ``dvc`` command in ``root``; raise ``VersioningError`` with its output on failure."""
    exe = Path(sys.executable).with_name("dvc")
    cmd = [str(exe) if exe.is_file() else "dvc", *args]
    proc = subprocess.run(cmd, cwd=root, env=_env(cfg, root), capture_output=True, text=True, check=False)
    if proc.returncode:
        raise VersioningError(f"dvc {' '.join(args)} failed in {root}: "
                              f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


def remote_url(cfg: Config, root: Path) -> str:
    return cfg.versioning.remote_url or str((root / cfg.state_dir / "dvc-remote").resolve())


def cache_dir(root: Path) -> Path:
    """The repo's DVC cache folder (``cache.dir`` of ``.dvc/config`` / ``config.local``, else
    ``.dvc/cache``), read without starting DVC."""
    import configparser

    parser = configparser.ConfigParser()
    for f in (root / ".dvc/config", root / ".dvc/config.local"):
        if f.is_file():
            parser.read_string("\n".join(ln.strip() for ln in f.read_text().splitlines()))
    d = parser.get("cache", "dir", fallback=None)
    return (root / ".dvc" / d).resolve() if d else (root / ".dvc/cache").resolve()


def ensure_repo(cfg: Config, root: Path) -> None:
    """Make ``root`` a DVC repo (``dvc init`` when missing) with the configured default remote."""
    if not (root / ".dvc").is_dir():
        args = ["init", "-q"] + ([] if (root / ".git").exists() else ["--no-scm"])
        dvc(cfg, root, *args)
    url = remote_url(cfg, root)
    # --local: a machine's remote path stays out of the committed .dvc/config
    dvc(cfg, root, "remote", "add", "--local", "-f", "-d", REMOTE, url)
    for key, value in sorted(cfg.versioning.remote_options.items()):
        dvc(cfg, root, "remote", "modify", "--local", REMOTE, key, value)


def commit(cfg: Config, root: Path, stage: str) -> None:
    """Record a stage's current outs (and deps/params) in ``dvc.lock`` and the DVC cache."""
    dvc(cfg, root, "commit", "-f", "-q", stage)


def push(cfg: Config, root: Path, stage: str | None = None) -> None:
    if cfg.versioning.push:
        dvc(cfg, root, "push", "-q", "-r", REMOTE, *([stage] if stage else []))


def lock_md5s(root: Path) -> dict[str, str]:
    """``stage:path -> md5`` of every dep and out recorded in ``dvc.lock`` (what MLflow records)."""
    import yaml

    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    out = {}
    for stage, body in (data.get("stages") or {}).items():
        for kind in ("deps", "outs"):
            for entry in body.get(kind) or []:
                if entry.get("md5"):
                    out[f"{stage}:{entry['path']}"] = entry["md5"]
    return out


def status(cfg: Config, root: Path) -> str:
    """``dvc status`` of the pipeline ("Data and pipelines are up to date." when nothing changed)."""
    return dvc(cfg, root, "status").strip()
