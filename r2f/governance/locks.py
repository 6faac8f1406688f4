"""Exclusive, non-blocking file locks (``fcntl.flock``) on the state folder.

``<state_dir>/pipeline/.lock`` is held by a pipeline run for its whole length (the Prefect flow)
or by one ``r2f stage`` (the DVC runner), so two runs can neither interleave their writes to the
stage outs nor both promote; ``<state_dir>/inbox/.lock`` by a scheduled tick. The kernel releases a
lock when its holder dies (SIGKILL included): a crashed run never leaves a stale lock. The lock file
records the holder's pid and start time for the error message only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from pathlib import Path

from r2f.errors import R2FError


class LockBusy(R2FError, RuntimeError):
    """Another process holds the lock; nothing was changed."""


@contextlib.contextmanager
def exclusive(path: str | Path, what: str):
    """Hold an exclusive lock on ``path`` for the block; :class:`LockBusy` (naming ``what``, the file and
    the holder) at once when another process holds it."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise LockBusy(f"{what}: another process holds {path} ({holder}); nothing was changed, "
                       "try again when it has finished") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {dt.datetime.now(dt.UTC):%Y-%m-%dT%H:%M:%SZ}".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def pipeline_lock(state_dir: str | Path):
    """The pipeline lock of a state folder (one run or stage at a time)."""
    return exclusive(Path(state_dir) / "pipeline" / ".lock", "pipeline run")
