"""MLflow tracking on a real sqlite store (tmp): params guard, metric filtering, resume, find."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import tiny_config


def test_import_does_not_load_mlflow():
    code = ("import r2f.governance.tracking, r2f.governance.tracking_setup, r2f.governance.lineage, "
            "r2f.governance.pipeline, sys; "
            "print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_safe_params_refuses_free_text_and_flattens():
    from r2f.governance.tracking import safe_params

    flat = safe_params({"a": {"b": 1, "c": None}, "ids": "tofu-0001,tofu-0002"})
    assert flat == {"a.b": "1", "a.c": "", "ids": "tofu-0001,tofu-0002"}
    with pytest.raises(ValueError, match="question"):
        safe_params({"question": "What is the full name of the author born in Paris " * 6})


def test_tracker_runs_metrics_and_resume(tmp_path):
    from r2f.governance.tracking import MlflowTracker, NullTracker
    from r2f.governance.tracking_setup import make_tracker, resolve_uris

    cfg = tiny_config(tmp_path / "state")
    uri, root = resolve_uris(cfg)
    assert uri.startswith("sqlite:///") and str(tmp_path) in uri and str(tmp_path) in root
    assert isinstance(make_tracker(tiny_config(tmp_path / "s2", **{"tracking.enabled": False})), NullTracker)
    tr = make_tracker(cfg)
    assert isinstance(tr, MlflowTracker)
    with tr.start_run("exp", "r1", {"request_id": "req-1"}) as rid:
        tr.log_params({"method": "r2f", "lora": {"rank": 8}})
        tr.log_metrics({"ok": 0.5, "nan": float("nan"), "none": None, "nested": {"x": 1.0}})
        tr.log_dict({"a": 1}, "x/a.json")
    with tr.start_run(None, run_id=rid):
        tr.set_tags({"status": "evaluated"})
    run = tr.run(rid)
    assert run.data.params["lora.rank"] == "8" and run.data.metrics == {"ok": 0.5, "nested.x": 1.0}
    assert run.data.tags["skipped_metrics"] == "nan,none" and run.data.tags["status"] == "evaluated"
    assert tr.find_run("exp", {"request_id": "req-1"}) == rid and tr.find_run("exp", {"request_id": "no"}) is None
    assert not (tmp_path / "mlruns").exists()


def test_model_dir_logged_registered_and_answers(tmp_path, tiny_cfg, tiny_models):
    import mlflow
    from mlflow import MlflowClient

    from r2f.governance.registry import promote
    from r2f.governance.tracking_setup import make_tracker

    cfg = tiny_config(tmp_path / "state")
    tr = make_tracker(cfg)
    with tr.start_run("exp", "m") as rid:
        uri, version = tr.log_model_dir(str(tiny_models.path("target")), "model", registered_name="tiny")
    assert version == 1 and tr.model_version("tiny", 1).run_id == rid
    assert tr.version_of_run("tiny", rid) == 1 and tr.version_of_run("tiny", "no-such-run") is None
    with tr._uris():
        answers = mlflow.pyfunc.load_model(uri).predict(["Who wrote the book?"])
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str)
    client = MlflowClient(tracking_uri=tr.uri, registry_uri=tr.uri)  # promote is the registry adapter: it takes a client
    assert tr.alias_version("tiny", "champion") is None
    assert promote(client, "tiny", 1, {"passed": False, "reasons": ["usr: 0.1 fails >= 0.5"]}) is False
    assert tr.alias_version("tiny", "champion") is None and tr.final_version("tiny", "req-1") is None
    assert tr.model_version("tiny", 1).tags["gate.passed"] == "false"
    assert promote(client, "tiny", 1, {"passed": True, "reasons": []}) is True
    assert tr.alias_version("tiny", "champion") == 1
    tr.set_version_tag("tiny", 1, "request_id", "req-1")
    assert [int(mv.version) for mv in tr.versions("tiny", request_id="req-1")] == [1]
    assert int(tr.final_version("tiny", "req-1").version) == 1 and tr.versions("tiny", request_id="req-2") == []


def test_tracker_does_not_leak_its_uri(tmp_path, monkeypatch):
    import os

    from r2f.governance.tracking_setup import make_tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tr = make_tracker(tiny_config(tmp_path / "a"))
    with tr.start_run("exp", "r"):
        tr.log_metrics({"x": 1.0})
    assert "MLFLOW_TRACKING_URI" not in os.environ
    import mlflow

    assert str(tmp_path) not in mlflow.get_tracking_uri()
