"""The whole pipeline with the real tools on a tiny configuration: Prefect flow (test harness),
sqlite MLflow store and registry, a DVC repo with a local remote, GX suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY

pytestmark = pytest.mark.slow

FAST_EVAL = {"eval.max_items": 12, "eval.max_new_tokens": 12, "eval.rap_steps": 2, "eval.batch_size": 32}


@pytest.fixture(scope="module")
def harness():  # one temporary Prefect server for the module (~8 s)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("project"))


def make_project(root: Path) -> Path:
    """A fresh project folder: git + dvc.yaml + params.yaml (tiny) + requests + data link."""
    from reliability_lib import make_project as make

    return make(root, {**TINY, **FAST_EVAL})


def _registry(root):
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / '.r2f/mlflow/mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _alias(client, alias):
    from r2f.governance.registry import get_alias_version

    return get_alias_version(client, "r2f-target", alias)


def forget_rows(project) -> list[dict]:
    """The versioned forget set, decrypted with its request's key (it is AES-GCM ciphertext at rest)."""
    from r2f.governance.privacy import FileKeyStore, read_forget_set

    prep = project / ".r2f/pipeline/request"
    rid = json.loads((prep / "request.json").read_text())["request_id"]
    return read_forget_set(FileKeyStore(project / ".r2f/keys").get(rid), rid, prep / "forget.jsonl.enc")


def test_flow_end_to_end_then_gate_failure_then_bad_data(project, harness, monkeypatch):
    from flows.unlearning import unlearning_flow
    from r2f.config import load_config
    from r2f.governance.validation import ValidationError
    from r2f.governance.versioning import status

    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = str(project / "params.yaml")
    # 1. a gate every candidate passes: promoted, champion moves to the new version
    easy = {"gate.min_forget_quality": 0.0, "gate.min_utility_ratio": 0.0, "gate.min_utility_vs_base": 0.0,
        "gate.max_abs_privleak": 1000.0,
            "gate.min_usr": 0.0}
    res = unlearning_flow(params, easy)
    assert res["gate"]["passed"] is True
    client = _registry(project)
    assert res["promote"]["base_version"] == 1 and res["promote"]["version"] == 2
    assert _alias(client, "champion") == 2 and _alias(client, "candidate") == 2
    mv = client.get_model_version("r2f-target", "2")
    assert mv.tags["gate.passed"] == "true" and mv.tags["request_id"] == "req-0001-forget01"
    # both experiments, metrics and DVC md5s on the request's run; the default decode is the rank-r
    # projection (lora.init activation), so the decoder run is tagged untrained and nothing is registered
    assert client.get_experiment_by_name("r2f-proxy-decoder")
    assert not client.search_registered_models("name='r2f-decoder'")
    run = client.get_run(mv.run_id)
    assert run.data.tags["decoder_used"] == "analytic" and run.data.tags["decoder_trained_weights"] == "false"
    assert "decoder.pairs" in run.data.tags["unused_settings"].split(",")
    drun = client.search_runs([client.get_experiment_by_name("r2f-proxy-decoder").experiment_id])[0]
    assert drun.data.tags["registered"] == "false" and "No trained weights" in drun.data.tags["mlflow.note.content"]
    assert "forget_quality" in run.data.metrics and "model_utility" in run.data.metrics
    assert any(k.startswith("dvc.prepare:") for k in run.data.params)
    assert run.data.tags["request_id"] == "req-0001-forget01"
    arts = {a.path for a in client.list_artifacts(mv.run_id)}
    assert {"eval", "plots", "gate", "dvc"} <= arts
    # the MLflow UI answers "what is this": experiments, runs, registered models and versions described
    for exp in ("r2f-unlearning", "r2f-proxy-decoder"):
        assert client.get_experiment_by_name(exp).tags["mlflow.note.content"]
    assert "champion" in client.get_registered_model("r2f-target").description
    note = run.data.tags["mlflow.note.content"]
    assert "req-0001-forget01" in note and "Gate PASSED" in note and f"{len(forget_rows(project))} forget rows" in note
    assert "untouched base target" in client.get_model_version("r2f-target", "1").description
    desc = mv.description
    assert "req-0001-forget01" in desc and "promoted to champion" in desc
    # no forget-set text in params or tags
    forget = forget_rows(project)
    blob = json.dumps({**run.data.params, **run.data.tags})
    assert not any(q["answer"] in blob or q["question"] in blob for q in forget)
    # DVC: everything recorded and pushed; dvc reports the pipeline up to date
    cfg = load_config(params)
    assert "up to date" in status(cfg, project)
    assert any((project / ".r2f/dvc-remote").rglob("*"))

    # 2. the same request again: already processed (exactly once), nothing new in the registry
    assert unlearning_flow(params, easy) == {"already_processed": {
        "request_id": "req-0001-forget01", "version": 2, "decision": "promoted", "passed": True,
        "registered_model": "r2f-target"}}
    assert len(client.search_model_versions("name='r2f-target'")) == 2
    # 3. rerun deliberately with an impossible gate: the candidate is registered but champion stays
    hard = {**easy, "gate.min_usr": 1.0, "gate.min_forget_quality": 1.0, "pipeline.rerun": True}
    res = unlearning_flow(params, hard)
    assert res["gate"]["passed"] is False
    assert res["promote"]["version"] == 3 and _alias(client, "candidate") == 3
    assert _alias(client, "champion") == 2
    tags = client.get_model_version("r2f-target", "3").tags
    assert tags["gate.passed"] == "false" and "forget_quality" in tags["gate.reasons"]
    rejected = client.get_model_version("r2f-target", "3").description
    assert "rejected by the gate; champion unchanged" in rejected and "forget_quality" in rejected
    # the main job's request (not from the inbox) audits from its MLflow run: the latest, rejected one
    from r2f.governance.audit import audit

    rep = audit(cfg, "req-0001-forget01")
    assert rep["verified"], [c for c in rep["checks"] if not c["ok"]]
    assert rep["models"]["after"] == "3" and rep["gate"]["passed"] is False

    # 4. bad data: a request naming a row that does not exist stops the flow before unlearning
    (project / "requests/bad.yaml").write_text(
        "request_id: req-bad\nsubject: s\nrequester: r\nlegal_basis: test\ncreated_at: 2026-01-01\n"
        "selectors: {question_ids: [tofu-3990, tofu-9999]}\n")
    before = (project / ".r2f/pipeline/unlearned/report.json").read_text()
    dvc_before = (project / "dvc.lock").read_text()
    with pytest.raises(ValidationError, match="tofu-9999"):
        unlearning_flow(params, {**easy, "pipeline.request": "requests/bad.yaml"})
    assert (project / ".r2f/pipeline/unlearned/report.json").read_text() == before  # nothing unlearned
    assert json.loads((project / ".r2f/pipeline/validation/result.json").read_text())["passed"] is False
    assert list((project / ".r2f/pipeline/validation").glob("request-*.json"))  # the GX result is kept
    assert _alias(client, "champion") == 2 and len(client.search_model_versions("name='r2f-target'")) == 3
    assert (project / "dvc.lock").read_text() == dvc_before  # the rejected request left no DVC commit
