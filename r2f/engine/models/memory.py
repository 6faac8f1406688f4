"""This process's peak resident memory (the stages' and benches' ``peak_rss_mb``)."""

from __future__ import annotations

from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: ``VmHWM`` from /proc (per address space, so it
    starts fresh at exec), else ``ru_maxrss``. On Linux ``ru_maxrss`` survives exec: a child
    started by a large parent reports the parent's peak (seen here: 11 GB for every child)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux: write 5 to /proc/self/clear_refs),
    so :func:`peak_rss_mb` reports the peak from here on. False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
