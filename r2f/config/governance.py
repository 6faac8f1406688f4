"""The governance sections of ``params.yaml``: validation, tracking, versioning, pipeline, schedule,
scale and gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from r2f.config._base import _Strict


class ValidationConfig(_Strict):
    """Great Expectations checks on forget / retain / holdout data and deletion requests."""

    min_question_chars: int = Field(8, ge=1)
    max_question_chars: int = Field(1000, ge=1)
    min_answer_chars: int = Field(1, ge=1)
    max_answer_chars: int = Field(4000, ge=1)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidationConfig:
        for f in ("question", "answer"):
            if getattr(self, f"min_{f}_chars") > getattr(self, f"max_{f}_chars"):
                raise ValueError(f"min_{f}_chars exceeds max_{f}_chars")
        return self


class TrackingConfig(_Strict):
    """MLflow tracking and registry. ``tracking_uri`` None: ``$MLFLOW_TRACKING_URI`` if set, else
    ``sqlite:///<state_dir>/mlflow/mlflow.db`` with artifacts under ``<state_dir>/mlflow/artifacts``."""

    enabled: bool = True
    tracking_uri: str | None = None
    artifact_root: str | None = None
    decoder_experiment: str = "r2f-proxy-decoder"
    unlearning_experiment: str = "r2f-unlearning"
    target_model_name: str = "r2f-target"
    decoder_model_name: str = "r2f-decoder"


class VersioningConfig(_Strict):
    """DVC: artifacts are tracked in the project's DVC repo and pushed to ``remote_url`` (None: the
    local remote ``<state_dir>/dvc-remote``)."""

    enabled: bool = True
    remote_url: str | None = None
    push: bool = True
    # `dvc remote modify` options of that remote (s3: endpointurl, region, ...); credentials come
    # from the environment (AWS_ACCESS_KEY_ID, ...) or .dvc/config.local, never from params.yaml
    remote_options: dict[str, str] = Field(default_factory=dict)

    @field_validator("remote_options")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        import re

        for k in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", k):
                raise ValueError(f"remote_options: {k!r} is not a DVC remote option name")
            if any(s in k for s in ("secret", "password", "token", "access_key", "key_id", "credential")):
                raise ValueError(f"remote_options: {k!r} is a credential; set it in the environment or "
                                 "with `dvc remote modify --local`, not in params.yaml")
        return v


class PipelineConfig(_Strict):
    """The main job: which deletion request the pipeline runs, and from which model (docs/pipeline.md)."""

    request: str = "requests/forget01-authors.yaml"
    # champion: unlearn from the registry's current champion (sequential deletions build on each
    # other); target: always from the embedded target (independent, reproducible by `dvc repro`)
    start_from: Literal["champion", "target"] = "champion"
    # A request whose final decision is in the registry is not processed again (exactly once, also
    # after a crash); true: run it again as a new candidate (comparing methods, a changed gate)
    rerun: bool = False
    # One promotion at a time across hosts (r2f.governance.lease): a lease with a fencing token in the
    # registry's database; lease_uri None: the tracking URI when it is a database (sqlite/postgresql)
    lease: bool = True
    lease_uri: str | None = None
    lease_ttl_s: float = Field(600.0, gt=0)


class ScheduleConfig(_Strict):
    """Scheduled runs over the request inbox (`r2f serve`, docs/requests.md)."""

    cron: str = "0 2 * * *"          # every night at 02:00
    mode: Literal["sequential", "batch"] = "sequential"  # one unlearning per request, or one for all pending


class PrivacyConfig(_Strict):
    """Forget sets at rest (docs/privacy.md): a key per request, AES-GCM ciphertext in the run folders,
    DVC and MLflow, and the key destroyed once a final request's retention window has passed."""

    # "file": one key file per request under key_dir (mode 0600); "module:Class": a key-service
    # provider implementing r2f.governance.privacy.KeyStore, built with the Config
    key_store: str = "file"
    key_dir: str | None = None       # the file store's folder; None: <state_dir>/keys
    retention_days: float = Field(30.0, ge=0)   # after a request reaches a final state

    @field_validator("key_store")
    @classmethod
    def _provider(cls, v: str) -> str:
        import re

        if v != "file" and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError(f"{v!r}: expected 'file' or 'module:Class'")
        return v


class ScaleConfig(_Strict):
    """Where the Prefect flow runs R2F's per-item gradient shards and the evaluation shards
    (docs/deployment.md). ``serial``: in the stage's own process (as ``r2f stage`` always does).
    ``dask``: as Prefect tasks on a ``DaskTaskRunner``: on the scheduler at ``address`` (None:
    ``$DASK_SCHEDULER_ADDRESS`` if set, else a ``LocalCluster`` the flow starts for the run)."""

    executor: Literal["serial", "dask"] = "serial"
    address: str | None = None       # tcp://host:8786 of a running Dask scheduler
    workers: int | None = Field(None, ge=1, le=256)   # LocalCluster workers; None: one per CPU core
    threads_per_worker: int = Field(1, ge=1, le=64)   # torch threads in each worker process
    shards: int | None = Field(None, ge=1, le=1024)   # gradient shards; None: one per worker

    @field_validator("address")
    @classmethod
    def _scheduler_address(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("address must not be empty (null: a LocalCluster)")
        return v


class GateConfig(_Strict):
    """Promotion rules (docs/pipeline.md); every rule is an independent, named check."""

    min_forget_quality: float = Field(0.05, ge=0, le=1)
    min_utility_ratio: float = Field(0.95, ge=0)  # model_utility >= this x the champion's (per-step loss)
    # model_utility >= this x the base target's, the chain's first champion: bounds the total loss of a
    # chain of deletions that each pass the per-step rule (0.96^3 = 0.885 < 0.90)
    min_utility_vs_base: float = Field(0.90, ge=0)
    max_abs_privleak: float = Field(50.0, ge=0)
    min_usr: float = Field(0.5, ge=0, le=1)
