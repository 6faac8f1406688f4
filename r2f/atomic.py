"""Atomic folder writes: every artifact (model, decoder, report, stage out) is built in a temporary
folder beside its destination and renamed into place, so a crash leaves the old or the new one,
never a partial one; temporary folders of dead processes are removed on the next write."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


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
