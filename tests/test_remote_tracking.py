"""Remote tracking and storage by configuration only (issue #9): a real `mlflow server` on loopback
(its own sqlite backend and artifact store), an S3-compatible object store on loopback (moto's
server, through DVC's real s3 remote: dvc-s3/s3fs/botocore), and two deletion requests through
`r2f run` with nothing but `tracking.tracking_uri`, `versioning.remote_url` and the endpoint set
(credentials in the environment). The runs, the registered versions and the aliases are on the
server; the second request starts from the champion downloaded through the server's artifact proxy;
every out recorded in dvc.lock is in the bucket; no local MLflow store or DVC remote is created."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import TINY
from reliability_lib import EASY_GATE, FAST_EVAL, env_for, free_port, make_project, run_to_end, write_request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        cwd=root, env={**env_for(root), "MLFLOW_DISABLE_TELEMETRY": "true"},
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() - t0 > 180:
            proc.kill()
            pytest.fail("mlflow server did not start")
        time.sleep(0.5)
    yield url, root
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3-compatible server on 127.0.0.1 (moto, in-memory) with one bucket; dummy credentials."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"aws_access_key_id": "r2f-test", "aws_secret_access_key": "r2f-test-secret", "region_name": "us-east-1"}
    client = boto3.client("s3", endpoint_url=endpoint, **creds)
    client.create_bucket(Bucket="r2f-dvc")
    yield endpoint, client
    srv.stop()


def test_flow_against_a_tracking_server(server, s3, tmp_path, monkeypatch):
    import yaml
    from mlflow import MlflowClient

    url, root = server
    endpoint, bucket = s3
    for k, v in {"AWS_ACCESS_KEY_ID": "r2f-test", "AWS_SECRET_ACCESS_KEY": "r2f-test-secret",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)  # r2f's subprocesses inherit them (reliability_lib.env_for)
    remote = {"versioning.remote_url": "s3://r2f-dvc/store", "versioning.remote_options": {"endpointurl": endpoint}}
    # the promotion lease lives in the server's backing database (docs/reliability.md)
    project = make_project(tmp_path / "p", {**TINY, **FAST_EVAL, **EASY_GATE, "tracking.tracking_uri": url,
                                            "pipeline.lease_uri": f"sqlite:///{root / 'server.db'}", **remote})
    rc, out = run_to_end(project, "run")
    assert rc == 0, out[-4000:]
    req = write_request(project, "req-remote-2", ["tofu-3961"])
    rc, out = run_to_end(project, "run", "--set", f"pipeline.request={req}")
    assert rc == 0, out[-4000:]

    c = MlflowClient(tracking_uri=url, registry_uri=url)
    champion = c.get_model_version_by_alias("r2f-target", "champion")
    assert champion.version == "3" and champion.tags["request_id"] == "req-remote-2"
    run = c.get_run(champion.run_id)
    assert run.data.tags["start_model_source"] == "champion" and run.data.tags["start_model_version"] == "2"
    assert "forget_quality" in run.data.metrics
    assert run.data.tags["decoder_used"] == "analytic"  # the default decode: no decoder registered
    assert not c.search_registered_models("name='r2f-decoder'")
    # artifacts went through the server into its store; nothing was tracked locally
    assert any((root / "artifacts").rglob("model.safetensors"))
    assert not (project / ".r2f/mlflow").exists()
    # every out DVC recorded was pushed to the object store; no local remote folder
    keys = {o["Key"] for page in bucket.get_paginator("list_objects_v2").paginate(Bucket="r2f-dvc")
            for o in page.get("Contents", [])}
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    outs = [o["md5"] for st in lock.values() for o in st.get("outs", [])]
    assert len(outs) == 8 and keys
    for md5 in outs:
        assert f"store/files/md5/{md5[:2]}/{md5[2:]}" in keys, md5
    assert not (project / ".r2f/dvc-remote").exists()
    assert "endpointurl" in (project / ".dvc/config.local").read_text()
    assert "r2f-test-secret" not in (project / ".dvc/config.local").read_text() + (project / "params.yaml").read_text()
