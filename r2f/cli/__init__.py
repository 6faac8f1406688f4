"""The command line (``r2f``): the top floor, over the governance pipeline and the engine.

``main`` holds the commands, ``requests`` the deletion-request commands (``r2f request``,
``r2f inbox``, ``r2f audit``, ``r2f serve``), ``common`` the shared options and error handling.
"""

from r2f.cli.main import app, main

__all__ = ["app", "main"]
