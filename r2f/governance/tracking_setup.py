"""Tracker setup from the config: where the MLflow store is, what its experiments and models are.

``make_tracker(cfg)`` returns an ``MlflowTracker`` over the configured store (default: sqlite under
the state folder) or a ``NullTracker`` when ``tracking.enabled`` is false; ``ui_command`` is the
``mlflow server`` over the same store (``r2f ui``).
"""

from __future__ import annotations

import os
from pathlib import Path

from r2f.config import Config
from r2f.governance.tracking import MlflowTracker, NullTracker


def resolve_uris(cfg: Config) -> tuple[str, str | None]:
    """(tracking_uri, artifact_root) from the config, ``$MLFLOW_TRACKING_URI``, or the default
    sqlite store and artifact folder under the state directory. Against a tracking *server*
    (http/https) without a configured artifact_root, artifact_root is None: the server's own
    artifact store is used (``mlflow server --serve-artifacts``), so clients need no shared disk."""
    state = Path(cfg.state_dir).resolve() / "mlflow"
    uri = cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state / 'mlflow.db'}"
    server = uri.startswith(("http://", "https://"))
    root = cfg.tracking.artifact_root or (None if server else str(state / "artifacts"))
    return uri, root


def notes(cfg: Config) -> dict[str, str]:
    """What each experiment and registered model of the project is (MLflow UI descriptions)."""
    t = cfg.tracking
    return {
        t.unlearning_experiment: "R2F deletion requests: one run per request and method (the unlearning step, "
        "its TOFU + paper evaluation, the promotion gate's decision), plus the run that registered the base "
        "target. Run names are <request id>-<method>; the request's rows appear only as ids and sha256 hashes.",
        t.decoder_experiment: "R2F gradient decoders fitted on the proxy model: one run per decoder "
        "configuration hash (proxy architecture, LoRA settings, decoder training and its held-out fidelity).",
        t.target_model_name: "The target model as deletions are applied. Version 1 is the untouched base target; "
        "every later version is the candidate of one deletion request (tags request_id, forget_rows_hmac, "
        "weights_sha256, decision). The alias 'champion' is the model in service; it moves only when the "
        "promotion gate passes. 'candidate' is the latest candidate.",
        t.decoder_model_name: "R2F gradient decoders (LoRA gradients -> full-weight update directions), one "
        "version per decoder configuration; each version's description says whether it holds trained weights.",
    }


def make_tracker(cfg: Config):
    """The project's tracker: MLflow over :func:`resolve_uris`, or a ``NullTracker`` when tracking is off."""
    if not cfg.tracking.enabled:
        return NullTracker()
    return MlflowTracker(*resolve_uris(cfg), notes=notes(cfg))


def ui_command(cfg: Config, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """argv of ``mlflow server`` over the project's store (``r2f ui`` execs it)."""
    import sys

    uri, root = resolve_uris(cfg)
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            *(["--default-artifact-root", root] if root else []), "--host", host, "--port", str(port)]
