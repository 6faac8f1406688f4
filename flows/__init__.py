"""Prefect flows: thin runners over the stage functions of :mod:`r2f.governance.pipeline`."""
