"""MLflow tracking and registry behind a small injectable interface: ``MlflowTracker`` over one
store, ``NullTracker`` when tracking is off (built from the config by
:func:`r2f.governance.tracking_setup.make_tracker`). Importing this module does not import mlflow;
the tracker sets its URIs only around its own calls, so two trackers on two stores can live in one
process.

Safety: params and tags go through :func:`safe_params`, which flattens dicts and refuses long
free text (forget-set content must never reach MLflow; callers log ids and sha256 hashes).
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

from r2f.errors import R2FError

MAX_PARAM = 6000  # MLflow's param value limit (3.x)
MAX_FREE_TEXT = 200
NOTE = "mlflow.note.content"  # the description the MLflow UI shows for experiments and runs


class TrackingError(R2FError, RuntimeError):
    """The tracking store or registry refused an operation; the message says which."""


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def safe_params(d: dict) -> dict[str, str]:
    """Flatten and stringify; refuse free text (a string with spaces longer than 200 characters)."""
    out = {}
    for k, v in _flatten(d).items():
        s = "" if v is None else str(v)
        if isinstance(v, str) and len(s) > MAX_FREE_TEXT and " " in s:
            raise ValueError(f"param {k}: refusing to log {len(s)} characters of free text "
                             "(log ids or sha256 hashes, never forget-set content)")
        out[k] = s[:MAX_PARAM]
    return out


class NullTracker:
    """Tracking switched off: every call is accepted and does nothing."""

    active = False

    @contextmanager
    def start_run(self, experiment, run_name=None, tags=None, run_id=None):
        yield None

    def log_params(self, params): pass
    def log_metrics(self, metrics, step=None): pass
    def set_tags(self, tags): pass
    def set_run_tag(self, run_id, key, value): pass
    def log_dict(self, obj, artifact_file): pass
    def log_artifact(self, path, artifact_path=None): pass
    def find_run(self, experiment, tags): return None
    def close_stale_runs(self, experiment, tags, keep=None): return []
    def champion_summary(self, name, split): return None
    def champion_model(self, name, dest, skip_roles=()): return None

    def describe_run(self, text): pass
    def log_model_dir(self, model_dir, artifact_path, registered_name=None, kind="hf", tags=None, description=None):
        return None, None

    def register_candidate(self, name, base_dir, model_dir, run_id, decision, tags, experiment=None, description=None,
                           fence=None):
        return {"version": None, "champion_version": None, "base_version": None, "tracking": "disabled"}


class MlflowTracker:
    active = True

    def __init__(self, tracking_uri: str, artifact_root: str | None, notes: dict[str, str] | None = None):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri, self.artifact_root = tracking_uri, artifact_root
        # descriptions shown by the MLflow UI for experiments and registered models, by name
        self.notes = dict(notes or {})
        self._run_id: str | None = None

    # -- plumbing ---------------------------------------------------------------------------------
    @contextmanager
    def _uris(self):
        """Point mlflow's fluent API at this store for one block, then restore exactly what was
        there: ``set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``, which would otherwise leak
        into every later tracker and subprocess of this process."""
        import mlflow
        from mlflow.tracking._model_registry import utils as reg
        from mlflow.tracking._tracking_service import utils as trk

        saved = (trk._tracking_uri, reg._registry_uri,
                 {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")})
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        try:
            yield mlflow
        finally:
            trk._tracking_uri, reg._registry_uri, env = saved
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    @property
    def _client(self):
        """A client on this store; it stays inside the tracker (and the registry adapter it hands it to)."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _experiment_id(self, name: str) -> str:
        c = self._client
        exp = c.get_experiment_by_name(name)
        if exp is not None:
            if name in self.notes and NOTE not in exp.tags:
                c.set_experiment_tag(exp.experiment_id, NOTE, self.notes[name])
            return exp.experiment_id
        if self.artifact_root is None:  # a tracking server: its artifact store
            eid = c.create_experiment(name)
        else:
            loc = (Path(self.artifact_root) / name if "://" not in self.artifact_root
                   else f"{self.artifact_root}/{name}")
            eid = c.create_experiment(name, artifact_location=loc.as_uri() if isinstance(loc, Path) else loc)
        if name in self.notes:
            c.set_experiment_tag(eid, NOTE, self.notes[name])
        return eid

    def describe_run(self, text: str) -> None:
        """The active run's description (MLflow UI: the run's "Description"). Only ids, counts,
        hashes and decisions go in, never forget-set text."""
        self._client.set_tag(self._need_run(), NOTE, text)

    @contextmanager
    def start_run(self, experiment: str | None, run_name: str | None = None, tags: dict | None = None,
                  run_id: str | None = None):
        """Start (or, with ``run_id``, resume) a run; yields its id."""
        with self._uris() as mlflow:
            kw = {"run_id": run_id} if run_id else {"experiment_id": self._experiment_id(experiment),
                                                    "run_name": run_name}
            with mlflow.start_run(**kw, tags=safe_params(tags or {})) as run:
                prev, self._run_id = self._run_id, run.info.run_id
                try:
                    yield run.info.run_id
                finally:
                    self._run_id = prev

    def _need_run(self) -> str:
        if not self._run_id:
            raise TrackingError("no active run: call inside start_run()")
        return self._run_id

    def log_params(self, params: dict) -> None:
        rid = self._need_run()
        c = self._client
        existing = c.get_run(rid).data.params
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in safe_params(params).items() if k not in existing]  # params are write-once
        if new:
            c.log_batch(rid, params=new)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        rid = self._need_run()
        ok, skipped = [], []
        ts = int(time.time() * 1000)
        for k, v in _flatten(metrics).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                skipped.append(k)
                continue
            ok.append(Metric(k, float(v), ts, step or 0))
        for i in range(0, len(ok), 900):
            self._client.log_batch(rid, metrics=ok[i:i + 900])
        if skipped:
            self.set_tags({"skipped_metrics": ",".join(sorted(skipped))[:MAX_PARAM]})

    def set_tags(self, tags: dict) -> None:
        rid = self._need_run()
        for k, v in safe_params(tags).items():
            self._client.set_tag(rid, k, v)

    def set_run_tag(self, run_id: str, key: str, value: str) -> None:
        """Tag a finished run (retention records the shredding on the request's run)."""
        self._client.set_tag(run_id, key, value)

    def log_dict(self, obj, artifact_file: str) -> None:
        self._client.log_dict(self._need_run(), obj, artifact_file)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self._need_run(), path, artifact_path)

    def find_run(self, experiment: str, tags: dict) -> str | None:
        exp = self._client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        flt = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        runs = self._client.search_runs([exp.experiment_id], flt, max_results=1)
        return runs[0].info.run_id if runs else None

    def close_stale_runs(self, experiment: str, tags: dict, keep: str | None = None) -> list[str]:
        """Runs of ``experiment`` with ``tags`` that an earlier, killed attempt left behind: still
        RUNNING, or finished without a registered model (and not a record of rejected data). They are
        marked KILLED with tag ``status=abandoned``; ``keep`` (a run being resumed) is left alone.
        Called under the pipeline lock, when no live run can own them."""
        exp = self._client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        flt = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
        out = []
        for r in self._client.search_runs([exp.experiment_id], flt):
            t = r.data.tags
            stale = r.info.status == "RUNNING" or ("registered_version" not in t and t.get("status") not in (
                "rejected_data", "abandoned"))
            if r.info.run_id == keep or not stale:
                continue
            self._client.set_tag(r.info.run_id, "status", "abandoned")
            self._client.set_terminated(r.info.run_id, "KILLED")
            out.append(r.info.run_id)
        return out

    # -- reading the record (audit, recovery, inbox): MLflow entities, never the client ----------------
    def run(self, run_id: str):
        """The MLflow ``Run`` ``run_id`` (its ``data.tags``, ``data.params``, ``data.metrics``)."""
        return self._client.get_run(run_id)

    def model_version(self, name: str, version: int | str):
        """The ``ModelVersion`` ``name``/``version`` (its ``tags``, ``run_id``, ``source``)."""
        return self._client.get_model_version(name, str(version))

    def versions(self, name: str, **tags) -> list:
        """The versions of ``name`` whose tags include ``tags``, oldest first."""
        from r2f.governance.registry import versions

        return versions(self._client, name, **tags)

    def final_version(self, name: str, request_id: str):
        """The newest version of ``name`` holding a final decision on ``request_id``, or None."""
        from r2f.governance.registry import final_version

        return final_version(self._client, name, request_id)

    def version_of_run(self, name: str, run_id: str) -> int | None:
        """The version of ``name`` registered from run ``run_id``, or None."""
        from r2f.governance.registry import version_of_run

        return version_of_run(self._client, name, run_id)

    def alias_version(self, name: str, alias: str) -> int | None:
        """The version ``alias`` (``champion``, ``candidate``) of ``name`` points to, or None."""
        from r2f.governance.registry import get_alias_version

        return get_alias_version(self._client, name, alias)

    def set_version_tag(self, name: str, version: int | str, key: str, value: str) -> None:
        self._client.set_model_version_tag(name, str(version), key, value)

    # -- models and registry ------------------------------------------------------------------------
    def log_model_dir(self, model_dir: str, artifact_path: str, registered_name: str | None = None,
                      kind: str = "hf", tags: dict | None = None, description: str | None = None
                      ) -> tuple[str, int | None]:
        """Log a folder as an MLflow pyfunc model in the active run (``kind`` hf: an HF causal LM
        answering questions; decoder: an R2F gradient decoder); register it when ``registered_name``
        is given, the version with ``description`` (and the registered model with its note).
        Returns (model_info.model_uri, version or None)."""
        from r2f.governance.registry import log_pyfunc, register

        self._need_run()
        with self._uris():
            uri = log_pyfunc(model_dir, artifact_path, kind)
        version = (register(self._client, uri, registered_name, tags=tags, description=description,
                            model_description=self.notes.get(registered_name))
                   if registered_name else None)
        return uri, version

    def champion_summary(self, name: str, split: str) -> dict | None:
        """Metrics of the run behind the champion of ``name`` (:func:`r2f.governance.registry.champion_summary`)."""
        from r2f.governance.registry import champion_summary

        return champion_summary(self._client, name, split)

    def champion_model(self, name: str, dest: str | Path, skip_roles: tuple[str, ...] = ()) -> dict | None:
        """The champion of ``name``, downloaded under ``dest`` (:func:`r2f.governance.registry.champion_model`)."""
        from r2f.governance.registry import champion_model

        return champion_model(self._client, self, name, dest, skip_roles)

    def download_model(self, name: str, version: int, dest: str | Path) -> Path:
        """The HF model folder of registered version ``name``/``version``, downloaded under ``dest``."""
        mv = self.model_version(name, version)
        with self._uris() as mlflow:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dest)))
        found = [p.parent for p in sorted(local.glob("artifacts/*/config.json"))]
        if len(found) != 1:
            raise TrackingError(f"{name} version {version}: expected one model folder in its artifacts, "
                                f"found {len(found)}")
        return found[0]

    def load_json_artifact(self, run_id: str, path: str) -> dict | None:
        """A JSON artifact of a run (``gate/decision.json``, ...), or None when it is missing."""
        import json
        import tempfile

        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as tmp, self._uris() as mlflow:
            try:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
            except (MlflowException, OSError):
                return None
            return json.loads(Path(local).read_text())

    def register_candidate(self, name: str, base_dir: str, model_dir: str, run_id: str | None,
                           decision: dict, tags: dict, experiment: str = "r2f-unlearning",
                           description: str | None = None, fence=None) -> dict:
        """Register the unlearned model as the new ``candidate`` and promote it if the gate passed
        (:func:`r2f.governance.registry.register_candidate`)."""
        from r2f.governance.registry import register_candidate

        return register_candidate(self._client, self, name, base_dir, model_dir, run_id, decision, tags,
                                  experiment, description, fence)
