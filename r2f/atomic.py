"""Atomic writes: every artifact (model, decoder, report, stage out) is built in a temporary
folder beside its destination and renamed into place, so a crash leaves the old or the new one,
never a partial one; temporary folders of dead processes are removed on the next write. JSON files
are written the same way (:func:`write_json`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def write_json(path: str | Path, obj, *, indent: int = 2, sort_keys: bool = True, newline: bool = False) -> Path:
    """Write ``obj`` as JSON atomically (a temporary file beside it, then rename; removed on error)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=indent, sort_keys=sort_keys, default=str)
            if newline:
                fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _remove_dead_leftovers(path: Path) -> None:
    """Temp and old folders of :func:`atomic_dir` left by a killed process (its pid is gone)."""
    for p in path.parent.glob(f".{path.name}.*-*"):
        kind, _, pid = p.name[len(path.name) + 2:].rpartition("-")
        if kind in ("tmp", "old") and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a temp folder next to ``path``; on success it replaces ``path`` in one rename.

    On any error the temp folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_leftovers(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
