# SPDX-License-Identifier: Apache-2.0
"""The issuance ledger on PostgreSQL (psycopg 3), for several stations sharing one ledger.

The rules are :class:`cardd.rfid.ledger.SqlLedger`'s; this module supplies the connection, the
transactions and the locking.

Concurrency design: READ COMMITTED transactions that start with ``SELECT … FOR UPDATE`` on the
ID's row in ``ledger_ids`` (created with ``INSERT … ON CONFLICT DO NOTHING`` on first use).

- Every write concerns exactly one ID, and every write locks that ID's row first, so writes to
  the same ID are serialised and writes to different IDs never wait for each other. The second
  station waits a few milliseconds for the first to commit and then sees its result (a pending
  burn, a new active number) under the same rules as if it had come later. Each statement after
  the lock reads a fresh snapshot, so the rules are checked against committed data.
- SERIALIZABLE would give the same safety without the lock row, but on a contended ID it turns
  every collision into a serialization failure that must be retried from the start, and its
  predicate locks on index pages can also fail transactions on *different* IDs (false
  positives). With 8 stations burning one class roster that is a retry storm; the row lock makes
  them queue instead.
- The database still guards the rules on its own: ``UNIQUE (id_number, suffix)``, partial unique
  indexes for one pending and one active-or-lost number per ID, and triggers (see
  :mod:`cardd.rfid.migrations.postgresql`). A station that bypassed the lock would get a
  unique-violation, reported as ``LedgerConflict``.
- The isolation level is set explicitly on every transaction (``isolation="read committed"``),
  so a database default of SERIALIZABLE does not silently change the design. A site whose DBA
  insists on SERIALIZABLE can pass ``isolation="serializable"``; it is equally safe and tested,
  it just retries more under contention.
- Transient failures are retried with jittered backoff a bounded number of times
  (``max_retries``), then raised as ``LedgerConflict``: serialization failures (SERIALIZABLE
  only), deadlocks (not expected with one lock per transaction) and ``lock_timeout`` (another
  station held the ID for longer than ``lock_timeout`` seconds).
- A lost connection is not retried (a commit whose answer was lost may or may not have happened;
  commit is idempotent, so the caller can repeat it). The next call reconnects.

Schema migrations at open are serialised between stations with a session-level advisory lock
taken *before* the migration transaction begins, so that the transaction's snapshot (under any
isolation level) already sees what a station that migrated first committed.
Timestamps are the database server's (``now()``), so stations with skewed clocks still produce
one consistent history.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from cardd import errors as E
from cardd.log import mask_id
from cardd.rfid.ledger import SqlLedger, Tx
from cardd.rfid.migrations.postgresql import MIGRATIONS as PG_MIGRATIONS

logger = logging.getLogger(__name__)

#: pg_advisory_xact_lock key for schema migrations ("cardd" + ledger)
_MIGRATION_LOCK_KEY = 0x63617264_6C656467 & 0x7FFFFFFFFFFFFFFF

_ISOLATION = {
    "read committed": psycopg.IsolationLevel.READ_COMMITTED,
    "serializable": psycopg.IsolationLevel.SERIALIZABLE,
}

_TRANSIENT = (
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
)


class _PgTx(Tx):
    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        if params:
            self._cur.execute(self._sql(sql), tuple(params))
        else:
            self._cur.execute(sql.encode())  # no placeholder processing (DDL may contain % or ?)
        return self._cur.rowcount

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(self._sql(sql), tuple(params) if params else None)
        return self._cur.fetchall()


def _describe(exc: BaseException) -> str:
    """The first line of a driver error, ID numbers masked (DETAIL lines may quote key values)."""
    text = str(exc).strip().splitlines()
    return mask_id(text[0]) if text else type(exc).__name__


class PgLedger(SqlLedger):
    """The ledger in a PostgreSQL database given by a libpq URL (``postgresql://…``).

    The database user needs CREATE on the schema for the first open (migrations); afterwards
    SELECT/INSERT/UPDATE suffice, and a DBA may revoke UPDATE/DELETE on ``ledger_audit`` as a
    second guard next to its append-only trigger.
    """

    DRIVER_ERRORS = (psycopg.Error,)
    FOR_UPDATE = " FOR UPDATE"
    MIGRATIONS = PG_MIGRATIONS
    SCHEMA_TABLE_SQL = (
        "CREATE TABLE IF NOT EXISTS ledger_schema_version (version integer PRIMARY KEY,"
        " description text NOT NULL, applied_at timestamptz NOT NULL)"
    )

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 10.0,
        lock_timeout: float = 10.0,
        max_retries: int = 8,
        isolation: str = "read committed",
    ) -> None:
        super().__init__(max_retries=max_retries)
        try:
            self._isolation = _ISOLATION[isolation]
        except KeyError:
            raise E.ConfigError(
                f"ledger isolation must be one of {', '.join(_ISOLATION)}"
            ) from None
        self._url = url
        self._connect_timeout = connect_timeout
        self._lock_timeout = lock_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._connection()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise E.LedgerUnavailable("the ledger is closed")
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name="cardd-ledger",
            )
            conn.isolation_level = self._isolation
            conn.execute("SET TIME ZONE 'UTC'")
            conn.execute(f"SET lock_timeout = {int(self._lock_timeout * 1000)}")
        except psycopg.Error as exc:
            # the URL may carry a password: never put it into the message
            raise E.LedgerUnavailable(
                f"cannot connect to the ledger database: {_describe(exc)}"
            ) from exc
        self._conn = conn
        return conn

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            yield _PgTx(cur)

    def _migrate(self) -> None:
        conn = self._connection()
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        except psycopg.Error as exc:
            raise self._translate(exc) from exc
        try:
            super()._migrate()
        finally:
            if not conn.broken and not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, _TRANSIENT)

    def _translate(self, exc: BaseException) -> E.CardError:
        if isinstance(exc, pg_errors.CheckViolation) and "transition" in str(exc):
            return E.InvalidTransition(f"the ledger database refused the change: {_describe(exc)}")
        if isinstance(exc, psycopg.IntegrityError):
            return E.LedgerConflict(f"the ledger database refused the change: {_describe(exc)}")
        conn = self._conn
        if conn is not None and (conn.broken or conn.closed):
            self._conn = None  # reconnect on the next call
            return E.LedgerUnavailable(
                f"lost the connection to the ledger database: {_describe(exc)}"
            )
        return E.LedgerUnavailable(f"ledger database error: {type(exc).__name__}: {_describe(exc)}")

    def _now(self, tx: Tx) -> datetime:
        row = tx.row("SELECT now()")
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
