# SPDX-License-Identifier: Apache-2.0
"""Class-batch burning: a validated roster, one student after another, resumable, with results.

The flow (``cardd batch burn``, cardd.cli.batch_cmd):

1. The roster is read and every row validated first (cardd.rfid.roster). A roster with bad rows
   is refused before any card is touched, unless the caller skips them; rows without consent are
   never burned.
2. For each student: say who is next (name and masked ID), wait for a card, burn it
   (``StudentCards.burn`` reads the record back before committing), record the outcome, and wait
   until the card is taken off the reader before the next student, so one card is never burned
   for two students. ``already_done`` counts as done. A failure is shown with its reason and the
   operator (or a non-interactive policy) chooses retry, skip or stop.
3. A journal per roster file records every attempt and outcome; running the same file again
   resumes it. At the end, a result sheet (CSV and XLSX, mode 0600) lists every row.

The journal
-----------
``<state_dir>/batches/<sha256 of the roster file>.jsonl``, mode 0600, one JSON object per line,
appended and fsynced before the next step:

- ``{"t": "run", ...}``: a run started (station, operator, roster name, cardd version);
- ``{"t": "attempt", "row": 7, "last_suffix": -1, "at": ...}``: written *before* a card is
  touched for a row; ``last_suffix`` is the highest suffix the ledger had for that ID then
  (-1 for none);
- ``{"t": "result", "row": 7, "status": "burned", "suffix": 0, "uid": "93A131C0", "at": ...}``,
  or ``"status": "failed:card_removed"`` with ``"code"`` and ``"detail"``.

It holds suffixes, not ID numbers (the roster file, identified by its hash, has those). A line
torn by a crash is ignored when the journal is read.

Resuming, and why a kill -9 never loses or duplicates a burn
------------------------------------------------------------
The ledger is the ground truth; the journal is advisory and is reconciled against the ledger
when a run starts. For each row to burn:

- the journal says done (burned / resumed / already_done) and the ledger still has that number
  (in any state but pending or void): done, not burned again. A number reported lost after the
  batch stays done here; replacing it is a normal reissue, not this batch's business.
- the ledger has an *active* number whose suffix is above the ``last_suffix`` of the row's first
  attempt in this journal: it was issued by this batch (suffixes only grow and the attempt line is
  fsynced before the reservation), so the row is done: the run was killed after the commit and
  before the journal line. This is the decision the brief asked for: "issued in this batch" is
  told by suffix, not by clocks, so it also holds on a PostgreSQL ledger whose server clock
  differs from the station's. Without this rule a reissue row (補發) would be reissued a second
  time on every resume.
- the ledger has a *pending* number for the ID: the burn was interrupted after the reservation;
  such rows go first, because the card it was being written to is most likely still on the
  reader, and ``burn`` resumes it on that card (or refuses any other card: a pending number is
  never handed to a second card).
- the ledger has an active number from before this batch (no attempt in this journal, or its
  suffix is not above the attempt's) and the row does not ask for a reissue: the student already
  has a working card; the row is ``failed:already_issued`` without touching a card. Mark the row
  補發 to replace that card.
- anything else (never attempted, failed, skipped, not reached): burned in this run.

A row done in an earlier run keeps its status, uid and time in the results of later runs.

Result statuses
---------------
``burned``, ``resumed`` (an interrupted burn completed), ``already_done`` (the card already
carried the number), ``no_consent``, ``invalid`` (a bad row, skipped with ``--skip-bad``),
``failed:<code>`` (the last attempt failed with that error code and the operator skipped the row,
or the run stopped on it), ``skipped`` (not reached: the run stopped first; run the roster again).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import enum
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import monotonic
from typing import Any

from cardd import __version__
from cardd.errors import CardError, NoCard, NoReader
from cardd.events import EventBus
from cardd.readers.manager import ReaderManager
from cardd.rfid.burn import BurnOutcome, CardRecord, StudentCards
from cardd.rfid.idnumber import mask_id
from cardd.rfid.ledger import NumberRecord, NumberState
from cardd.rfid.roster import Roster, RosterInvalid, RosterRow, describe_problems

logger = logging.getLogger(__name__)

DONE = frozenset({"burned", "resumed", "already_done"})
#: errors where trying the same card again cannot help: the operator must put another card on
SWAP_CARD_CODES = frozenset(
    {
        "card_in_use",
        "card_not_personalized",
        "burn_pending",
        "already_issued",
        "auth_failed",
        "access_denied",
        "record_foreign",
        "card_not_supported",
        "uid_mismatch",
        "suffix_exhausted",
    }
)
JOURNAL_DIR = "batches"


class Decision(enum.StrEnum):
    RETRY = "retry"
    SKIP = "skip"
    STOP = "stop"


def roster_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def journal_path(state_dir: Path, roster: Path) -> Path:
    return Path(state_dir) / JOURNAL_DIR / f"{roster_digest(roster)}.jsonl"


def _now() -> datetime:
    return datetime.now(UTC)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the journal -------------------------------------------------------------------------------


class Journal:
    """The append-only, fsynced JSON-lines journal of one roster file (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.entries: list[dict[str, Any]] = []
        #: lines that could not be parsed (a line torn by a crash)
        self.torn = 0
        self._fd: int | None = None
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                self.torn += 1
                continue
            if isinstance(entry, dict) and isinstance(entry.get("t"), str):
                self.entries.append(entry)
            else:
                self.torn += 1

    def open(self) -> None:
        if self._fd is not None:
            return
        _private_dir(self.path.parent)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(fd, 0o600)
        self._fd = fd
        if created:
            _fsync_dir(self.path.parent)
        elif self.path.stat().st_size:
            # A crash mid-write leaves a line without its newline: end it, so that the next
            # entry is a line of its own (the torn one is ignored when reading).
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    os.write(fd, b"\n")

    def append(self, entry: dict[str, Any]) -> None:
        if self._fd is None:
            self.open()
        assert self._fd is not None
        entry = {"t": entry["t"], "at": _now().isoformat(timespec="milliseconds"), **entry}
        data = (json.dumps(entry, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")
        os.write(self._fd, data)
        os.fsync(self._fd)
        self.entries.append(entry)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- queries ---------------------------------------------------------------------------

    def first_attempt(self, row: int) -> dict[str, Any] | None:
        return next((e for e in self.entries if e["t"] == "attempt" and e.get("row") == row), None)

    def last_result(self, row: int) -> dict[str, Any] | None:
        found = None
        for e in self.entries:
            if e["t"] == "result" and e.get("row") == row:
                found = e
        return found

    @property
    def runs(self) -> int:
        return sum(1 for e in self.entries if e["t"] == "run")


# -- results -----------------------------------------------------------------------------------


@dataclass
class RowResult:
    row: RosterRow
    #: burned | resumed | already_done | no_consent | invalid | skipped | failed:<code>
    status: str
    #: the full library number (the result sheet goes back to the school that has the IDs)
    number: str | None = None
    #: the card's UID, hex in reader order
    uid: str | None = None
    at: datetime | None = None
    detail: str = ""

    @property
    def done(self) -> bool:
        return self.status in DONE

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed:")


@dataclass
class Counts:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    remaining: int = 0

    @property
    def total(self) -> int:
        return self.done + self.failed + self.skipped + self.remaining


@dataclass
class BatchReport:
    roster: Roster
    #: every data row of the roster, in sheet order
    results: list[RowResult]
    journal: Path
    #: the run stopped before every row was tried (operator, policy, or a card left on)
    stopped: bool = False
    #: Ctrl-C / cancellation
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> Counts:
        c = Counts()
        for r in self.results:
            if r.done:
                c.done += 1
            elif r.failed:
                c.failed += 1
            else:
                c.skipped += 1
        return c

    @property
    def complete(self) -> bool:
        """Every row that consented and is valid has its card."""
        return all(r.done for r in self.results if r.row.status == "to_burn")


@dataclass(frozen=True)
class BatchPlan:
    to_burn: int
    #: done in earlier runs (journal or ledger)
    already: int
    #: rows that failed their check against the ledger before any card (already issued)
    refused: int
    #: rows with a pending burn, done first
    pending: int
    runs_before: int


class BatchUI:
    """What the engine tells its caller, and asks it. The CLI prints; tests supply cards.

    Every method has a do-nothing default. The async ones are awaited by the engine before it
    waits for the reader, so a test can insert or remove a virtual card from them.
    """

    def on_plan(self, plan: BatchPlan, counts: Counts) -> None:
        """The work ahead, before the first student."""

    def on_notice(self, text: str) -> None:
        """Something the operator should read (journal repaired, leftover card, ...)."""

    def on_next(self, row: RosterRow, index: int, total: int, note: str) -> None:
        """``row`` is next (``index`` of ``total`` in this run); ``note`` says what is special."""

    async def on_waiting(self, row: RosterRow) -> None:
        """The engine is about to wait for a card on the reader for ``row``."""

    async def on_remove(self, row: RosterRow, result: RowResult | None) -> None:
        """The engine is about to wait until the card is taken off the reader."""

    def on_result(self, result: RowResult, counts: Counts) -> None:
        """A row got its outcome in this run (done or failed)."""

    async def on_error(self, row: RosterRow, error: CardError, attempt: int) -> Decision:
        """The ``attempt``-th try for ``row`` failed: retry, skip the row or stop the batch."""
        return Decision.STOP


# -- the engine --------------------------------------------------------------------------------


@dataclass
class _Todo:
    row: RosterRow
    pending: NumberRecord | None = None


class BatchEngine:
    """Runs one roster on one reader. Build it, ``await run()``, then write the results."""

    def __init__(
        self,
        roster: Roster,
        *,
        cards: StudentCards,
        manager: ReaderManager,
        reader: str,
        operator: str,
        journal: Journal,
        ui: BatchUI | None = None,
        skip_bad: bool = False,
        card_timeout: float | None = None,
        bus: EventBus | None = None,
    ) -> None:
        """
        :param bus: the manager's event bus; with it, a card swapped faster than the reader
            state can be looked at (taken off and the next one put on at once) is still seen
            as taken off. Without it only the reader state is watched.
        """
        self.roster = roster
        self.cards = cards
        self.ledger = cards.ledger
        self.manager = manager
        self.reader = reader
        self.operator = operator
        self.journal = journal
        self.ui = ui or BatchUI()
        self.skip_bad = skip_bad
        self.card_timeout = card_timeout
        self.bus = bus
        self._removals = 0
        self._removed = asyncio.Event()
        self._subscribed = asyncio.Event()
        self.results: dict[int, RowResult] = {}
        self.notes: list[str] = []
        self._stopped = False
        self._interrupted = False
        self._checked_leftover = False
        #: a card is being written right now (between reserve and commit)
        self._burning = False
        self._stop_after_burn: Callable[[], None] | None = None

    def request_stop(self, cancel: Callable[[], None]) -> None:
        """Stop the batch (SIGTERM) without cutting a burn short.

        Waiting for a card or for its removal: ``cancel`` (which cancels the task running
        :meth:`run`) is called now. Writing a card: the burn finishes, its result goes into the
        journal and the results, and then ``cancel`` is called.
        """
        self._interrupted = True
        if self._burning:
            self._stop_after_burn = cancel
        else:
            cancel()

    # -- reader state ------------------------------------------------------------------------

    def _card_present(self) -> bool:
        try:
            return self.manager.reader(self.reader).card_present
        except NoReader:
            return False

    async def _wait_card(self, present: bool) -> bool:
        """Wait until a card is (or is not) on the reader; False after ``card_timeout``."""
        chunk = 3600.0 if self.card_timeout is None else self.card_timeout
        while True:
            ok = await self.manager.wait_until(lambda: self._card_present() == present, chunk)
            if ok or self.card_timeout is not None:
                return ok

    async def _watch_removals(self, bus: EventBus) -> None:
        """Count the card removals on our reader (see :meth:`_wait_removed`)."""
        with bus.subscribe() as sub:
            self._subscribed.set()
            async for event in sub:
                if event.data.get("reader") == self.reader and event.type in (
                    "card.removed", "reader.removed"
                ):
                    self._removals += 1
                    self._removed.set()

    async def _wait_removed(self, since: int) -> bool:
        """Wait until the card goes (after removal number ``since``); False after the timeout.

        With the event bus, the removal events are counted as well as the state watched: when
        the operator swaps cards quickly, the state may already show the next card by the time
        it is looked at, and the swap must still count as "taken off".
        """
        if self.bus is None:
            return await self._wait_card(False)
        deadline = None if self.card_timeout is None else monotonic() + self.card_timeout
        while True:
            if self._removals > since or not self._card_present():
                return True
            self._removed.clear()
            left = 3600.0 if deadline is None else deadline - monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._removed.wait(), left)
            except TimeoutError:
                if deadline is not None:
                    return False

    # -- planning ----------------------------------------------------------------------------

    def _last_suffix(self, id_number: str) -> int:
        return max((n.suffix for n in self.ledger.numbers_for(id_number)), default=-1)

    def _reconcile(self, row: RosterRow) -> RowResult | _Todo:
        assert row.id_number is not None
        numbers = self.ledger.numbers_for(row.id_number)
        by_suffix = {n.suffix: n for n in numbers}
        last = self.journal.last_result(row.row)
        if last is not None and last.get("status") in DONE:
            number = by_suffix.get(int(last.get("suffix", -1)))
            if number is not None and number.state not in (NumberState.PENDING, NumberState.VOID):
                return RowResult(
                    row, str(last["status"]), number=number.number,
                    uid=last.get("uid") or number.uid, at=_parse_time(last.get("at")),
                    detail="done in an earlier run",
                )
            self._notice(
                f"row {row.row}: the journal says it was burned, but the ledger does not have "
                "that number; the ledger is the ground truth, so it is burned again"
            )
        pending = next((n for n in numbers if n.state is NumberState.PENDING), None)
        active = next((n for n in numbers if n.state is NumberState.ACTIVE), None)
        first = self.journal.first_attempt(row.row)
        if active is not None and first is not None and active.suffix > int(first.get("last_suffix", 99)):
            return RowResult(
                row, "burned", number=active.number, uid=active.uid, at=active.issued_at,
                detail="burned in an earlier run that stopped before recording it (found in the ledger)",
            )
        if pending is not None:
            return _Todo(row, pending)
        if active is not None and not row.reissue:
            issued = f", issued {active.issued_at.date().isoformat()}" if active.issued_at else ""
            return RowResult(
                row, "failed:already_issued", at=_now(),
                detail=f"already has the working card {mask_id(active.number)}{issued} from "
                "before this batch; mark the row 補發 (reissue) to replace it",
            )
        return _Todo(row)

    def _notice(self, text: str) -> None:
        self.notes.append(text)
        self.ui.on_notice(text)

    def counts(self) -> Counts:
        c = Counts()
        for row in self.roster.rows:
            r = self.results.get(row.row)
            if r is None:
                c.remaining += 1
            elif r.done:
                c.done += 1
            elif r.failed:
                c.failed += 1
            else:
                c.skipped += 1
        return c

    # -- the run -----------------------------------------------------------------------------

    async def run(self) -> BatchReport:
        """Burn every row still to do. Cancellation (Ctrl-C) ends it; see :meth:`report`."""
        roster = self.roster
        if roster.bad and not self.skip_bad:
            raise RosterInvalid(
                f"{roster.path.name} has {len(roster.bad)} bad row(s); fix them, or skip them "
                "explicitly:\n  " + "\n  ".join(describe_problems(roster.bad))
            )
        for row in roster.rows:
            if row.status == "invalid":
                self.results[row.row] = RowResult(row, "invalid", detail="; ".join(row.problems))
            elif row.status == "no_consent":
                said = f" (the consent column says {row.consent_text!r})" if row.consent_text else ""
                self.results[row.row] = RowResult(row, "no_consent", detail="no consent" + said)
        if self.journal.torn:
            self._notice(f"the journal had {self.journal.torn} unreadable line(s) (a crash); ignored")
        runs_before = self.journal.runs
        self.journal.append(
            {
                "t": "run", "roster": roster.path.name, "station": self.cards.station,
                "operator": self.operator, "reader": self.reader, "version": __version__,
            }
        )
        pending: list[_Todo] = []
        todo: list[_Todo] = []
        already = refused = 0
        for row in roster.to_burn:
            got = self._reconcile(row)
            if isinstance(got, RowResult):
                self.results[row.row] = got
                if got.done:
                    already += 1
                else:
                    refused += 1
                    self.journal.append(
                        {"t": "result", "row": row.row, "status": got.status,
                         "code": got.status.removeprefix("failed:"), "detail": got.detail}
                    )
            elif got.pending is not None:
                pending.append(got)
            else:
                todo.append(got)
        queue = pending + todo
        self.ui.on_plan(
            BatchPlan(len(roster.to_burn), already, refused, len(pending), runs_before),
            self.counts(),
        )
        watcher = None
        if self.bus is not None and queue:
            watcher = asyncio.create_task(self._watch_removals(self.bus))
            await self._subscribed.wait()
        try:
            for index, item in enumerate(queue, 1):
                if self._stopped:
                    break
                await self._burn_row(item, index, len(queue))
        except asyncio.CancelledError:
            self._interrupted = True
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        return self.report()

    def report(self) -> BatchReport:
        """The results so far; rows not reached are ``skipped``."""
        results = []
        for row in self.roster.rows:
            r = self.results.get(row.row)
            if r is None:
                why = "interrupted" if self._interrupted else "the batch stopped before this row"
                r = RowResult(row, "skipped", detail=f"not reached ({why}); run the roster again to continue")
            results.append(r)
        return BatchReport(
            self.roster, results, self.journal.path, stopped=self._stopped,
            interrupted=self._interrupted, notes=list(self.notes),
        )

    async def _check_leftover(self, row: RosterRow) -> None:
        """A card already on the reader when the run starts: is it somebody's card?

        After a crash the previous student's finished card may still lie there. Burning onto
        it would be refused anyway (``card_in_use``), but saying so first is kinder.
        """
        def read(conn: Any, cancel: Any) -> CardRecord:
            return self.cards.read(conn, reader=self.reader)

        try:
            found = await self.manager.run(self.reader, read, name="batch.check", wait_if_busy=True)
        except CardError:
            return  # blank, foreign, pulled: the burn will say what is wrong
        number = found.record.number
        entry = found.ledger
        if number is None or number.id_number == row.id_number or entry is None:
            return
        if entry.state in (NumberState.ACTIVE, NumberState.PENDING, NumberState.LOST):
            self._notice(
                f"the card on the reader already carries {number.masked} ({entry.state.value} in "
                "the ledger): take it off and put a new card on"
            )
            await self._await_removal(row, None)

    async def _await_removal(
        self, row: RosterRow, result: RowResult | None, since: int | None = None
    ) -> None:
        """Ask for the card to be taken off and wait for it.

        :param since: the removal count when the card was last known to be on the reader; a
            removal after it (the operator already swapped the card) needs no asking.
        """
        since = self._removals if since is None else since
        if self._removals > since or not self._card_present():
            return
        await self.ui.on_remove(row, result)
        if not await self._wait_removed(since):
            self._stopped = True
            self._notice(
                f"the card was not taken off the reader within {self.card_timeout:g} s; stopping, "
                "so that it is not burned for the next student"
            )

    def _finish(self, result: RowResult) -> RowResult:
        """Record a row's outcome of this run and tell the operator (before the card goes)."""
        self.results[result.row.row] = result
        self.ui.on_result(result, self.counts())
        return result

    async def _burn_row(self, item: _Todo, index: int, total: int) -> RowResult:
        row = item.row
        assert row.id_number is not None
        id_number = row.id_number
        note = ""
        if item.pending is not None:
            note = (
                f"its burn was interrupted on the card with UID {item.pending.uid}: put that card "
                "on the reader to finish it"
            )
        elif row.reissue:
            note = "reissue (補發): the card it replaces stops working"
        self.ui.on_next(row, index, total, note)
        attempt = 0
        while True:
            try:
                if not self._checked_leftover:
                    self._checked_leftover = True
                    if self._card_present():
                        await self._check_leftover(row)
                        if self._stopped:
                            return self._finish(
                                RowResult(row, "skipped", detail="a card was left on the reader")
                            )
                if not self._card_present():
                    await self.ui.on_waiting(row)
                    if not await self._wait_card(True):
                        raise NoCard(f"no card was put on the reader within {self.card_timeout:g} s")
                self.journal.append(
                    {"t": "attempt", "row": row.row, "last_suffix": self._last_suffix(id_number)}
                )

                def burn(conn: Any, cancel: Any) -> BurnOutcome:
                    return self.cards.burn(
                        conn, id_number, reissue=row.reissue, operator=self.operator,
                        reader=self.reader, cancel=cancel,
                    )

                self._burning = True
                try:
                    outcome = await self.manager.run(
                        self.reader, burn, name="batch.burn", wait_if_busy=True
                    )
                finally:
                    self._burning = False
            except CardError as error:
                attempt += 1
                logger.info("batch row %d: %s: %s", row.row, error.code, error.message)
                removals = self._removals
                decision = await self.ui.on_error(row, error, attempt)
                if decision is Decision.RETRY:
                    if error.code in SWAP_CARD_CODES:
                        await self._await_removal(row, None, since=removals)
                        if self._stopped:
                            return self._finish(self._failed(row, error, "stopped"))
                    continue
                if decision is Decision.STOP:
                    self._stopped = True
                    return self._finish(self._failed(row, error, "the batch stopped here"))
                result = self._finish(self._failed(row, error, "skipped by the operator"))
                await self._await_removal(row, result)
                return result
            result = RowResult(
                row, outcome.status, number=outcome.number, uid=outcome.uid.hex().upper(),
                at=_now(), detail=_outcome_detail(outcome),
            )
            self.journal.append(
                {"t": "result", "row": row.row, "status": outcome.status,
                 "suffix": outcome.suffix, "uid": result.uid}
            )
            self._finish(result)
            if self._stop_after_burn is not None:  # SIGTERM came during this burn
                stop, self._stop_after_burn = self._stop_after_burn, None
                stop()
            await self._await_removal(row, result)
            return result

    def _failed(self, row: RosterRow, error: CardError, how: str) -> RowResult:
        result = RowResult(row, f"failed:{error.code}", at=_now(), detail=f"{error.message} ({how})")
        self.journal.append(
            {"t": "result", "row": row.row, "status": result.status, "code": error.code,
             "detail": error.message}
        )
        return result


def _outcome_detail(outcome: BurnOutcome) -> str:
    parts = []
    if outcome.status == "resumed":
        parts.append("an interrupted burn was completed")
    elif outcome.status == "already_done":
        parts.append("the card already carried this number")
    if outcome.superseded:
        parts.append(f"replaces {mask_id(outcome.superseded)}, which stops working")
    return "; ".join(parts)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# -- result sheets -----------------------------------------------------------------------------

RESULT_HEADER = (
    "列 row", "班級 class", "座號 seat", "姓名 name", "借閱證號 library number",
    "卡號 UID hex", "內碼 UID decLE", "狀態 status", "說明 detail", "時間 time",
)  # fmt: skip


def result_rows(report: BatchReport) -> list[list[object]]:
    from cardd.rfid.uid import uid_forms

    rows: list[list[object]] = []
    for r in report.results:
        dec_le = ""
        if r.uid:
            with contextlib.suppress(CardError, ValueError):
                dec_le = uid_forms(bytes.fromhex(r.uid)).dec_le
        at = r.at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if r.at else ""
        rows.append(
            [r.row.row, r.row.klass, r.row.seat, r.row.name, r.number or "", r.uid or "",
             dec_le, r.status, r.detail, at]
        )
    return rows


def _create_private(directory: Path, stem: str, suffix: str) -> tuple[Path, int]:
    """A new file that only the owner can read (O_EXCL: never overwrite earlier results)."""
    for n in range(1, 1000):
        path = directory / (f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.fchmod(fd, 0o600)
        return path, fd
    raise FileExistsError(f"too many result files named {stem} in {directory}")


def write_results(
    report: BatchReport, directory: Path, *, now: datetime | None = None
) -> list[Path]:
    """Write ``<roster stem>_results_<YYYYmmdd-HHMMSS>.csv`` and ``.xlsx`` (mode 0600).

    The CSV is UTF-8 with a BOM, so Excel on a Traditional Chinese Windows opens it as UTF-8.
    Library numbers and UIDs are text cells in the XLSX (a 17-digit decLE would lose digits as a
    number).
    """
    _private_dir(directory)
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    stem = f"{report.roster.path.stem}_results_{stamp}"
    rows = result_rows(report)
    paths = []

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(RESULT_HEADER)
    writer.writerows(rows)
    path, fd = _create_private(directory, stem, ".csv")
    with os.fdopen(fd, "wb") as f:
        f.write(text.getvalue().encode("utf-8-sig"))
        f.flush()
        os.fsync(f.fileno())
    paths.append(path)

    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "results"
    sheet.append(list(RESULT_HEADER))
    for row in rows:
        sheet.append(row)
    sheet.freeze_panes = "A2"
    for letter, width in zip("ABCDEFGHIJ", (6, 8, 6, 10, 16, 16, 20, 20, 60, 20), strict=True):
        sheet.column_dimensions[letter].width = width
    for cells in sheet.iter_rows(min_row=2, min_col=5, max_col=7):
        for cell in cells:
            cell.number_format = "@"
    path, fd = _create_private(directory, stem, ".xlsx")
    with os.fdopen(fd, "wb") as f:
        book.save(f)
        f.flush()
        os.fsync(f.fileno())
    paths.append(path)
    return paths


def summarize(results: Iterable[RowResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        out[r.status] = out.get(r.status, 0) + 1
    return out

