"""DVC versioning with a real DVC repo and a local remote (tiny files)."""

from __future__ import annotations

import subprocess

from conftest import ROOT

from r2f.config import load_config


def test_commit_push_and_status_with_a_real_dvc_repo(tmp_path, monkeypatch):
    from r2f.governance.versioning import commit, ensure_repo, find_root, lock_md5s, push, remote_url, status

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: echo made\n    params: [gate]\n    outs: [.r2f/pipeline/x]\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(tmp_path / "params.yaml", {"state_dir": ".r2f"})
    root = find_root()
    assert root == tmp_path.resolve()
    ensure_repo(cfg, root)
    ensure_repo(cfg, root)  # idempotent
    out = tmp_path / ".r2f/pipeline/x"
    out.mkdir(parents=True)
    (out / "a.txt").write_text("artifact")
    commit(cfg, root, "make")
    push(cfg, root, "make")
    md5s = lock_md5s(root)
    assert any(k.startswith("make:.r2f/pipeline/x") for k in md5s)
    assert "up to date" in status(cfg, root)
    remote = tmp_path / ".r2f/dvc-remote"
    assert remote_url(cfg, root) == str(remote.resolve())
    assert any(p.is_file() for p in remote.rglob("*")), "nothing pushed to the local remote"
    # the site cache stays in the state folder, the remote path stays out of the committed config
    assert (tmp_path / ".r2f/dvc-site-cache").exists()
    assert str(remote) not in (tmp_path / ".dvc/config").read_text()
    # a changed out is detected
    (out / "a.txt").write_text("changed")
    assert "up to date" not in status(cfg, root)
