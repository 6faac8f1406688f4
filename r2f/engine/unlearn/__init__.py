"""Unlearning methods: one small file each, one interface (:class:`~r2f.engine.unlearn.base.Method`).

Single-direction methods (``r2f``, ``r2f_paper``, ``fullgrad``, ``lora_sin``, ``lora_mul``) produce an update
direction and share the calibrated, finite-checked apply of :mod:`r2f.engine.unlearn.apply`; multi-step
methods (``gradascent``, ``graddiff``, ``npo``) fine-tune; ``retrain`` returns the retain model.
"""

from r2f.engine.unlearn.base import METHODS, UnlearnContext, UnlearnError, UnlearnResult, get_method, method_config

__all__ = ["METHODS", "UnlearnContext", "UnlearnError", "UnlearnResult", "get_method", "method_config"]
