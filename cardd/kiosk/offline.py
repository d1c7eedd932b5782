# SPDX-License-Identifier: Apache-2.0
"""The kiosk's own state: the audit log, the cache of online grants and the offline queue.

One SQLite file, ``<state_dir>/kiosk.sqlite3`` (0600), apart from the issuance ledger. A decision:
the ledger may be a PostgreSQL database shared by every station of a school, while gate
decisions are this kiosk's business (thousands a day, with retention limits), and a kiosk must
keep deciding and queueing while a shared ledger or the network is down.

Three tables:

- ``audit``: every decision (allow/deny, reason, token kind, *masked* token, reader, offline),
  kept ``audit_days`` (kiosk.md §5 "log every decision").
- ``grants``: when a patron was last admitted *online*. The key is an HMAC-SHA256 of the patron
  identifier with a random secret in ``<state_dir>/kiosk.key`` (0600), so the cache alone names
  nobody; entries older than the cache window are purged. The ``cache`` offline policy admits a
  patron only if this table says so (kiosk.md §5: "never admit unknown IDs").
- ``offline_queue``: every decision taken while the library system was unreachable, written and
  synced *before* the decision is shown or the gate opens. It keeps the patron identifier in clear
  until the entry is reported (the report needs it: the library system is asked again about that
  patron), then only the masked form and the verdict remain.

Writes use WAL with ``synchronous=FULL``: a queued offline admission survives a power cut.
A store object is used from one thread at a time (the kiosk gives it its own executor thread).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardd.errors import ConfigError

FILENAME = "kiosk.sqlite3"
KEY_FILENAME = "kiosk.key"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('allow', 'deny', 'report')),
    reason TEXT NOT NULL,
    kind TEXT NOT NULL,
    masked TEXT NOT NULL,
    reader TEXT,
    offline INTEGER NOT NULL DEFAULT 0,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TABLE IF NOT EXISTS grants (
    patron_mac TEXT PRIMARY KEY,
    granted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS offline_queue (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    patron TEXT,
    kind TEXT NOT NULL,
    masked TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    reported_at REAL,
    verdict TEXT,
    verdict_reason TEXT
);
CREATE INDEX IF NOT EXISTS offline_unreported ON offline_queue (reported_at);
"""


@dataclass(frozen=True, repr=False)
class QueuedDecision:
    """An offline decision waiting to be reported."""

    id: int
    at: float
    patron: str
    kind: str
    masked: str
    decision: str
    reason: str

    def __repr__(self) -> str:
        return f"QueuedDecision({self.id}, {self.masked!r}, {self.decision}/{self.reason})"


@dataclass(frozen=True)
class AuditRow:
    at: float
    decision: str
    reason: str
    kind: str
    masked: str
    reader: str | None
    offline: bool
    detail: str | None


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 if it does not exist (SQLite gives its -wal/-shm the same mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def _load_secret(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data[:32]
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return secret


class KioskStore:
    """Audit log, online-grant cache and offline queue in ``<state_dir>/kiosk.sqlite3``."""

    def __init__(self, state_dir: Path) -> None:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            path = state_dir / FILENAME
            _private_file(path)
            self._secret = _load_secret(state_dir / KEY_FILENAME)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"cannot open the kiosk store in {state_dir}: {e}") from None
        self.path = path
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _mac(self, patron: str) -> str:
        return hmac.new(self._secret, patron.encode("utf-8"), hashlib.sha256).hexdigest()

    # -- audit ---------------------------------------------------------------------------

    def audit(
        self,
        *,
        decision: str,
        reason: str,
        kind: str,
        masked: str,
        reader: str | None,
        offline: bool,
        detail: str | None = None,
        at: float | None = None,
    ) -> None:
        self._db.execute(
            "INSERT INTO audit (at, decision, reason, kind, masked, reader, offline, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time() if at is None else at,
                decision,
                reason,
                kind,
                masked,
                reader,
                int(offline),
                detail,
            ),
        )

    def recent(self, limit: int = 50) -> list[AuditRow]:
        rows = self._db.execute(
            "SELECT at, decision, reason, kind, masked, reader, offline, detail FROM audit"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [AuditRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7]) for r in rows]

    # -- online grants (the `cache` offline policy) ----------------------------------------

    def record_grant(self, patron: str, at: float | None = None) -> None:
        self._db.execute(
            "INSERT INTO grants (patron_mac, granted_at) VALUES (?, ?)"
            " ON CONFLICT (patron_mac) DO UPDATE SET granted_at = excluded.granted_at",
            (self._mac(patron), time.time() if at is None else at),
        )

    def granted_since(self, patron: str, since: float) -> bool:
        row = self._db.execute(
            "SELECT granted_at FROM grants WHERE patron_mac = ?", (self._mac(patron),)
        ).fetchone()
        return row is not None and row[0] >= since

    # -- the offline queue -----------------------------------------------------------------

    def queue(
        self,
        *,
        patron: str,
        kind: str,
        masked: str,
        decision: str,
        reason: str,
        at: float | None = None,
    ) -> int:
        cur = self._db.execute(
            "INSERT INTO offline_queue (at, patron, kind, masked, decision, reason)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (time.time() if at is None else at, patron, kind, masked, decision, reason),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def unreported(self, limit: int = 100) -> list[QueuedDecision]:
        rows = self._db.execute(
            "SELECT id, at, patron, kind, masked, decision, reason FROM offline_queue"
            " WHERE reported_at IS NULL ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [QueuedDecision(*r) for r in rows]

    def unreported_count(self) -> int:
        row = self._db.execute(
            "SELECT count(*) FROM offline_queue WHERE reported_at IS NULL"
        ).fetchone()
        return int(row[0])

    def mark_reported(self, entry_id: int, verdict: str, verdict_reason: str) -> None:
        """The entry was reported: forget the patron identifier, keep the masked form."""
        self._db.execute(
            "UPDATE offline_queue SET reported_at = ?, verdict = ?, verdict_reason = ?,"
            " patron = NULL WHERE id = ? AND reported_at IS NULL",
            (time.time(), verdict, verdict_reason, entry_id),
        )

    def reported(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT at, masked, decision, reason, reported_at, verdict, verdict_reason, patron"
            " FROM offline_queue WHERE reported_at IS NOT NULL ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        keys = (
            "at",
            "masked",
            "decision",
            "reason",
            "reportedAt",
            "verdict",
            "verdictReason",
            "patron",
        )
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- retention -------------------------------------------------------------------------

    def purge(self, *, audit_before: float, grants_before: float) -> None:
        self._db.execute("DELETE FROM audit WHERE at < ?", (audit_before,))
        self._db.execute("DELETE FROM grants WHERE granted_at < ?", (grants_before,))
        self._db.execute(
            "DELETE FROM offline_queue WHERE reported_at IS NOT NULL AND at < ?", (audit_before,)
        )
