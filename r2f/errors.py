"""One base for every error R2F raises on purpose.

The command line catches :class:`R2FError` (and ``OSError``) alone and exits with the error's
``exit_code`` after printing its message: a clear error naming the file, row or field, never a
traceback. Each concept keeps its own subclass (``DataError``, ``ModelError``, ...), which also
derives from the matching built-in (``ValueError`` for bad input, ``RuntimeError`` for a failed
operation), so ``except ValueError`` around a loader still works.
"""

from __future__ import annotations


class R2FError(Exception):
    """Base of the project's errors; ``exit_code``: the CLI's exit status for it (2: bad input or a
    failed step, nothing changed)."""

    exit_code = 2
