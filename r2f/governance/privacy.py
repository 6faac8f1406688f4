"""Forget sets at rest: a key per deletion request, AES-GCM encryption, keyed row digests, and the
key's destruction (crypto-shredding) when the request's retention window has passed.

A deletion request names the very text a person asked to have erased. The pipeline needs that text
(to unlearn it and to version what was unlearned), but it must not create a durable plaintext copy of
it. So:

- every request gets a random 256-bit key when it enters the system (:meth:`KeyStore.ensure`);
- the forget set the ``prepare`` stage writes, and DVC versions and pushes, is AES-GCM ciphertext
  under that key (:func:`encrypt`; ``cryptography``'s AESGCM, the request id as associated data);
- the row digests that go into MLflow tags and the audit are HMAC-SHA256 under that key
  (:func:`keyed_digest`): once the key is destroyed nobody can link them to the text any more;
- ``r2f retention enforce`` destroys the key of every final request whose retention window has passed
  (:meth:`KeyStore.destroy`): the ciphertext left in the DVC cache and remote is then unreadable.

The key store is an interface (:class:`KeyStore`). The default, :class:`FileKeyStore`, keeps one
file per request (mode 0600) under ``privacy.key_dir`` (default ``<state_dir>/keys``); a deployment
names its own provider (a key service: Vault, a cloud KMS) as ``privacy.key_store: "module:Class"``,
a class built with the :class:`~r2f.config.Config` that implements the four methods below
(docs/privacy.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import importlib
import json
import os
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

from r2f.config import Config
from r2f.errors import R2FError

MAGIC = b"R2F-AESGCM-1\n"  # ciphertext files start with this line, then a 12-byte nonce
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class PrivacyError(R2FError, RuntimeError):
    """A key is missing, destroyed or wrong, or a ciphertext is damaged; the message names the request."""


class KeyShredded(PrivacyError):
    """The request's key was destroyed (its retention window passed): its forget set cannot be read."""

    def __init__(self, request_id: str, at: str | None):
        super().__init__(f"request {request_id}: its key was destroyed at {at or 'an unrecorded time'} "
                         "(forget set shredded); nothing encrypted under it can be read")
        self.request_id, self.at = request_id, at


@runtime_checkable
class KeyStore(Protocol):
    """Where the per-request keys live. Every method takes the request id (``[A-Za-z0-9._-]``)."""

    def ensure(self, request_id: str) -> bytes:
        """The request's key, created (32 random bytes) if it has none yet; :class:`KeyShredded`
        if it was destroyed: a shredded request is never given a new key."""

    def get(self, request_id: str) -> bytes:
        """The request's key; :class:`KeyShredded` if destroyed, :class:`PrivacyError` if it never had one."""

    def destroy(self, request_id: str) -> str:
        """Destroy the key for good and record when (an ISO time, returned); idempotent."""

    def shredded_at(self, request_id: str) -> str | None:
        """When the key was destroyed, or None while it exists."""


def _check_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not _ID.fullmatch(request_id):
        raise PrivacyError(f"request id {str(request_id)[:40]!r} cannot name a key")
    return request_id


class FileKeyStore:
    """One key file per request, ``<root>/<request_id>.key`` (mode 0600, folder 0700). Destroying a key
    overwrites the file with zeros, syncs it, removes it and leaves ``<request_id>.shredded`` with the
    time. (Overwriting is best effort on copy-on-write or journalled file systems and their
    snapshots; a key service that really destroys key material is the stronger provider.)"""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _key(self, request_id: str) -> Path:
        return self.root / f"{_check_id(request_id)}.key"

    def _tomb(self, request_id: str) -> Path:
        return self.root / f"{_check_id(request_id)}.shredded"

    def shredded_at(self, request_id: str) -> str | None:
        tomb = self._tomb(request_id)
        return json.loads(tomb.read_text())["shredded_at"] if tomb.is_file() else None

    def get(self, request_id: str) -> bytes:
        at = self.shredded_at(request_id)
        if at is not None:
            raise KeyShredded(request_id, at)
        path = self._key(request_id)
        if not path.is_file():
            raise PrivacyError(f"request {request_id}: no key in {self.root}")
        key = path.read_bytes()
        if len(key) != 32:
            raise PrivacyError(f"{path}: {len(key)} bytes, a key has 32")
        return key

    def ensure(self, request_id: str) -> bytes:
        try:
            return self.get(request_id)
        except KeyShredded:
            raise
        except PrivacyError:
            pass
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        path = self._key(request_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never replace an existing key
        try:
            os.write(fd, os.urandom(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        return self.get(request_id)

    def destroy(self, request_id: str) -> str:
        at = self.shredded_at(request_id)
        if at is not None:
            return at
        path = self._key(request_id)
        at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.root.mkdir(parents=True, exist_ok=True)
        tomb = self._tomb(request_id)
        tomb.write_text(json.dumps({"request_id": request_id, "shredded_at": at}))
        if path.is_file():
            with path.open("r+b") as fh:
                fh.write(b"\0" * max(32, path.stat().st_size))
                fh.flush()
                os.fsync(fh.fileno())
            path.unlink()
        return at


def key_store(cfg: Config) -> KeyStore:
    """The configured store: ``privacy.key_store`` ``file`` (default) or ``"module:Class"``."""
    spec = cfg.privacy.key_store
    if spec == "file":
        return FileKeyStore(cfg.privacy.key_dir or Path(cfg.state_dir) / "keys")
    mod, _, cls = spec.partition(":")
    try:
        store = getattr(importlib.import_module(mod), cls)(cfg)
    except (ImportError, AttributeError) as exc:
        raise PrivacyError(f"privacy.key_store: {spec!r} cannot be loaded: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever the provider's constructor raises
        raise PrivacyError(f"privacy.key_store: {spec!r} cannot be built with the config: "
                           f"{type(exc).__name__}: {exc}") from exc
    missing = [m for m in ("ensure", "get", "destroy", "shredded_at") if not callable(getattr(store, m, None))]
    if missing:
        raise PrivacyError(f"privacy.key_store: {spec!r} lacks {', '.join(missing)} (docs/privacy.md)")
    return store


# -- encryption and keyed digests ---------------------------------------------------------------------
def encrypt(key: bytes, plaintext: bytes, aad: str) -> bytes:
    """AES-256-GCM: ``MAGIC`` + 12-byte nonce + ciphertext with its tag; ``aad`` (the request id) is
    authenticated, so a ciphertext cannot be passed off as another request's.

    The nonce is synthetic, HMAC-SHA256(key, aad + plaintext) cut to 12 bytes: the same rows under the
    same key give the same bytes, so a stage rerun on an unchanged request leaves its DVC out unchanged
    (and the stages after it cached), while different plaintexts under one key get different nonces
    (a collision needs ~2^48 files under one request's key; a request encrypts a handful)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = hmac.new(key, b"r2f-nonce\0" + aad.encode() + b"\0" + plaintext, hashlib.sha256).digest()[:12]
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, aad.encode())


def decrypt(key: bytes, blob: bytes, aad: str, source: str = "ciphertext") -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 12 + 16:
        raise PrivacyError(f"{source}: not an R2F ciphertext")
    nonce, body = blob[len(MAGIC):len(MAGIC) + 12], blob[len(MAGIC) + 12:]
    try:
        return AESGCM(key).decrypt(nonce, body, aad.encode())
    except InvalidTag:
        raise PrivacyError(f"{source}: does not decrypt under request {aad}'s key (altered, or another "
                           "request's)") from None


def keyed_digest(key: bytes, text: str) -> str:
    """HMAC-SHA256 of ``text`` under the request's key (hex): links a record to the text only while
    the key exists."""
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def rows_hmac(key: bytes, items) -> str:
    """The forget set's keyed identity: HMAC over the rows' ids and content digests, in order."""
    return keyed_digest(key, "\n".join(f"{q.id}:{q.digest()}" for q in items))


def write_forget_set(key: bytes, request_id: str, items, path: Path) -> None:
    """The forget rows as encrypted JSON lines (``forget.jsonl.enc``)."""
    text = "".join(json.dumps({"id": q.id, "question": q.question, "answer": q.answer}, ensure_ascii=False) + "\n"
                   for q in items)
    path.write_bytes(encrypt(key, text.encode("utf-8"), request_id))


def read_forget_set(key: bytes, request_id: str, path: Path) -> list[dict]:
    text = decrypt(key, path.read_bytes(), request_id, str(path)).decode("utf-8")
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
