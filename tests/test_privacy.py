"""Forget sets at rest (issue #22): per-request keys, AES-GCM, keyed digests, crypto-shredding; the
retention rules on a real inbox (no models: the pipeline's end-to-end check is in test_shredding.py)."""

from __future__ import annotations

import datetime as dt
import json
import stat

import pytest
from conftest import ROOT, tiny_config


class MemoryKeyStore:
    """A key-service provider as a deployment would write one (``privacy.key_store: module:Class``)."""

    keys: dict = {}
    tombs: dict = {}

    def __init__(self, cfg):
        self.cfg = cfg

    def ensure(self, rid):
        from r2f.governance.privacy import KeyShredded

        if rid in self.tombs:
            raise KeyShredded(rid, self.tombs[rid])
        return self.keys.setdefault(rid, bytes(range(32)))

    def get(self, rid):
        return self.ensure(rid) if rid in self.keys or rid in self.tombs else None

    def destroy(self, rid):
        self.keys.pop(rid, None)
        return self.tombs.setdefault(rid, "2026-01-01T00:00:00+00:00")

    def shredded_at(self, rid):
        return self.tombs.get(rid)


def test_file_key_store_keys_are_private_and_destroyed_for_good(tmp_path):
    from r2f.governance.privacy import FileKeyStore, KeyShredded, PrivacyError

    ks = FileKeyStore(tmp_path / "keys")
    with pytest.raises(PrivacyError, match="no key"):
        ks.get("req-1")
    k = ks.ensure("req-1")
    assert len(k) == 32 and ks.ensure("req-1") == k and ks.get("req-1") == k  # stable, never replaced
    assert ks.ensure("req-2") != k
    f = tmp_path / "keys/req-1.key"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600 and stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    at = ks.destroy("req-1")
    assert not f.exists() and ks.shredded_at("req-1") == at and ks.destroy("req-1") == at  # idempotent
    with pytest.raises(KeyShredded, match="destroyed at"):
        ks.get("req-1")
    with pytest.raises(KeyShredded):  # a shredded request never gets a new key
        ks.ensure("req-1")
    assert ks.get("req-2")  # the other request's key is untouched
    with pytest.raises(PrivacyError, match="cannot name a key"):
        ks.ensure("../escape")


def test_aes_gcm_round_trip_binds_the_request_and_detects_tampering():
    from r2f.governance.privacy import PrivacyError, decrypt, encrypt

    key, other = bytes(32), bytes(range(32))
    text = b"Question: Who wrote it?\nAnswer: Basil Mahfouz Al-Kuwaiti."
    blob = encrypt(key, text, "req-1")
    assert text not in blob and b"Basil" not in blob
    assert decrypt(key, blob, "req-1") == text
    assert encrypt(key, text, "req-1") == blob  # synthetic nonce: an unchanged request gives the same bytes
    assert encrypt(key, text + b"!", "req-1")[:40] != blob[:40]  # another plaintext, another nonce
    with pytest.raises(PrivacyError, match="does not decrypt under request req-2"):
        decrypt(key, blob, "req-2")  # the request id is authenticated
    with pytest.raises(PrivacyError):
        decrypt(other, blob, "req-1")
    bad = bytearray(blob)
    bad[-1] ^= 1
    with pytest.raises(PrivacyError, match="altered"):
        decrypt(key, bytes(bad), "req-1")
    with pytest.raises(PrivacyError, match="not an R2F ciphertext"):
        decrypt(key, text, "req-1", "f.jsonl")


def test_keyed_digests_depend_on_the_key(tofu):
    from r2f.governance.privacy import keyed_digest, rows_hmac
    from r2f.governance.requests import read_request

    req = read_request(ROOT / "requests/forget01-authors.yaml")
    a, b = req.digests(bytes(32)), req.digests(bytes(range(32)))
    assert set(a) == {"subject_hmac", "requester_hmac", "legal_basis_hmac"} and a != b
    import hashlib

    assert hashlib.sha256(req.subject.encode()).hexdigest() not in json.dumps(a)  # not the guessable plain hash
    items = tofu.split("forget01")
    assert rows_hmac(bytes(32), items) != rows_hmac(bytes(range(32)), items)
    assert keyed_digest(bytes(32), "x") == keyed_digest(bytes(32), "x")


def test_a_key_service_provider_is_chosen_by_config(tmp_path):
    from r2f.config import ConfigError
    from r2f.governance.privacy import PrivacyError, key_store

    cfg = tiny_config(tmp_path, **{"privacy.key_store": "test_privacy:MemoryKeyStore"})
    ks = key_store(cfg)
    assert isinstance(ks, MemoryKeyStore) and len(ks.ensure("r")) == 32
    with pytest.raises(PrivacyError, match="cannot be loaded"):
        key_store(tiny_config(tmp_path, **{"privacy.key_store": "no_such_module:Store"}))
    with pytest.raises(PrivacyError, match="cannot be built"):
        key_store(tiny_config(tmp_path, **{"privacy.key_store": "json:JSONDecoder"}))
    with pytest.raises(PrivacyError, match="lacks ensure"):
        key_store(tiny_config(tmp_path, **{"privacy.key_store": "builtins:list"}))
    with pytest.raises(ConfigError, match="key_store"):
        tiny_config(tmp_path, **{"privacy.key_store": "vault"})


def _final_inbox(cfg, tofu, tmp_path, n=2):
    from r2f.governance.inbox import inbox

    ib = inbox(cfg)
    for i in range(n):
        f = tmp_path / f"r{i}.yaml"
        f.write_text(f"request_id: req-{i}\nsubject: Jane Q{i}\nselectors: {{question_ids: [tofu-399{i}]}}\n"
                     "requester: r\nlegal_basis: b\ncreated_at: 2026-01-01\n")
        ib.submit(f, tofu)
    return ib


def test_retention_shreds_only_final_requests_past_their_window(tmp_path, tofu):
    from r2f.governance.privacy import key_store
    from r2f.governance.retention import RetentionError, due, enforce, shred

    cfg = tiny_config(tmp_path / "st", **{"tracking.enabled": False, "privacy.retention_days": 10})
    ib = _final_inbox(cfg, tofu, tmp_path)
    ks = key_store(cfg)
    for rid in ("req-0", "req-1"):
        ks.ensure(rid)
    ib.transition("req-0", "rejected")
    final = dt.datetime.fromisoformat(ib.get("req-0").at("rejected"))
    assert due(cfg, final + dt.timedelta(days=9)) == []  # inside the window
    assert enforce(cfg, final + dt.timedelta(days=9), log=lambda _m: None) == []
    assert ks.shredded_at("req-0") is None and ib.path("req-0").is_file()
    done = enforce(cfg, final + dt.timedelta(days=10, seconds=1), log=lambda _m: None)
    assert [d["request_id"] for d in done] == ["req-0"]  # req-1 is pending: never shredded by retention
    assert ks.shredded_at("req-0") and not ib.path("req-0").exists()
    assert ib.get("req-0").shredded_at == ks.shredded_at("req-0") and ib.get("req-0").state == "rejected"
    assert ks.get("req-1") and ib.path("req-1").is_file()
    assert enforce(cfg, final + dt.timedelta(days=100), log=lambda _m: None) == []  # once only
    with pytest.raises(RetentionError, match="pending, not final"):
        shred(cfg, "req-1", log=lambda _m: None)
    assert ks.get("req-1")  # refused: nothing changed
    shred(cfg, "req-1", log=lambda _m: None, force=True)
    assert ks.shredded_at("req-1")
    with pytest.raises(RetentionError, match="nothing to shred"):
        shred(cfg, "req-unknown", log=lambda _m: None)


def test_retention_cli_exit_codes(tmp_path, tofu):
    from typer.testing import CliRunner

    from r2f.cli import app

    cfg = tiny_config(tmp_path / "st", **{"tracking.enabled": False, "privacy.retention_days": 0})
    ib = _final_inbox(cfg, tofu, tmp_path, n=1)
    ib.transition("req-0", "failed", reason="test")
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**cfg.model_dump(mode="json"), "allowed_roots": [str(ROOT)]}))
    cli = CliRunner()
    bad = cli.invoke(app, ["retention", "enforce", "--now", "yesterday", "--params", str(params)])
    assert bad.exit_code == 2 and "--now" in bad.output
    assert ib.get("req-0").shredded_at is None
    ok = cli.invoke(app, ["retention", "enforce", "--params", str(params)])
    assert ok.exit_code == 0 and "1 request(s) shredded" in ok.output, ok.output
    assert cli.invoke(app, ["retention", "shred", "req-x", "--params", str(params)]).exit_code == 2
