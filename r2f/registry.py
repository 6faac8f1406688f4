"""Kept for MLflow models logged before the engine/governance split: their pickled pyfunc wrappers
name ``r2f.registry.CausalLMModel`` / ``DecoderModel``. New code imports
:mod:`r2f.governance.registry`."""

from r2f.governance.registry import CausalLMModel, DecoderModel

__all__ = ["CausalLMModel", "DecoderModel"]
