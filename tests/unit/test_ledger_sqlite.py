# SPDX-License-Identifier: Apache-2.0
"""The issuance ledger on SQLite, and the backend-independent contract suite.

``LedgerContract`` holds every semantic test; ``TestSqliteLedger`` runs it on a file in
``tmp_path`` and tests/integration/test_ledger_pg.py runs the same class on PostgreSQL. A
backend supplies the ``target`` fixture (path or URL), ``raw`` (run SQL around the ledger, for
tests of the database's own guards) and ``db_errors`` (the driver's exception base).
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cardd import errors as E
from cardd.rfid import ledger as L
from cardd.rfid.ledger import NumberState as S
from cardd.rfid.ledger import SqliteLedger, open_ledger

ID = "A123456789"
ID2 = "B234567890"
ST, OP = "station-1", "operator-1"

_uids = itertools.count(0x04000001)


def new_uid() -> str:
    return f"{next(_uids):08X}"


def burn(
    led: Any, id_number: str, *, reissue: bool = True, uid: str | None = None, station: str = ST
) -> Any:
    """reserve → bind_uid → (write, read back) → commit, as the burner does."""
    uid = uid or new_uid()
    r = led.reserve(id_number, reissue=reissue, station=station, operator=OP)
    led.bind_uid(r.number, uid)
    return led.commit(r.number, uid=uid, station=station, operator=OP)


def invariants_hold(led: Any, *ids: str) -> None:
    assert led.check() == []
    for id_number in ids:
        recs = led.numbers_for(id_number)
        suffixes = [r.suffix for r in recs]
        assert len(suffixes) == len(set(suffixes))
        assert sum(r.state == S.PENDING for r in recs) <= 1
        assert sum(r.state in (S.ACTIVE, S.LOST) for r in recs) <= 1


# A child process for the crash and multi-process tests: it opens the ledger by its target.
CHILD = r"""
import sys, time
from cardd import errors as E
from cardd.rfid.ledger import SqlLedger, open_ledger

target, mode, id_number = sys.argv[1:4]
led = open_ledger(target)

def hang(label):
    print(label, flush=True)
    time.sleep(120)

if mode == "after-reserve":
    r = led.reserve(id_number, reissue=True, station="crashing", operator="op")
    led.bind_uid(r.number, "04AABBCC")
    hang(r.number)
elif mode == "mid-reserve":
    orig = SqlLedger._audit
    def audit(self, tx, now, number, *a, **k):
        orig(self, tx, now, number, *a, **k)
        hang(number)  # inside the open transaction, after the INSERT
    SqlLedger._audit = audit
    led.reserve(id_number, reissue=True, station="crashing", operator="op", uid="04AABBCC")
elif mode == "mid-commit":
    r = led.reserve(id_number, reissue=True, station="crashing", operator="op", uid="04AABBCC")
    orig_set = SqlLedger._set_state
    def set_state(self, tx, rec, to, now, **extra):
        orig_set(self, tx, rec, to, now, **extra)
        hang(r.number)  # the previous number is superseded, the new one not yet active
    SqlLedger._set_state = set_state
    led.commit(r.number, uid="04AABBCC", station="crashing", operator="op")
elif mode.startswith("burns:"):
    n, conflicts = int(mode.split(":")[1]), 0
    done = 0
    while done < n:
        try:
            r = led.reserve(id_number, reissue=True, station="proc", operator="op")
        except E.LedgerConflict:
            conflicts += 1
            time.sleep(0.002)
            continue
        uid = "%08X" % (0x10000000 + hash((r.number, time.time_ns())) % 0x0FFFFFFF)
        led.bind_uid(r.number, uid)
        led.commit(r.number, uid=uid, station="proc", operator="op")
        done += 1
    print("done", conflicts, flush=True)
led.close()
"""


def start_child(target: str, mode: str, id_number: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, target, mode, id_number],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def read_line(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        raise AssertionError("child did not answer in time")
    line = proc.stdout.readline().strip()
    if not line:
        proc.wait(5)
        assert proc.stderr is not None
        raise AssertionError(f"child failed: {proc.stderr.read()[-2000:]}")
    return line


def kill_when_ready(target: str, mode: str, id_number: str) -> str:
    proc = start_child(target, mode, id_number)
    try:
        label = read_line(proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return label


class LedgerContract:
    """Semantic tests every backend must pass."""

    db_errors: tuple[type[BaseException], ...] = (Exception,)
    backend: type[L.SqlLedger] = SqliteLedger  # each subclass names its own

    @pytest.fixture
    def make(self, target: str) -> Iterator[Callable[..., Any]]:
        opened: list[Any] = []

        def _open(**options: Any) -> Any:
            led = open_ledger(target, **options)
            opened.append(led)
            return led

        yield _open
        for led in opened:
            led.close()

    @pytest.fixture
    def led(self, make: Callable[..., Any]) -> Any:
        return make()

    # -- issuing -------------------------------------------------------------------------------

    def test_first_issue_is_suffix_00(self, led: Any) -> None:
        assert isinstance(led, L.Ledger)
        r = led.reserve(ID, reissue=False, station=ST, operator=OP)
        assert (r.number, r.id_number, r.suffix, r.supersedes, r.uid) == (
            ID + "00",
            ID,
            0,
            None,
            None,
        )
        assert not r.reissue
        pending = led.state(r.number)
        assert pending.state == S.PENDING and pending.issued_at is None and pending.uid is None
        assert led.active_for(ID) is None
        rec = led.commit(r.number, uid="04a1 b2c3", station=ST, operator=OP)
        assert rec.state == S.ACTIVE and rec.uid == "04A1B2C3" and rec.issued_at is not None
        assert rec.issued_at.tzinfo is not None
        assert led.active_for(ID) == rec == led.state(ID + "00")
        assert led.numbers_for(ID) == [rec]

    def test_reissue_rotates_suffix_and_supersedes(self, led: Any) -> None:
        first = burn(led, ID, reissue=False)
        with pytest.raises(E.AlreadyIssued) as exc:
            led.reserve(ID, reissue=False, station=ST, operator=OP)
        assert exc.value.number == ID + "00" and exc.value.uid == first.uid
        assert exc.value.code == "already_issued" and ID not in str(exc.value)

        r1 = led.reserve(ID, reissue=True, station=ST, operator=OP)
        assert (r1.suffix, r1.supersedes, r1.reissue) == (1, ID + "00", True)
        # the old card keeps working until the new one is verified and committed
        assert led.state(ID + "00").state == S.ACTIVE
        led.commit(r1.number, uid=new_uid(), station=ST, operator=OP)
        assert led.state(ID + "00").state == S.SUPERSEDED
        third = burn(led, ID)
        assert third.number == ID + "02" and third.supersedes == ID + "01"
        assert [(r.suffix, r.state) for r in led.numbers_for(ID)] == [
            (0, S.SUPERSEDED),
            (1, S.SUPERSEDED),
            (2, S.ACTIVE),
        ]
        # reissue=True for an ID without numbers is a first issue
        assert burn(led, ID2, reissue=True).number == ID2 + "00"
        invariants_hold(led, ID, ID2)

    def test_report_lost_then_reissue(self, led: Any) -> None:
        rec = burn(led, ID, reissue=False)
        lost = led.report_lost(rec.number, station="desk", operator="clerk")
        assert lost.state == S.LOST and lost.uid == rec.uid
        assert led.report_lost(rec.number, station="desk", operator="clerk") == lost  # no-op
        assert led.active_for(ID) is None
        # a lost card is reissued without asking for a reissue: reporting it lost was the request
        r = led.reserve(ID, reissue=False, station=ST, operator=OP)
        assert (r.suffix, r.supersedes) == (1, ID + "00")
        assert led.state(rec.number).state == S.LOST  # until the new card is committed
        new = led.commit(r.number, uid=new_uid(), station=ST, operator=OP)
        assert new.state == S.ACTIVE
        assert led.state(rec.number).state == S.SUPERSEDED
        with pytest.raises(E.InvalidTransition):
            led.report_lost(rec.number, station="desk", operator="clerk")  # superseded
        r2 = led.reserve(ID, reissue=True, station=ST, operator=OP)
        with pytest.raises(E.InvalidTransition):
            led.report_lost(r2.number, station="desk", operator="clerk")  # pending
        # the active card may be reported lost while its replacement is being burned
        led.report_lost(new.number, station="desk", operator="clerk")
        led.commit(r2.number, uid=new_uid(), station=ST, operator=OP)
        assert [r.state for r in led.numbers_for(ID)] == [S.SUPERSEDED, S.SUPERSEDED, S.ACTIVE]
        invariants_hold(led, ID)

    def test_suffix_99_cannot_be_followed(self, led: Any) -> None:
        for n in range(100):
            rec = burn(led, ID, reissue=n > 0)
        assert rec.number == ID + "99"
        with pytest.raises(E.SuffixExhausted) as exc:
            led.reserve(ID, reissue=True, station=ST, operator=OP)
        assert exc.value.code == "suffix_exhausted"
        assert "99" in str(exc.value) and ID not in str(exc.value)
        assert led.active_for(ID).number == ID + "99"  # nothing changed
        assert led.counts() == {"pending": 0, "active": 1, "superseded": 99, "lost": 0, "void": 0}
        with pytest.raises(E.InvalidInput):
            L.library_number(ID, 100)

    def test_void_keeps_the_suffix_used(self, led: Any) -> None:
        r = led.reserve(ID, reissue=False, station=ST, operator=OP)
        v = led.void(r.number, station=ST, operator=OP, reason="card jammed")
        assert v.state == S.VOID and v.issued_at is None
        assert led.void(r.number, station=ST, operator=OP, reason="again") == v  # no-op
        with pytest.raises(E.InvalidTransition):
            led.commit(r.number, uid=new_uid(), station=ST, operator=OP)
        first = burn(led, ID, reissue=False)
        assert first.suffix == 1  # 00 was used by the abandoned burn
        r2 = led.reserve(ID, reissue=True, station=ST, operator=OP)
        led.void(r2.number, station=ST, operator=OP, reason="write failed")
        assert led.state(first.number).state == S.ACTIVE  # the abandoned reissue changed nothing
        assert burn(led, ID).suffix == 3
        with pytest.raises(E.InvalidTransition):
            led.void(first.number, station=ST, operator=OP, reason="not pending")
        assert [r.state for r in led.numbers_for(ID)] == [S.VOID, S.SUPERSEDED, S.VOID, S.ACTIVE]
        assert led.history(r2.number)[-1].detail == "write failed"
        invariants_hold(led, ID)

    def test_pending_burn_blocks_a_second_reservation(self, led: Any) -> None:
        burn(led, ID, reissue=False)
        r = led.reserve(ID, reissue=True, station=ST, operator=OP, uid="04112233")
        for reissue in (True, False):
            with pytest.raises(E.BurnPending) as exc:
                led.reserve(ID, reissue=reissue, station="station-2", operator="other")
            assert isinstance(exc.value, E.LedgerConflict)
            assert (exc.value.number, exc.value.uid) == (r.number, "04112233")
            assert exc.value.code == "burn_pending" and ID not in str(exc.value)
        assert [p.number for p in led.pending()] == [r.number]
        led.void(r.number, station=ST, operator=OP, reason="cancelled")
        assert led.reserve(ID, reissue=True, station="station-2", operator="other").suffix == 2

    def test_commit_is_idempotent_and_bound_to_one_card(self, led: Any) -> None:
        r = led.reserve(ID, reissue=False, station=ST, operator=OP)
        assert led.bind_uid(r.number, "04AABBCC").uid == "04AABBCC"
        assert led.bind_uid(r.number, "04:aa:bb:cc").uid == "04AABBCC"  # same card: no-op
        with pytest.raises(E.UidMismatch) as exc:
            led.bind_uid(r.number, "04DDEEFF")
        assert (exc.value.expected, exc.value.got) == ("04AABBCC", "04DDEEFF")
        with pytest.raises(E.UidMismatch):
            led.resume(r.number, "04DDEEFF")
        with pytest.raises(E.UidMismatch):
            led.commit(r.number, uid="04DDEEFF", station=ST, operator=OP)
        assert led.state(r.number).state == S.PENDING
        rec = led.commit(r.number, uid="04AABBCC", station=ST, operator=OP)
        audit_len = len(led.history(ID))
        again = led.commit(r.number, uid="04AABBCC", station=ST, operator=OP)
        assert again == rec and len(led.history(ID)) == audit_len  # nothing new recorded
        with pytest.raises(E.UidMismatch):
            led.commit(r.number, uid="04DDEEFF", station=ST, operator=OP)
        with pytest.raises(E.InvalidTransition):
            led.bind_uid(r.number, "04AABBCC")  # not pending any more
        with pytest.raises(E.UnknownNumber):
            led.commit(ID2 + "00", uid="04AABBCC", station=ST, operator=OP)
        with pytest.raises(E.UnknownNumber):
            led.commit(ID + "07", uid="04AABBCC", station=ST, operator=OP)

    def test_resume_only_on_the_same_card(self, led: Any) -> None:
        r = led.reserve(ID, reissue=False, station=ST, operator=OP)
        resumed = led.resume(r.number, "04010203", station="station-2", operator="op-2")
        assert resumed.uid == "04010203"  # no card was bound yet: this one is now
        assert led.resume(r.number, "04010203").number == r.number
        with pytest.raises(E.UidMismatch):
            led.resume(r.number, "04999999")
        hist = led.history(r.number)
        assert [h.detail for h in hist[1:]] == ["burn resumed; card UID bound", "burn resumed"]
        assert hist[1].station == "station-2" and hist[2].station == ST  # defaults to the reserver

    def test_audit_log_has_every_transition(self, led: Any) -> None:
        a = burn(led, ID, reissue=False, station="s-a")
        led.report_lost(a.number, station="s-lost", operator="clerk")
        r = led.reserve(ID, reissue=False, station="s-b", operator="op-b")
        led.void(r.number, station="s-b", operator="op-b", reason="card removed")
        c = burn(led, ID, station="s-c")
        got = [(h.number[-2:], h.from_state, h.to_state, h.station) for h in led.history(ID)]
        assert got == [
            ("00", None, S.PENDING, "s-a"),
            ("00", S.PENDING, S.PENDING, "s-a"),  # card UID bound
            ("00", S.PENDING, S.ACTIVE, "s-a"),
            ("00", S.ACTIVE, S.LOST, "s-lost"),
            ("01", None, S.PENDING, "s-b"),
            ("01", S.PENDING, S.VOID, "s-b"),
            ("02", None, S.PENDING, "s-c"),
            ("02", S.PENDING, S.PENDING, "s-c"),
            ("00", S.LOST, S.SUPERSEDED, "s-c"),
            ("02", S.PENDING, S.ACTIVE, "s-c"),
        ]
        hist = led.history(ID)
        assert [h.seq for h in hist] == sorted(h.seq for h in hist)
        assert all(h.at.tzinfo is not None and h.operator for h in hist)
        assert hist[3].operator == "clerk" and hist[5].detail == "card removed"
        assert hist[-1].uid == c.uid
        assert [h.to_state for h in led.history(a.number)] == [
            S.PENDING,
            S.PENDING,
            S.ACTIVE,
            S.LOST,
            S.SUPERSEDED,
        ]
        assert led.history(ID2) == []

    def test_audit_log_refuses_update_and_delete(self, led: Any, raw: Callable[[str], Any]) -> None:
        burn(led, ID, reissue=False)
        before = led.history(ID)
        for sql in (
            "UPDATE ledger_audit SET station = 'forged'",
            "DELETE FROM ledger_audit",
            "DELETE FROM ledger_numbers",
            "DELETE FROM ledger_ids",
        ):
            with pytest.raises(self.db_errors, match="append-only|never deleted"):
                raw(sql)
        assert led.history(ID) == before

    def test_database_enforces_the_rules_on_its_own(
        self, led: Any, raw: Callable[[str], Any]
    ) -> None:
        burn(led, ID, reissue=False)
        r = led.reserve(ID, reissue=True, station=ST, operator=OP, uid="04AABBCC")
        cols = "number, id_number, suffix, state, station, operator, reserved_at, updated_at"
        vals = "'2000-01-01T00:00:00+00:00', '2000-01-01T00:00:00+00:00'"
        refused = [
            # a second pending number for the ID (the suffix is new, so only the index stops it)
            f"INSERT INTO ledger_numbers ({cols}) VALUES ('{ID}05', '{ID}', 5, 'pending', 'x', 'x', {vals})",
            # a suffix used twice
            f"INSERT INTO ledger_numbers ({cols}) VALUES ('{ID}01', '{ID}', 1, 'void', 'x', 'x', {vals})",
            # a number that is not ID + suffix
            f"INSERT INTO ledger_numbers ({cols}) VALUES ('{ID}07', '{ID}', 6, 'void', 'x', 'x', {vals})",
            # two live numbers: the pending one activated without superseding the active one
            f"UPDATE ledger_numbers SET state = 'active', issued_at = updated_at WHERE number = '{r.number}'",
            # illegal transitions and rewrites
            f"UPDATE ledger_numbers SET state = 'pending' WHERE number = '{ID}00'",
            f"UPDATE ledger_numbers SET uid = '04DDEEFF' WHERE number = '{r.number}'",
            f"UPDATE ledger_numbers SET suffix = 9, number = '{ID}09' WHERE number = '{r.number}'",
            f"UPDATE ledger_ids SET last_suffix = 0 WHERE id_number = '{ID}'",
        ]
        for sql in refused:
            with pytest.raises(self.db_errors):
                raw(sql)
        invariants_hold(led, ID)
        assert led.state(r.number).uid == "04AABBCC"

    def test_reads(self, led: Any) -> None:
        a = burn(led, ID, reissue=False, uid="04000AAA")
        b = burn(led, ID, uid="04000BBB")
        c = burn(led, ID2, reissue=False, uid="04000AAA")  # the same card reused for another ID
        p = led.reserve(ID2, reissue=True, station=ST, operator=OP, uid="04000CCC")
        assert [r.number for r in led.find_by_uid("04000aaa")] == [a.number, c.number]
        assert [r.number for r in led.find_by_uid("04000CCC")] == [p.number]
        assert led.find_by_uid("0400FFFF") == []
        assert [r.number for r in led.pending()] == [p.number]
        assert [r.number for r in led.export()] == [a.number, b.number, c.number, p.number]
        assert [r.number for r in led.export(batch=1)] == [a.number, b.number, c.number, p.number]
        assert led.counts() == {"pending": 1, "active": 2, "superseded": 1, "lost": 0, "void": 0}
        assert led.state(ID + "42") is None
        assert led.numbers_for("C123456789") == [] and led.active_for("C123456789") is None
        assert led.history(b.number)[0].number == b.number
        for bad in (
            lambda: led.state("A1234"),
            lambda: led.numbers_for("a123456789"),
            lambda: led.find_by_uid("xyz"),
            lambda: led.history("nope"),
            lambda: led.reserve(ID, reissue=True, station="", operator=OP),
        ):
            with pytest.raises(E.InvalidInput):
                bad()
        assert "A12*****89" in repr(a) and ID not in repr(a) and ID not in repr(led.history(ID))

    def test_logs_and_errors_never_carry_a_full_id(
        self, led: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        rec = burn(led, ID, reissue=False)
        led.report_lost(rec.number, station=ST, operator=OP)
        r = led.reserve(ID, reissue=False, station=ST, operator=OP)
        led.resume(r.number, "04ABCDEF")
        led.void(r.number, station=ST, operator=OP, reason="test")
        errors: list[Exception] = []
        for op in (
            lambda: (
                led.reserve(ID, reissue=True, station=ST, operator=OP)
                and led.reserve(ID, reissue=True, station=ST, operator=OP)
            ),
            lambda: led.commit(rec.number, uid="04999999", station=ST, operator=OP),
            lambda: led.void(rec.number, station=ST, operator=OP, reason="x"),
            lambda: led.commit(ID2 + "00", uid="04999999", station=ST, operator=OP),
        ):
            with pytest.raises(E.CardError) as exc:
                op()
            errors.append(exc.value)
        assert caplog.records, "the ledger logs its transitions"
        for text in [r.getMessage() for r in caplog.records] + [str(e) for e in errors]:
            assert ID not in text and ID2 not in text, text

    # -- crashes ---------------------------------------------------------------------------------

    def test_crash_between_reserve_and_commit(self, make: Callable[..., Any], target: str) -> None:
        led = make()
        old = burn(led, ID, reissue=False)
        number = kill_when_ready(target, "after-reserve", ID)
        assert number == ID + "01"
        led2 = make()
        [p] = led2.pending()
        assert (p.number, p.uid, p.station) == (number, "04AABBCC", "crashing")
        assert led2.state(old.number).state == S.ACTIVE  # the patron's card still works
        invariants_hold(led2, ID)
        with pytest.raises(E.BurnPending) as exc:
            led2.reserve(ID, reissue=True, station=ST, operator=OP)
        assert (exc.value.number, exc.value.uid) == (number, "04AABBCC")
        with pytest.raises(E.UidMismatch):  # never handed to a second card
            led2.resume(number, "04DDDDDD", station=ST, operator=OP)
        assert led2.resume(number, "04AABBCC", station=ST, operator=OP).supersedes == old.number
        rec = led2.commit(number, uid="04AABBCC", station=ST, operator=OP)
        assert rec.state == S.ACTIVE and led2.state(old.number).state == S.SUPERSEDED
        # the same crash, resolved the other way: void, and the suffix stays used
        number2 = kill_when_ready(target, "after-reserve", ID)
        assert number2 == ID + "02"
        led3 = make()
        led3.void(number2, station=ST, operator=OP, reason="card gone after a crash")
        assert led3.active_for(ID).number == number
        assert burn(led3, ID).suffix == 3
        invariants_hold(led3, ID)

    def test_crash_inside_a_transaction_rolls_back(
        self, make: Callable[..., Any], target: str
    ) -> None:
        led = make()
        old = burn(led, ID, reissue=False)
        # killed inside reserve's transaction: nothing happened, the lock is gone
        assert kill_when_ready(target, "mid-reserve", ID) == ID + "01"
        led2 = make()
        assert led2.pending() == [] and led2.state(ID + "01") is None
        invariants_hold(led2, ID)
        # killed inside commit's transaction after superseding the old number: all rolled back
        assert kill_when_ready(target, "mid-commit", ID) == ID + "01"
        led3 = make()
        assert led3.state(old.number).state == S.ACTIVE
        assert led3.state(ID + "01").state == S.PENDING
        invariants_hold(led3, ID)
        t0 = time.monotonic()
        rec = led3.commit(ID + "01", uid="04AABBCC", station=ST, operator=OP)
        assert time.monotonic() - t0 < 5  # no lock left behind by the dead process
        assert rec.state == S.ACTIVE and led3.state(old.number).state == S.SUPERSEDED
        invariants_hold(led3, ID)

    # -- schema ----------------------------------------------------------------------------------

    def test_migrations_run_once(self, make: Callable[..., Any], raw: Callable[[str], Any]) -> None:
        led = make()
        latest = L.latest_version(type(led).MIGRATIONS)
        assert led.schema_version() == latest == 2
        burn(led, ID, reissue=False)
        led.close()
        again = make()
        assert again.schema_version() == latest
        assert [
            tuple(r) for r in raw("SELECT version FROM ledger_schema_version ORDER BY version")
        ] == [(1,), (2,)]
        assert again.active_for(ID).suffix == 0

    def test_older_schema_is_upgraded(
        self, target: str, raw: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with monkeypatch.context() as m:
            # a database created by a cardd that knew only migration 1
            m.setattr(self.backend, "MIGRATIONS", self.backend.MIGRATIONS[:1])
            with open_ledger(target) as old:
                assert old.schema_version() == 1
                burn(old, ID, reissue=False)
                raw("UPDATE ledger_audit SET detail = 'no trigger yet'")
        with open_ledger(target) as new:
            assert new.schema_version() == 2
            assert new.active_for(ID).suffix == 0
            assert {h.detail for h in new.history(ID)} == {"no trigger yet"}
        with pytest.raises(self.db_errors, match="append-only"):
            raw("DELETE FROM ledger_audit")

    def test_newer_schema_is_refused(
        self, make: Callable[..., Any], led: Any, raw: Callable[[str], Any]
    ) -> None:
        burn(led, ID, reissue=False)
        led.close()
        raw(
            "INSERT INTO ledger_schema_version (version, description, applied_at)"
            " VALUES (99, 'from the future', '2099-01-01T00:00:00+00:00')"
        )
        with pytest.raises(E.LedgerSchemaTooNew) as exc:
            make()
        assert (
            isinstance(exc.value, E.LedgerUnavailable) and exc.value.code == "ledger_schema_too_new"
        )
        assert "99" in str(exc.value)

    # -- concurrency -----------------------------------------------------------------------------

    def test_threads_reissuing_one_id_never_duplicate(self, make: Callable[..., Any]) -> None:
        stations, burns = 4, 12
        conflicts = [0] * stations
        failures: list[BaseException] = []
        barrier = threading.Barrier(stations)

        def station(i: int) -> None:
            led = make()
            barrier.wait()
            try:
                done = 0
                while done < burns:
                    try:
                        burn(led, ID, station=f"station-{i}")
                        done += 1
                    except E.LedgerConflict:
                        conflicts[i] += 1
                        time.sleep(0.001)
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=station, args=(i,)) for i in range(stations)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures
        led = make()
        recs = led.numbers_for(ID)
        assert [r.suffix for r in recs] == list(range(stations * burns))
        assert [r.state for r in recs] == [S.SUPERSEDED] * (stations * burns - 1) + [S.ACTIVE]
        assert len({r.uid for r in recs}) == len(recs)
        invariants_hold(led, ID)


class TestSqliteLedger(LedgerContract):
    db_errors = (sqlite3.DatabaseError,)
    backend = SqliteLedger

    @pytest.fixture
    def target(self, tmp_path: Path) -> str:
        return str(tmp_path / "state" / "ledger.sqlite3")

    @pytest.fixture
    def raw(self, target: str) -> Iterator[Callable[[str], Any]]:
        conns: list[sqlite3.Connection] = []

        def run(sql: str) -> Any:
            conn = sqlite3.connect(target, isolation_level=None)
            conns.append(conn)
            return conn.execute(sql).fetchall()

        yield run
        for c in conns:
            c.close()

    # -- SQLite only -----------------------------------------------------------------------------

    def test_file_settings(self, led: SqliteLedger, target: str) -> None:
        assert stat.S_IMODE(os.stat(target).st_mode) == 0o600  # it holds national ID numbers
        conn = led._conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10000

    def test_open_ledger_targets(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        with open_ledger(tmp_path / "a.sqlite3") as a:
            assert isinstance(a, SqliteLedger) and a.path == tmp_path / "a.sqlite3"
        with open_ledger(f"sqlite://{tmp_path}/b.sqlite3") as b:
            assert b.path == tmp_path / "b.sqlite3"
        (tmp_path / "dir").mkdir()
        with open_ledger(tmp_path / "dir") as c:
            assert c.path == tmp_path / "dir" / "ledger.sqlite3"
        monkeypatch.setenv("CARDD_STATE_DIR", str(tmp_path / "state"))
        with open_ledger() as d:
            assert d.path == tmp_path / "state" / "ledger.sqlite3"
        for bad in ("mysql://x/y", "sqlite:relative.db"):
            with pytest.raises(E.ConfigError):
                open_ledger(bad)
        (tmp_path / "junk").write_bytes(b"this is not a database" * 100)
        with pytest.raises(E.LedgerUnavailable):
            open_ledger(tmp_path / "junk")

    def test_closed_ledger_says_so(self, led: SqliteLedger) -> None:
        led.close()
        with pytest.raises(E.LedgerUnavailable):
            led.counts()

    def test_busy_database_is_retried_then_a_conflict(self, target: str) -> None:
        with open_ledger(target, busy_timeout=0.05, max_retries=2) as led:
            blocker = sqlite3.connect(target, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                t0 = time.monotonic()
                with pytest.raises(E.LedgerConflict):
                    led.reserve(ID, reissue=False, station=ST, operator=OP)
                assert time.monotonic() - t0 < 5
                assert led.counts()["pending"] == 0  # reads are not blocked (WAL)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            assert led.reserve(ID, reissue=False, station=ST, operator=OP).suffix == 0

    def test_processes_reissuing_one_id_never_duplicate(self, target: str) -> None:
        with open_ledger(target) as led:
            burn(led, ID, reissue=False)
        procs = [start_child(target, "burns:15", ID) for _ in range(4)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
            assert out.startswith("done")
        with open_ledger(target) as led:
            recs = led.numbers_for(ID)
            assert [r.suffix for r in recs] == list(range(61))
            assert [r.state for r in recs].count(S.ACTIVE) == 1 and recs[-1].state == S.ACTIVE
            assert len(led.history(ID)) == 61 * 3 + 60  # reserve, bind, commit; 60 supersedes
            invariants_hold(led, ID)


def test_helpers() -> None:
    assert L.mask("A123456789") == "A12*****89" and L.mask("A12345678901") == "A12*****8901"
    assert L.library_number(ID, 7) == ID + "07" and L.split_number(ID + "07") == (ID, 7)
    assert L.normalize_uid("04 a1-b2:c3") == "04A1B2C3"
    for bad in ("04A1B2", "XYZ12345", "04A1B2C"):
        with pytest.raises(E.InvalidInput):
            L.normalize_uid(bad)
    for bad in ("A12345678", "a123456789", "1234567890"):
        with pytest.raises(E.InvalidInput):
            L.check_id_number(bad)
    assert ("pending", "active") in {(a and a.value, b.value) for a, b in L.TRANSITIONS}
