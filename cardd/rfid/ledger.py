# SPDX-License-Identifier: Apache-2.0
"""The issuance ledger: which library number is active for which ID, and how it got there.

A library number is a 10-character ID number followed by a two-digit suffix (product.md, "Card
number rules"). Each number the ledger hands out has one of five states:

============ ==================================================================================
``pending``  reserved by a burn that has not been confirmed yet (the card is being written)
``active``   burned, read back and committed: the patron's working card
``lost``     the active card was reported lost and has not been replaced yet
``superseded`` replaced by a later number of the same ID (the old card stops working)
``void``     a burn that was abandoned; the suffix stays used and is never handed out again
============ ==================================================================================

Legal transitions (anything else raises :class:`~cardd.errors.InvalidTransition`)::

    (new) -> pending -> active -> lost -> superseded
                     \\-> void   \\-> superseded

Rules, enforced by the database as well as by this code (constraints, partial unique indexes and
triggers, see :mod:`cardd.rfid.migrations`):

- a suffix is used once per ID: ``UNIQUE (id_number, suffix)``, numbers are never deleted, and
  ``ledger_ids.last_suffix`` only grows. The next suffix is the highest ever used plus one, void
  numbers included. After ``99`` there is none: :class:`~cardd.errors.SuffixExhausted`.
- at most one ``pending`` number per ID, and at most one *live* number (``active`` or ``lost``)
  per ID. The contract's "at most one active or pending number per ID" is read as one of each:
  the contract also says the commit (not the reservation) moves the previous active number to
  superseded, so during a reissue the old card keeps working until the new one is verified, and
  an abandoned reissue leaves the patron with the card they had.
- a card UID, once bound to a pending number, never changes: a pending number can be resumed on
  the same card or voided, never handed to a second card.
- every state change appends a row to ``ledger_audit`` (time, station, operator, number, from,
  to, UID, detail) in the same transaction; the audit table rejects UPDATE and DELETE.

Reservation rules: an ID with no numbers gets suffix ``00`` (also when ``reissue=True``). An ID
with an ``active`` number needs ``reissue=True``, or :class:`~cardd.errors.AlreadyIssued` is
raised with that number (the burner uses it to say "already done" when the card carries it). An
ID whose live number is ``lost`` is reissued without ``reissue=True``: reporting a card lost is
the request for a new one. An ID with a ``pending`` number raises
:class:`~cardd.errors.BurnPending` (a :class:`~cardd.errors.LedgerConflict`) carrying it: resume
or void it first.

The burner's sequence::

    r = ledger.reserve(id_number, reissue=..., station=s, operator=o)   # pending
    ledger.bind_uid(r.number, uid_of_card_on_reader)                    # or reserve(uid=...)
    write the card; read it back; compare
    ledger.commit(r.number, uid=uid, station=s, operator=o)             # active; old superseded
    (on a failed write or a cancelled burn: ledger.void(r.number, ..., reason=...))

After a crash, ``reserve`` raises ``BurnPending(number, uid)``. If the card on the reader has
that UID, ``resume(number, uid)`` and write (or just read back) and commit; otherwise void it.
``commit`` is idempotent for the same (number, UID), so a commit whose answer was lost can be
repeated; with another UID it raises :class:`~cardd.errors.UidMismatch`.

Concurrency: every write runs in one transaction that first takes a per-ID lock (SQLite:
``BEGIN IMMEDIATE``, one writer for the whole file; PostgreSQL: ``SELECT … FOR UPDATE`` on the
ID's ``ledger_ids`` row, see :mod:`cardd.rfid.ledger_pg`). A station that loses a race sees the
winner's result (``BurnPending``, ``AlreadyIssued``, ``InvalidTransition``) or, if the database
itself refuses the change, ``LedgerConflict``. Transient failures (SQLite busy, PostgreSQL
serialization failures, deadlocks, lock timeouts) are retried a bounded number of times and then
raised as ``LedgerConflict``.

Threads: a ledger object may be shared between threads; calls are serialised by an internal lock
around its one connection. For parallel work open one ledger per thread or process.

Privacy: ID numbers are stored (that is the ledger's purpose) but never logged or put into
exception messages in full; :func:`mask` gives ``A12*****89``.
"""

from __future__ import annotations

import abc
import enum
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from cardd import errors as E
from cardd.log import mask_id
from cardd.rfid.migrations import Migration, latest_version
from cardd.rfid.migrations.sqlite import MIGRATIONS as SQLITE_MIGRATIONS

logger = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_SUFFIX = 0
LAST_SUFFIX = 99
DEFAULT_FILENAME = "ledger.sqlite3"


class NumberState(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    LOST = "lost"
    VOID = "void"


#: (from, to) pairs a number may go through; ``None`` is "did not exist yet".
TRANSITIONS: frozenset[tuple[NumberState | None, NumberState]] = frozenset(
    {
        (None, NumberState.PENDING),
        (NumberState.PENDING, NumberState.ACTIVE),
        (NumberState.PENDING, NumberState.VOID),
        (NumberState.ACTIVE, NumberState.LOST),
        (NumberState.ACTIVE, NumberState.SUPERSEDED),
        (NumberState.LOST, NumberState.SUPERSEDED),
    }
)

# Shape only: the checksum and the kind of number (national ID, old or new resident certificate)
# are cardd.rfid.idnumber's business; the ledger stores whatever 10-character ID it is given.
_ID_RE = re.compile(r"[A-Z][A-Z0-9][0-9]{8}")
_NUMBER_RE = re.compile(r"[A-Z][A-Z0-9][0-9]{10}")
_UID_RE = re.compile(r"(?:[0-9A-F]{2}){4,10}")


def mask(text: str) -> str:
    """``A123456789`` → ``A12*****89``, ``A12345678901`` → ``A12*****8901`` (for logs and errors)."""
    if len(text) >= 10:
        return f"{text[:3]}*****{text[8:]}"
    return "*" * len(text)


def library_number(id_number: str, suffix: int) -> str:
    check_id_number(id_number)
    if not FIRST_SUFFIX <= suffix <= LAST_SUFFIX:
        raise E.InvalidInput(f"suffix {suffix} is outside 00–99")
    return f"{id_number}{suffix:02d}"


def split_number(number: str) -> tuple[str, int]:
    """A 12-character library number into (ID number, suffix)."""
    if not isinstance(number, str) or not _NUMBER_RE.fullmatch(number):
        raise E.InvalidInput("a library number is a 10-character ID number and a 2-digit suffix")
    return number[:10], int(number[10:])


def check_id_number(id_number: str) -> str:
    if not isinstance(id_number, str) or not _ID_RE.fullmatch(id_number):
        raise E.InvalidInput("an ID number is a capital letter and 9 letters/digits, 10 characters")
    return id_number


def normalize_uid(uid: str) -> str:
    """Card UIDs are stored as uppercase hex in reader order (the ``hex`` UID form)."""
    if not isinstance(uid, str):
        raise E.InvalidInput("a card UID is a hex string")
    cleaned = re.sub(r"[\s:-]", "", uid).upper()
    if not _UID_RE.fullmatch(cleaned):
        raise E.InvalidInput("a card UID is 4 to 10 bytes of hex")
    return cleaned


def _check_actor(station: str, operator: str) -> None:
    for what, value in (("station", station), ("operator", operator)):
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise E.InvalidInput(f"{what} must be a non-empty name of at most 200 characters")


@dataclass(frozen=True, repr=False)
class NumberRecord:
    """One library number as the ledger knows it."""

    number: str
    id_number: str
    suffix: int
    state: NumberState
    #: the card it was burned into (hex UID); bound while pending, fixed once active
    uid: str | None
    reserved_at: datetime
    #: when it became active (``None`` while pending, and for void numbers)
    issued_at: datetime | None
    updated_at: datetime
    #: the station and operator that reserved it
    station: str
    operator: str
    #: the live number this one replaces (or replaced) when committed, if any
    supersedes: str | None

    def __repr__(self) -> str:
        return f"NumberRecord({mask(self.number)}, {self.state.value}, uid={self.uid})"


@dataclass(frozen=True, repr=False)
class Reservation:
    """A pending number: what the burner writes, and what its commit will supersede."""

    number: str
    id_number: str
    suffix: int
    supersedes: str | None
    uid: str | None

    @property
    def reissue(self) -> bool:
        return self.supersedes is not None

    def __repr__(self) -> str:
        sup = mask(self.supersedes) if self.supersedes else None
        return f"Reservation({mask(self.number)}, supersedes={sup}, uid={self.uid})"


@dataclass(frozen=True, repr=False)
class AuditEntry:
    seq: int
    at: datetime
    station: str
    operator: str
    number: str
    id_number: str
    #: ``None`` for the reservation that created the number
    from_state: NumberState | None
    to_state: NumberState
    uid: str | None
    detail: str

    def __repr__(self) -> str:
        frm = self.from_state.value if self.from_state else "-"
        return f"AuditEntry({self.seq}, {mask(self.number)}, {frm}->{self.to_state.value})"


@runtime_checkable
class Ledger(Protocol):
    """What the burner, the API and the kiosk use; both backends implement it."""

    def reserve(
        self, id_number: str, *, reissue: bool, station: str, operator: str, uid: str | None = None
    ) -> Reservation: ...

    def bind_uid(
        self,
        library_number: str,
        uid: str,
        *,
        station: str | None = None,
        operator: str | None = None,
    ) -> Reservation: ...

    def resume(
        self,
        library_number: str,
        uid: str,
        *,
        station: str | None = None,
        operator: str | None = None,
    ) -> Reservation: ...

    def commit(
        self, library_number: str, *, uid: str, station: str, operator: str
    ) -> NumberRecord: ...

    def void(
        self, library_number: str, *, station: str, operator: str, reason: str
    ) -> NumberRecord: ...

    def report_lost(self, library_number: str, *, station: str, operator: str) -> NumberRecord: ...

    def state(self, library_number: str) -> NumberRecord | None: ...

    def numbers_for(self, id_number: str) -> list[NumberRecord]: ...

    def active_for(self, id_number: str) -> NumberRecord | None: ...

    def find_by_uid(self, uid: str) -> list[NumberRecord]: ...

    def pending(self) -> list[NumberRecord]: ...

    def history(self, id_or_number: str) -> list[AuditEntry]: ...

    def export(self) -> Iterator[NumberRecord]: ...

    def counts(self) -> dict[str, int]: ...

    def check(self) -> list[str]: ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


class Tx(abc.ABC):
    """One open transaction of a backend, with ``?`` placeholders whatever the driver wants."""

    @abc.abstractmethod
    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; return the number of rows changed."""

    @abc.abstractmethod
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def row(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        got = self.rows(sql, params)
        return got[0] if got else None


# SQL text is only ever put together from the constants and fixed clauses of this module (hence
# the S608 exemptions below); every value travels as a ``?`` parameter.
_NUMBER_COLS = (
    "number, id_number, suffix, state, uid, reserved_at, issued_at, updated_at, station, operator,"
    " supersedes"
)
_AUDIT_COLS = "seq, at, station, operator, number, id_number, from_state, to_state, uid, detail"
_LIVE = "('pending', 'active', 'lost')"


class SqlLedger(abc.ABC):
    """The ledger's rules over SQL; a backend supplies connections, transactions and types."""

    #: the driver's exception base; these are retried or translated into CardErrors
    DRIVER_ERRORS: ClassVar[tuple[type[Exception], ...]] = ()
    #: appended to the SELECT that takes the per-ID lock
    FOR_UPDATE: ClassVar[str] = ""
    MIGRATIONS: ClassVar[list[Migration]] = []
    SCHEMA_TABLE_SQL: ClassVar[str] = ""

    def __init__(self, *, max_retries: int = 8) -> None:
        self._lock = threading.RLock()
        self._max_retries = max_retries

    # -- backend hooks ---------------------------------------------------------------------------

    @abc.abstractmethod
    def _transaction(self, write: bool) -> AbstractContextManager[Tx]:
        """One attempt at a transaction (SQLite ``BEGIN IMMEDIATE`` for writes)."""

    @abc.abstractmethod
    def _is_transient(self, exc: BaseException) -> bool:
        """A failure that rolled everything back and may succeed if tried again."""

    @abc.abstractmethod
    def _translate(self, exc: BaseException) -> E.CardError:
        """A driver exception as a CardError (never with a full ID number in the message)."""

    @abc.abstractmethod
    def _now(self, tx: Tx) -> datetime: ...

    def _dt_in(self, value: datetime) -> Any:
        return value

    def _dt_out(self, value: Any) -> datetime:
        return value  # type: ignore[no-any-return]

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> SqlLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions with retries ---------------------------------------------------------------

    def _run(self, fn: Callable[[Tx], T], *, write: bool = True) -> T:
        attempt = 0
        while True:
            try:
                with self._lock, self._transaction(write) as tx:
                    return fn(tx)
            except self.DRIVER_ERRORS as exc:  # anything else is a bug and propagates as such
                if self._is_transient(exc):
                    if attempt < self._max_retries:
                        attempt += 1
                        logger.debug("ledger: transient %s, retry %d", type(exc).__name__, attempt)
                        # jittered exponential backoff: stations that collided do not collide again
                        time.sleep(min(0.5, 0.005 * 2**attempt) * (0.5 + random.random()))
                        continue
                    raise E.LedgerConflict(
                        f"another station kept this ID busy; gave up after {attempt + 1} tries"
                    ) from exc
                raise self._translate(exc) from exc

    # -- schema ----------------------------------------------------------------------------------

    def _migrate(self) -> None:
        latest = latest_version(self.MIGRATIONS)

        def fn(tx: Tx) -> tuple[int, int]:
            tx.run(self.SCHEMA_TABLE_SQL)
            row = tx.row("SELECT MAX(version) FROM ledger_schema_version")
            current = int(row[0]) if row and row[0] is not None else 0
            if current > latest:
                raise E.LedgerSchemaTooNew(
                    f"the ledger database has schema version {current}; this cardd knows up to"
                    f" {latest} and will not write to it"
                )
            now = self._dt_in(self._now(tx))
            for m in self.MIGRATIONS[current:]:
                for statement in m.statements:
                    tx.run(statement)
                tx.run(
                    "INSERT INTO ledger_schema_version (version, description, applied_at)"
                    " VALUES (?, ?, ?)",
                    (m.version, m.description, now),
                )
            return current, latest

        before, after = self._run(fn)
        if before != after:
            logger.info("ledger schema migrated from version %d to %d", before, after)

    def schema_version(self) -> int:
        row = self._run(
            lambda tx: tx.row("SELECT MAX(version) FROM ledger_schema_version"), write=False
        )
        return int(row[0]) if row and row[0] is not None else 0

    # -- row helpers -----------------------------------------------------------------------------

    def _record(self, row: tuple[Any, ...]) -> NumberRecord:
        return NumberRecord(
            number=row[0],
            id_number=row[1],
            suffix=int(row[2]),
            state=NumberState(row[3]),
            uid=row[4],
            reserved_at=self._dt_out(row[5]),
            issued_at=self._dt_out(row[6]) if row[6] is not None else None,
            updated_at=self._dt_out(row[7]),
            station=row[8],
            operator=row[9],
            supersedes=row[10],
        )

    def _entry(self, row: tuple[Any, ...]) -> AuditEntry:
        return AuditEntry(
            seq=int(row[0]),
            at=self._dt_out(row[1]),
            station=row[2],
            operator=row[3],
            number=row[4],
            id_number=row[5],
            from_state=NumberState(row[6]) if row[6] is not None else None,
            to_state=NumberState(row[7]),
            uid=row[8],
            detail=row[9],
        )

    def _get(self, tx: Tx, number: str) -> NumberRecord | None:
        row = tx.row(f"SELECT {_NUMBER_COLS} FROM ledger_numbers WHERE number = ?", (number,))  # noqa: S608
        return self._record(row) if row else None

    def _lock_id(self, tx: Tx, id_number: str, now: datetime | None) -> tuple[Any, ...] | None:
        """Take the per-ID lock; with ``now`` create the ID's row first. Returns (last_suffix,)."""
        if now is not None:
            stamp = self._dt_in(now)
            tx.run(
                "INSERT INTO ledger_ids (id_number, last_suffix, created_at, updated_at)"
                " VALUES (?, NULL, ?, ?) ON CONFLICT (id_number) DO NOTHING",
                (id_number, stamp, stamp),
            )
        return tx.row(
            "SELECT last_suffix FROM ledger_ids WHERE id_number = ?" + self.FOR_UPDATE,  # noqa: S608
            (id_number,),
        )

    def _locked_number(self, tx: Tx, number: str) -> NumberRecord:
        id_number, _ = split_number(number)
        rec = self._get(tx, number) if self._lock_id(tx, id_number, None) else None
        if rec is None:
            raise E.UnknownNumber(f"{mask(number)} is not in the ledger", number=number)
        return rec

    def _set_state(
        self, tx: Tx, rec: NumberRecord, to: NumberState, now: datetime, **extra: Any
    ) -> None:
        sets = ", ".join(["state = ?", "updated_at = ?", *(f"{k} = ?" for k in extra)])
        params = [to.value, self._dt_in(now), *extra.values(), rec.number, rec.state.value]
        if tx.run(f"UPDATE ledger_numbers SET {sets} WHERE number = ? AND state = ?", params) != 1:  # noqa: S608
            # cannot happen under the ID lock; if it does, someone bypassed it
            raise E.LedgerConflict(
                f"{mask(rec.number)} changed under a lock; try again", number=rec.number
            )

    def _audit(
        self,
        tx: Tx,
        now: datetime,
        rec_number: str,
        from_state: NumberState | None,
        to_state: NumberState,
        uid: str | None,
        station: str,
        operator: str,
        detail: str = "",
    ) -> None:
        if from_state != to_state and (from_state, to_state) not in TRANSITIONS:
            raise E.InvalidTransition(
                f"{mask(rec_number)}: {from_state} -> {to_state} is not allowed",
                number=rec_number,
                from_state=from_state,
                to_state=to_state,
            )
        tx.run(
            "INSERT INTO ledger_audit (at, station, operator, number, id_number, from_state,"
            " to_state, uid, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self._dt_in(now),
                station,
                operator,
                rec_number,
                rec_number[:10],
                from_state.value if from_state else None,
                to_state.value,
                uid,
                detail,
            ),
        )

    # -- writes ----------------------------------------------------------------------------------

    def reserve(
        self, id_number: str, *, reissue: bool, station: str, operator: str, uid: str | None = None
    ) -> Reservation:
        """Reserve the ID's next number as ``pending`` (see the module docstring for the rules).

        :param reissue: the caller means to replace an active card; without it an active number
            raises ``AlreadyIssued``. Not needed after the card was reported lost.
        :param uid: the card on the reader, if known now (else ``bind_uid`` before writing).
        :raises BurnPending: a burn of this ID is pending; resume or void it.
        :raises AlreadyIssued: the ID has an active number and ``reissue`` is false.
        :raises SuffixExhausted: the ID already used suffix 99.
        """
        check_id_number(id_number)
        _check_actor(station, operator)
        card = normalize_uid(uid) if uid is not None else None

        def fn(tx: Tx) -> Reservation:
            now = self._now(tx)
            locked = self._lock_id(tx, id_number, now)
            assert locked is not None
            live = [
                self._record(r)
                for r in tx.rows(
                    f"SELECT {_NUMBER_COLS} FROM ledger_numbers WHERE id_number = ?"  # noqa: S608
                    f" AND state IN {_LIVE} ORDER BY suffix",
                    (id_number,),
                )
            ]
            by_state = {r.state: r for r in live}
            if p := by_state.get(NumberState.PENDING):
                raise E.BurnPending(
                    f"a burn of {mask(p.number)} is pending"
                    + (f" on card {p.uid}" if p.uid else "")
                    + "; resume it with the same card or void it",
                    number=p.number,
                    uid=p.uid,
                )
            active = by_state.get(NumberState.ACTIVE)
            if active and not reissue:
                raise E.AlreadyIssued(
                    f"{mask(active.number)} is already active for this ID; reissue to replace it",
                    number=active.number,
                    uid=active.uid,
                )
            previous = active or by_state.get(NumberState.LOST)
            top = tx.row("SELECT MAX(suffix) FROM ledger_numbers WHERE id_number = ?", (id_number,))
            used = [int(v) for v in (locked[0], top[0] if top else None) if v is not None]
            suffix = max(used) + 1 if used else FIRST_SUFFIX
            if suffix > LAST_SUFFIX:
                raise E.SuffixExhausted(
                    f"{mask(id_number)} has used suffix {LAST_SUFFIX}; no further number can be"
                    " issued for this ID"
                )
            number = f"{id_number}{suffix:02d}"
            stamp = self._dt_in(now)
            tx.run(
                f"INSERT INTO ledger_numbers ({_NUMBER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    number,
                    id_number,
                    suffix,
                    NumberState.PENDING.value,
                    card,
                    stamp,
                    None,
                    stamp,
                    station,
                    operator,
                    previous.number if previous else None,
                ),
            )
            tx.run(
                "UPDATE ledger_ids SET last_suffix = ?, updated_at = ? WHERE id_number = ?",
                (suffix, stamp, id_number),
            )
            if previous is None:
                detail = "first issue" if not used else "issue after abandoned burns"
            else:
                detail = f"reissue replacing {previous.state.value} suffix {previous.suffix:02d}"
            self._audit(tx, now, number, None, NumberState.PENDING, card, station, operator, detail)
            return Reservation(
                number, id_number, suffix, previous.number if previous else None, card
            )

        res = self._run(fn)
        logger.info(
            "ledger: reserved %s at %s (%s)",
            mask(res.number),
            station,
            "reissue" if res.reissue else "first issue",
        )
        return res

    def _bind(
        self, number: str, uid: str, station: str | None, operator: str | None, resumed: bool
    ) -> Reservation:
        card = normalize_uid(uid)

        def fn(tx: Tx) -> Reservation:
            now = self._now(tx)
            rec = self._locked_number(tx, number)
            if rec.state != NumberState.PENDING:
                raise E.InvalidTransition(
                    f"{mask(number)} is {rec.state.value}, not pending",
                    number=number,
                    from_state=rec.state,
                    to_state=NumberState.PENDING,
                )
            if rec.uid is not None and rec.uid != card:
                raise E.UidMismatch(
                    f"{mask(number)} is being burned into card {rec.uid}, not {card};"
                    " put that card on the reader or void the burn",
                    number=number,
                    expected=rec.uid,
                    got=card,
                )
            st, op = station or rec.station, operator or rec.operator
            _check_actor(st, op)
            if rec.uid is None:
                tx.run(
                    "UPDATE ledger_numbers SET uid = ?, updated_at = ? WHERE number = ?",
                    (card, self._dt_in(now), number),
                )
                detail = "burn resumed; card UID bound" if resumed else "card UID bound"
                self._audit(
                    tx, now, number, NumberState.PENDING, NumberState.PENDING, card, st, op, detail
                )
            elif resumed:
                self._audit(
                    tx,
                    now,
                    number,
                    NumberState.PENDING,
                    NumberState.PENDING,
                    card,
                    st,
                    op,
                    "burn resumed",
                )
            return Reservation(number, rec.id_number, rec.suffix, rec.supersedes, card)

        return self._run(fn)

    def bind_uid(
        self,
        library_number: str,
        uid: str,
        *,
        station: str | None = None,
        operator: str | None = None,
    ) -> Reservation:
        """Bind the card being written to a pending number, before writing it.

        Binding the same UID again is a no-op; another UID raises ``UidMismatch``. Station and
        operator for the audit row default to those that reserved the number.
        """
        return self._bind(library_number, uid, station, operator, resumed=False)

    def resume(
        self,
        library_number: str,
        uid: str,
        *,
        station: str | None = None,
        operator: str | None = None,
    ) -> Reservation:
        """Continue an interrupted burn on the card with ``uid`` (binding it if none was bound).

        Only the card the number was bound to can resume it (``UidMismatch`` otherwise). The
        resumption is recorded in the audit log.
        """
        res = self._bind(library_number, uid, station, operator, resumed=True)
        logger.info("ledger: resumed %s on card %s", mask(res.number), res.uid)
        return res

    def commit(self, library_number: str, *, uid: str, station: str, operator: str) -> NumberRecord:
        """The card was written and read back: pending → active, the previous live number →
        superseded, the UID recorded. Repeating it with the same UID returns the same record.

        :raises UidMismatch: the number is bound to (or active on) another card.
        :raises InvalidTransition: the number is not pending (void, superseded, …).
        """
        _check_actor(station, operator)
        card = normalize_uid(uid)

        def fn(tx: Tx) -> tuple[NumberRecord, list[str]]:
            now = self._now(tx)
            rec = self._locked_number(tx, library_number)
            if rec.state == NumberState.ACTIVE and rec.uid == card:
                return rec, []  # a repeated commit whose first answer was lost
            if rec.state == NumberState.ACTIVE or (
                rec.state == NumberState.PENDING and rec.uid not in (None, card)
            ):
                raise E.UidMismatch(
                    f"{mask(rec.number)} belongs to card {rec.uid}, not {card}",
                    number=rec.number,
                    expected=rec.uid,
                    got=card,
                )
            if rec.state != NumberState.PENDING:
                raise E.InvalidTransition(
                    f"{mask(rec.number)} is {rec.state.value}; only a pending number can be committed",
                    number=rec.number,
                    from_state=rec.state,
                    to_state=NumberState.ACTIVE,
                )
            superseded = []
            # Supersede first: the live-number unique index allows one active-or-lost at a time.
            for row in tx.rows(
                f"SELECT {_NUMBER_COLS} FROM ledger_numbers WHERE id_number = ?"  # noqa: S608
                " AND state IN ('active', 'lost') ORDER BY suffix",
                (rec.id_number,),
            ):
                old = self._record(row)
                self._set_state(tx, old, NumberState.SUPERSEDED, now)
                self._audit(
                    tx,
                    now,
                    old.number,
                    old.state,
                    NumberState.SUPERSEDED,
                    old.uid,
                    station,
                    operator,
                    f"superseded by suffix {rec.suffix:02d}",
                )
                superseded.append(old.number)
            self._set_state(tx, rec, NumberState.ACTIVE, now, uid=card, issued_at=self._dt_in(now))
            self._audit(
                tx,
                now,
                rec.number,
                NumberState.PENDING,
                NumberState.ACTIVE,
                card,
                station,
                operator,
                "burned and verified",
            )
            done = self._get(tx, rec.number)
            assert done is not None
            return done, superseded

        rec, superseded = self._run(fn)
        if superseded:
            logger.info(
                "ledger: %s active on card %s, superseding %s",
                mask(rec.number),
                rec.uid,
                ", ".join(mask(n) for n in superseded),
            )
        return rec

    def void(
        self, library_number: str, *, station: str, operator: str, reason: str
    ) -> NumberRecord:
        """Abandon a pending burn. The suffix stays used. Voiding a void number is a no-op."""
        rec = self._step(
            library_number, NumberState.PENDING, NumberState.VOID, station, operator,
            reason or "burn abandoned", "only a pending burn can be voided",
        )
        logger.info("ledger: voided %s at %s", mask(rec.number), station)
        return rec

    def report_lost(self, library_number: str, *, station: str, operator: str) -> NumberRecord:
        """active → lost; the next ``reserve`` of the ID is a reissue. Repeating it is a no-op."""
        rec = self._step(
            library_number, NumberState.ACTIVE, NumberState.LOST, station, operator,
            "reported lost", "only an active card can be reported lost",
        )
        logger.info("ledger: %s reported lost at %s", mask(rec.number), station)
        return rec

    def _step(
        self,
        library_number: str,
        source: NumberState,
        target: NumberState,
        station: str,
        operator: str,
        detail: str,
        refusal: str,
    ) -> NumberRecord:
        """One transition ``source → target`` of one number, audited; a no-op when already there."""
        _check_actor(station, operator)

        def fn(tx: Tx) -> NumberRecord:
            now = self._now(tx)
            rec = self._locked_number(tx, library_number)
            if rec.state == target:
                return rec
            if rec.state != source:
                raise E.InvalidTransition(
                    f"{mask(rec.number)} is {rec.state.value}; {refusal}",
                    number=rec.number,
                    from_state=rec.state,
                    to_state=target,
                )
            self._set_state(tx, rec, target, now)
            self._audit(tx, now, rec.number, source, target, rec.uid, station, operator, detail)
            done = self._get(tx, rec.number)
            assert done is not None
            return done

        return self._run(fn)

    # -- reads -----------------------------------------------------------------------------------

    def _select(
        self, where: str, params: Sequence[Any], order: str = "number", limit: int | None = None
    ) -> list[NumberRecord]:
        sql = f"SELECT {_NUMBER_COLS} FROM ledger_numbers WHERE {where} ORDER BY {order}"  # noqa: S608
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        rows = self._run(lambda tx: tx.rows(sql, params), write=False)
        return [self._record(r) for r in rows]

    def state(self, library_number: str) -> NumberRecord | None:
        split_number(library_number)
        got = self._select("number = ?", (library_number,))
        return got[0] if got else None

    def numbers_for(self, id_number: str) -> list[NumberRecord]:
        return self._select("id_number = ?", (check_id_number(id_number),), "suffix")

    def active_for(self, id_number: str) -> NumberRecord | None:
        got = self._select("id_number = ? AND state = 'active'", (check_id_number(id_number),))
        return got[0] if got else None

    def find_by_uid(self, uid: str) -> list[NumberRecord]:
        return self._select("uid = ?", (normalize_uid(uid),), "reserved_at, number")

    def pending(self) -> list[NumberRecord]:
        return self._select("state = 'pending'", (), "reserved_at, number")

    def history(self, id_or_number: str) -> list[AuditEntry]:
        """Audit entries of one ID (10 characters) or one number (12), oldest first."""
        if isinstance(id_or_number, str) and len(id_or_number) == 12:
            split_number(id_or_number)
            where = "number = ?"
        else:
            check_id_number(id_or_number)
            where = "id_number = ?"
        rows = self._run(
            lambda tx: tx.rows(
                f"SELECT {_AUDIT_COLS} FROM ledger_audit WHERE {where} ORDER BY seq",  # noqa: S608
                (id_or_number,),
            ),
            write=False,
        )
        return [self._entry(r) for r in rows]

    def export(self, batch: int = 500) -> Iterator[NumberRecord]:
        """Every number, by ID and suffix, read in batches (no lock is held between batches)."""
        after = ""
        while True:
            got = self._select("number > ?", (after,), "number", batch)
            yield from got
            if len(got) < batch:
                return
            after = got[-1].number

    def counts(self) -> dict[str, int]:
        rows = self._run(
            lambda tx: tx.rows("SELECT state, COUNT(*) FROM ledger_numbers GROUP BY state"),
            write=False,
        )
        out = {s.value: 0 for s in NumberState}
        out.update({state: int(n) for state, n in rows})
        return out

    def check(self) -> list[str]:
        """Invariant violations (an empty list when the ledger is consistent); for diag and tests."""
        queries = {
            "more than one pending number": "SELECT id_number FROM ledger_numbers WHERE state = 'pending'"
            " GROUP BY id_number HAVING COUNT(*) > 1",
            "more than one active or lost number": "SELECT id_number FROM ledger_numbers"
            " WHERE state IN ('active', 'lost') GROUP BY id_number HAVING COUNT(*) > 1",
            "a suffix used twice": "SELECT id_number FROM ledger_numbers GROUP BY id_number, suffix"
            " HAVING COUNT(*) > 1",
            "last_suffix below a used suffix": "SELECT i.id_number FROM ledger_ids i JOIN ledger_numbers n"
            " ON n.id_number = i.id_number GROUP BY i.id_number, i.last_suffix"
            " HAVING i.last_suffix IS NULL OR MAX(n.suffix) > i.last_suffix",
            "state differs from the audit log": "SELECT n.number FROM ledger_numbers n LEFT JOIN"
            " (SELECT number, MAX(seq) AS seq FROM ledger_audit GROUP BY number) a ON a.number = n.number"
            " LEFT JOIN ledger_audit l ON l.seq = a.seq WHERE l.to_state IS NULL OR l.to_state <> n.state",
        }

        def fn(tx: Tx) -> list[str]:
            return [
                f"{what}: {mask(str(r[0]))}" for what, sql in queries.items() for r in tx.rows(sql)
            ]

        return self._run(fn, write=False)


# -- SQLite ------------------------------------------------------------------------------------


class _SqliteTx(Tx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, tuple(params)).fetchall()


_SQLITE_BUSY = (
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED} if hasattr(sqlite3, "SQLITE_BUSY") else {5, 6}
)


class SqliteLedger(SqlLedger):
    """The ledger in one SQLite file (default ``<state_dir>/ledger.sqlite3``).

    - WAL journal, so readers (the kiosk) never wait for a burn;
    - ``synchronous=FULL``: every commit is fsynced before it returns. A burn is a few
      transactions per card, so the cost is irrelevant, and with NORMAL a power cut could lose a
      committed transition after the card was written — the one thing the ledger must not do;
    - ``busy_timeout``: another process's write transaction is waited for, not failed;
    - ``foreign_keys=ON``;
    - writes use ``BEGIN IMMEDIATE`` (the write lock is taken first, so two writers never
      deadlock upgrading read locks and the per-ID rules are checked under the lock);
    - the file is created with mode 0600: it holds national ID numbers.

    One connection per ledger object, shared by threads under a lock.
    """

    DRIVER_ERRORS = (sqlite3.Error,)
    MIGRATIONS = SQLITE_MIGRATIONS
    SCHEMA_TABLE_SQL = (
        "CREATE TABLE IF NOT EXISTS ledger_schema_version (version INTEGER PRIMARY KEY,"
        " description TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0, max_retries: int = 3
    ) -> None:
        super().__init__(max_retries=max_retries)
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = sqlite3.connect(
                str(self.path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._conn = conn
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise E.LedgerUnavailable(f"the ledger file cannot use WAL journaling (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise E.LedgerUnavailable(f"cannot open the ledger file {self.path}: {exc}") from exc
        except E.CardError:
            self.close()
            raise
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Tx]:
        conn = self._conn
        if conn is None:
            raise E.LedgerUnavailable("the ledger is closed")
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield _SqliteTx(conn)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and (
            getattr(exc, "sqlite_errorcode", None) in _SQLITE_BUSY or "locked" in str(exc)
        )

    def _translate(self, exc: BaseException) -> E.CardError:
        text = mask_id(str(exc))
        if isinstance(exc, sqlite3.IntegrityError):
            if "invalid state transition" in text:
                return E.InvalidTransition(f"the ledger database refused the change: {text}")
            return E.LedgerConflict(f"the ledger database refused the change: {text}")
        return E.LedgerUnavailable(f"ledger database error: {type(exc).__name__}: {text}")

    def _now(self, tx: Tx) -> datetime:
        return datetime.now(UTC)

    def _dt_in(self, value: datetime) -> Any:
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    def _dt_out(self, value: Any) -> datetime:
        return datetime.fromisoformat(value)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# -- opening -----------------------------------------------------------------------------------


def default_ledger_path(state_dir: str | os.PathLike[str] | None = None) -> Path:
    if state_dir is None:
        from cardd.config import default_state_dir

        state_dir = default_state_dir()
    return Path(state_dir) / DEFAULT_FILENAME


def open_ledger(url_or_path: str | os.PathLike[str] | None = None, **options: Any) -> SqlLedger:
    """Open (creating and migrating if needed) the ledger named by a path or URL.

    - ``None``: ``<state_dir>/ledger.sqlite3``;
    - a path, or ``sqlite:///abs/path`` (everything after ``sqlite://``), or a directory (the
      file ``ledger.sqlite3`` in it): :class:`SqliteLedger`;
    - ``postgresql://…`` or ``postgres://…`` (a libpq URL): :class:`~cardd.rfid.ledger_pg.PgLedger`.

    :raises LedgerUnavailable: the database cannot be opened or reached.
    :raises LedgerSchemaTooNew: a newer cardd has migrated the database.
    """
    if url_or_path is None:
        return SqliteLedger(default_ledger_path(), **options)
    target = os.fspath(url_or_path)
    if target.startswith(("postgresql://", "postgres://")):
        from cardd.rfid.ledger_pg import PgLedger

        return PgLedger(target, **options)
    if target.startswith("sqlite:"):
        if not target.startswith("sqlite:///"):
            raise E.ConfigError("a SQLite ledger URL is sqlite:///absolute/path")
        target = target[len("sqlite://") :]
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", target):
        raise E.ConfigError("the ledger is a file path, sqlite:///path or postgresql://… URL")
    path = Path(target)
    if path.is_dir():
        path = path / DEFAULT_FILENAME
    return SqliteLedger(path, **options)
