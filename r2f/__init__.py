"""R2F: Recover-to-Forget LLM unlearning.

A pure library: importing it configures nothing and loads no heavy dependency. See
``docs/architecture.md`` for the module map.
"""

__version__ = "0.1.0"
