"""MLflow Model Registry: pyfunc wrappers for R2F's artifacts, versions, aliases and the gate.

Aliases only (never the deprecated stages): ``champion`` is the model serving users, ``candidate``
the newest unlearned version. ``champion`` moves only through :func:`promote` with a passing gate
decision; every version carries the decision as tags. The functions take an ``MlflowClient``; the
tracker (:mod:`r2f.governance.tracking`) hands them its own and exposes them as methods.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from r2f.errors import R2FError


class RegistryError(R2FError, RuntimeError):
    """A registry operation failed; the message names the model and version."""


class CausalLMModel(PythonModel):
    """An HF causal-LM folder as a pyfunc: ``predict`` takes questions (list, Series or a DataFrame
    with a ``question`` column) and returns greedy answers."""

    def load_context(self, context):
        from r2f.engine.models.io import load_model

        self.model, self.tok = load_model(context.artifacts["model_dir"])
        self.max_len = int(self.model.config.max_position_embeddings)

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:
        from r2f.engine.scoring import generate

        qs = [model_input] if isinstance(model_input, str) else list(model_input)
        n = int((params or {}).get("max_new_tokens", 64))
        return generate(self.model, self.tok, [str(q) for q in qs], self.max_len, n, 16)


class DecoderModel(PythonModel):
    """An R2F gradient decoder folder; ``predict`` returns its description (the decoder itself is
    applied inside the unlearning step, on gradients, not on text)."""

    def load_context(self, context):
        self.meta = json.loads((Path(context.artifacts["decoder_dir"]) / "decoder.json").read_text())

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:
        return [json.dumps(self.meta, sort_keys=True)]


def log_pyfunc(folder: str, name: str, kind: str = "hf") -> str:
    """Log ``folder`` as a pyfunc model in the active run; returns ``model_info.model_uri``."""
    if kind == "hf":
        model, key = CausalLMModel(), "model_dir"
    elif kind == "decoder":
        model, key = DecoderModel(), "decoder_dir"
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    import logging

    # explicit requirements: no environment inference (slow, and it may try the network); the
    # CloudPickle notice is about loading untrusted models, these are our own
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    info = mlflow.pyfunc.log_model(name=name, python_model=model, artifacts={key: str(folder)},
                                   pip_requirements=["r2f", "torch", "transformers"])
    return info.model_uri


def register(client, model_uri: str, name: str, timeout_s: float = 60.0, tags: dict | None = None,
             description: str | None = None, model_description: str | None = None) -> int:
    """Create ``name`` if needed (described by ``model_description``) and a new version from
    ``model_uri`` (with ``tags`` and ``description`` from its creation on, so a crash can never leave
    an untagged version); waits until READY."""
    try:
        try:
            rm = client.get_registered_model(name)
            if model_description and not rm.description:
                client.update_registered_model(name, description=model_description)
        except MlflowException:
            client.create_registered_model(name, description=model_description)
        run_id = model_uri.split("/")[1] if model_uri.startswith("runs:/") else None
        # MLflow 3 logged models (models:/m-...): a tracking server requires the model id with them
        model_id = model_uri.split("/")[1] if model_uri.startswith("models:/m-") else None
        if model_id and run_id is None:
            run_id = client.get_logged_model(model_id).source_run_id
        mv = client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id,
                                         tags={k: str(v) for k, v in (tags or {}).items()},
                                         description=description)
    except MlflowException as exc:
        raise RegistryError(f"cannot register {model_uri} as {name}: {exc}") from exc
    t0 = time.monotonic()
    while mv.status != "READY":
        if time.monotonic() - t0 > timeout_s:
            raise RegistryError(f"{name} version {mv.version} not READY after {timeout_s} s ({mv.status})")
        time.sleep(0.2)
        mv = client.get_model_version(name, mv.version)
    return int(mv.version)


def get_alias_version(client, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(client, name: str, alias: str, version: int) -> None:
    client.set_registered_model_alias(name, alias, str(version))


def versions(client, name: str, **tags) -> list:
    """The versions of ``name`` whose tags include ``tags`` (oldest first; none when ``name`` is
    not registered yet)."""
    try:
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    hits = [mv for mv in found if all(mv.tags.get(k) == str(v) for k, v in tags.items())]
    return sorted(hits, key=lambda mv: int(mv.version))


FINAL_DECISIONS = ("promoted", "rejected")


def final_version(client, name: str, request_id: str):
    """The newest version of ``name`` that holds a final decision on ``request_id`` (tag
    ``decision`` promoted | rejected, written last by :func:`promote`), or None."""
    done = [mv for mv in versions(client, name, request_id=request_id)
            if mv.tags.get("decision") in FINAL_DECISIONS]
    return done[-1] if done else None


def version_of_run(client, name: str, run_id: str) -> int | None:
    """The version of ``name`` registered from run ``run_id`` (None when there is none or the
    registry cannot be searched)."""
    try:
        vs = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except Exception:  # noqa: BLE001
        return None
    return int(vs[0].version) if vs else None


def ensure_base(client, tracker, name: str, base_dir: str, experiment: str = "r2f-unlearning") -> int:
    """Register the untouched target as the first ``champion`` when ``name`` has none (idempotent,
    also after a crash between registering it and setting the alias: the tagged version is reused);
    ``client`` is the client on ``tracker``'s store, ``tracker`` logs the model."""
    current = get_alias_version(client, name, "champion")
    if current is not None:
        return current
    earlier = versions(client, name, role="base_target")
    if earlier:
        version = int(earlier[0].version)
    else:
        with tracker.start_run(experiment, "base-target", {"role": "base_target"}):
            tracker.describe_run("Registration of the untouched base target (the first champion).")
            _, version = tracker.log_model_dir(
                base_dir, "model", registered_name=name, tags={"role": "base_target"},
                description="The untouched base target: the first champion of the deletion chain. "
                            "Deletion requests are unlearned from the champion in turn.")
    set_alias(client, name, "champion", version)
    return version


def promote(client, name: str, version: int, decision: dict) -> bool:
    """Tag ``version`` with the gate decision; move ``champion`` to it only if it passed; then, as
    the very last write, tag ``decision`` (promoted | rejected): a version without that tag is an
    unfinished promotion, which a rerun completes (``r2f.governance.recovery.recover``)."""
    reasons = "; ".join(decision.get("reasons") or [])[:5000]
    for k, v in {"gate.passed": str(bool(decision["passed"])).lower(), "gate.reasons": reasons or "-",
                 "gate.decided_at": decision.get("decided_at", "")}.items():
        client.set_model_version_tag(name, str(version), k, v)
    passed = decision["passed"] is True
    if passed:
        set_alias(client, name, "champion", version)
    client.set_model_version_tag(name, str(version), "decision", "promoted" if passed else "rejected")
    return passed


def champion_summary(client, name: str, split: str) -> dict | None:
    """Metrics of the run that produced the champion version of ``name``, if it was evaluated (any
    split: model utility is computed on the retain / real-author / world-fact sets, which do not
    depend on the forget split; ``split`` is kept for the caller's record)."""
    v = get_alias_version(client, name, "champion")
    if v is None:
        return None
    mv = client.get_model_version(name, str(v))
    if not mv.run_id:
        return None
    run = client.get_run(mv.run_id)
    if "model_utility" not in run.data.metrics:
        return None
    return dict(run.data.metrics)


def champion_model(client, tracker, name: str, dest: str | Path, skip_roles: tuple[str, ...] = ()) -> dict | None:
    """The champion version of ``name``: ``{"version", "role", "run_id", "path"}`` with its model
    folder downloaded under ``dest`` by ``tracker`` (``path`` None, nothing downloaded, when its
    ``role`` tag is in ``skip_roles``); ``None`` when there is no champion yet."""
    v = get_alias_version(client, name, "champion")
    if v is None:
        return None
    mv = client.get_model_version(name, str(v))
    role = mv.tags.get("role", "unlearned")
    if role in skip_roles:
        return {"version": int(v), "role": role, "run_id": mv.run_id, "path": None}
    return {"version": int(v), "role": role, "run_id": mv.run_id,
            "path": str(tracker.download_model(name, int(v), dest))}


def register_candidate(client, tracker, name: str, base_dir: str, model_dir: str, run_id: str | None,
                       decision: dict, tags: dict, experiment: str = "r2f-unlearning",
                       description: str | None = None, fence=None) -> dict:
    """Base target as version 1 / ``champion`` (once), then the unlearned model as a new version
    (``tags`` from its creation on) with alias ``candidate``; ``champion`` moves only if
    ``decision['passed']``. After a crash mid-promotion, a rerun reuses the version already
    registered for the same request and weights (no ``decision`` tag yet) instead of adding one.
    ``client`` is the client on ``tracker``'s store, ``tracker`` logs the model. ``fence()`` is called
    right before the aliases move and raises when this promotion lost its lease (r2f.governance.lease)."""
    base = ensure_base(client, tracker, name, base_dir, experiment)
    same = [mv for mv in versions(client, name, request_id=tags.get("request_id"),
                                  weights_sha256=tags.get("weights_sha256"))
            if "decision" not in mv.tags and mv.run_id == run_id] if run_id else []
    if same:
        version = int(same[-1].version)
    else:
        with tracker.start_run(None, run_id=run_id):
            _, version = tracker.log_model_dir(model_dir, "model", registered_name=name, tags=tags,
                                               description=description)
            tracker.set_tags({"registered_model": name, "registered_version": version})
    if fence is not None:
        fence()
    set_alias(client, name, "candidate", version)
    promote(client, name, version, decision)
    return {"version": version, "champion_version": get_alias_version(client, name, "champion"),
            "base_version": base}
