"""One promotion at a time across hosts: a lease with a fencing token in the tracking database.

The pipeline lock (r2f.governance.locks) is an ``fcntl`` lock on one machine, and MLflow aliases
have no compare-and-set, so two hosts that share a registry could both move ``champion``: the second
promotion would silently drop the first deletion (its candidate was unlearned from an older
champion). So the ``promote`` stage:

1. takes the lease ``r2f_promotion_lease`` (one row per registered model) in the database behind the
   tracking store: an ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired ... RETURNING token``, one
   atomic statement on PostgreSQL and SQLite alike. It fails at once with :class:`LeaseBusy` while
   another holder's lease has not expired. Each grant increments the *fencing token*;
2. checks that ``champion`` is still the version it was when the request's unlearning started
   (otherwise :class:`ChampionMoved`: the candidate lacks the other deletion; the request is run
   again from the new champion);
3. re-checks its token right before the alias moves (:meth:`PromotionLease.check`): a holder whose
   lease expired and was granted to another is fenced off (:class:`Fenced`) instead of overwriting.

Both errors are :class:`~r2f.governance.locks.LockBusy`: ``r2f run`` exits 2 naming the holder, and a
scheduled tick leaves the request pending for the next tick.

The lease lives where the registry lives: ``pipeline.lease_uri`` (None: the tracking URI when it is a
database, ``sqlite:`` or ``postgresql:``; an ``http(s)`` tracking server needs ``pipeline.lease_uri``
set to its backing database, or ``promote`` refuses to run unfenced unless ``pipeline.lease: false``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid

from r2f.config import Config
from r2f.errors import R2FError
from r2f.governance.locks import LockBusy

TABLE = "r2f_promotion_lease"


class LeaseError(R2FError, RuntimeError):
    """The lease cannot be used (no database to hold it, an unreachable server)."""


class LeaseBusy(LockBusy):
    """Another host holds the promotion lease."""


class ChampionMoved(LockBusy):
    """``champion`` moved since this request's unlearning started: its candidate lacks that deletion."""


class Fenced(LockBusy):
    """This holder's lease expired and was granted to another: it must not move the alias."""


def lease_uri(cfg: Config, tracking_uri: str) -> str | None:
    """The database that holds the lease, or None when leasing is off."""
    if not cfg.pipeline.lease:
        return None
    uri = cfg.pipeline.lease_uri or tracking_uri
    if uri.startswith(("sqlite:", "postgresql:", "postgresql+")):
        return uri
    raise LeaseError(f"pipeline.lease_uri: the tracking store {uri.split('@')[-1]!r} is not a database the "
                     "promotion lease can use; set pipeline.lease_uri to the registry's backing database "
                     "(postgresql://...), or pipeline.lease: false on a single host")


class PromotionLease:
    """The lease on ``name`` in the database at ``uri`` for ``ttl_s`` seconds."""

    def __init__(self, uri: str, name: str, ttl_s: float = 600.0, holder: str | None = None):
        from sqlalchemy import create_engine, text

        self.name, self.ttl_s = name, ttl_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._text = text
        self.engine = create_engine(uri, pool_pre_ping=True)
        for attempt in range(3):  # two hosts creating the table at once: one of them may lose the race
            try:
                with self.engine.begin() as con:
                    con.execute(text(f"CREATE TABLE IF NOT EXISTS {TABLE} (name VARCHAR(256) PRIMARY KEY, "
                                     "holder VARCHAR(256) NOT NULL, token BIGINT NOT NULL, "
                                     "expires_at DOUBLE PRECISION NOT NULL)"))
                break
            except Exception as exc:  # noqa: BLE001 - the driver's own error types (OperationalError, ...)
                from sqlalchemy import inspect

                try:
                    if inspect(self.engine).has_table(TABLE):
                        break
                except Exception:  # noqa: BLE001, S110 - unreachable: reported below
                    pass
                if attempt == 2:
                    raise LeaseError(f"promotion lease: the database {uri.split('@')[-1]} cannot be used: "
                                     f"{exc}") from exc
                time.sleep(0.2)

    def acquire(self) -> int:
        """The fencing token; :class:`LeaseBusy` while another holder's lease is live."""
        now = time.time()
        with self.engine.begin() as con:
            row = con.execute(self._text(
                f"INSERT INTO {TABLE} (name, holder, token, expires_at) VALUES (:n, :h, 1, :e) "
                f"ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = {TABLE}.token + 1, "
                f"expires_at = excluded.expires_at WHERE {TABLE}.expires_at < :now RETURNING token"),
                {"n": self.name, "h": self.holder, "e": now + self.ttl_s, "now": now}).fetchone()
            if row is not None:
                return int(row[0])
            held = con.execute(self._text(f"SELECT holder, expires_at FROM {TABLE} WHERE name = :n"),
                               {"n": self.name}).fetchone()
        left = held[1] - now if held else 0
        raise LeaseBusy(f"promotion lease on {self.name} held by {held[0] if held else '?'} for another "
                        f"{left:.0f} s; the request stays pending (nothing promoted)")

    def check(self, token: int) -> None:
        """Raise :class:`Fenced` unless ``token`` is still the live grant of this holder."""
        with self.engine.begin() as con:
            row = con.execute(self._text(f"SELECT holder, token, expires_at FROM {TABLE} WHERE name = :n"),
                              {"n": self.name}).fetchone()
        if row is None or int(row[1]) != token or row[0] != self.holder or row[2] < time.time():
            raise Fenced(f"promotion lease on {self.name}: token {token} of {self.holder} is no longer live "
                         f"(now {row and row[1]} held by {row and row[0]}); the alias was not moved")

    def release(self, token: int) -> None:
        with self.engine.begin() as con:
            con.execute(self._text(f"UPDATE {TABLE} SET expires_at = 0 WHERE name = :n AND token = :t "
                                   "AND holder = :h"), {"n": self.name, "t": token, "h": self.holder})

    @contextlib.contextmanager
    def hold(self):
        token = self.acquire()
        try:
            yield token
        finally:
            with contextlib.suppress(Exception):  # an expired lease needs no release
                self.release(token)
            self.engine.dispose()
