"""Progress reporting that needs no terminal (no heavy imports)."""

from __future__ import annotations

import time


class PlainProgress:
    """Progress as plain lines, for output that is not a terminal (CI logs, ``nohup``, pipes), where
    rich draws nothing: a line when a task starts, at every further 10 % or ``every_s`` seconds, and
    when it completes."""

    def __init__(self, write, every_s: float = 30.0):
        self.write, self.every_s = write, every_s

    def __call__(self, label: str, total: int):

        t0 = time.monotonic()
        state = {"done": 0, "pct": 0, "at": t0}
        self.write(f"{label}: 0/{total}")

        def tick(n: int = 1) -> None:
            state["done"] += n
            done, now = state["done"], time.monotonic()
            pct = 100 * done // max(total, 1)
            if done >= total or pct >= state["pct"] + 10 or now - state["at"] >= self.every_s:
                state.update(pct=pct, at=now)
                self.write(f"{label}: {done}/{total} ({pct} %, {now - t0:.0f} s)")
        return tick
