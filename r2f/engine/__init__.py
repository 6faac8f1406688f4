"""The unlearning engine (ground floor): data, models, gradients, the gradient decoder, the
unlearning methods, evaluation and metrics.

It imports nothing of the governance floor (``r2f.governance``), the CLI or ``flows``, and none of
prefect, mlflow, dvc, great_expectations or dask (``make lint`` checks this with import-linter).
Entry points for a caller that is not the pipeline: :mod:`r2f.engine.api`.
"""
