"""File digests (one definition for the whole project)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def md5_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """md5 of a file's bytes: DVC's content address (not a security hash)."""
    h = hashlib.md5()  # noqa: S324
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model_dir: str | Path) -> str:
    """sha256 over a model folder's weight files (name + content), recorded at registration."""
    h = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
    for p in files:
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()
