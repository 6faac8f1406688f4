"""The governance floor: deletion requests, the inbox, data validation, the pipeline stages, the
promotion gate, MLflow tracking and registry, DVC versioning, lineage, the audit and recovery.

It builds on :mod:`r2f.engine` and never imports the CLI, ``flows``, Prefect or Dask
(``make lint`` checks this with import-linter).
"""
