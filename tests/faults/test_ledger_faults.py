# SPDX-License-Identifier: Apache-2.0
"""Fault suite, ledger part: PostgreSQL restarted under load, and a full disk under SQLite.

For each fault the ledger either does the operation or refuses it with ``ledger_unavailable``
(never an unexpected exception, never a half-done transition), it works again once the fault
is gone, and its invariants hold (``Ledger.check()`` empty, suffixes contiguous per ID, every
committed burn present).
"""

from __future__ import annotations

import collections
import contextlib
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import cardd.errors as E
from cardd.rfid.ledger import NumberState as S
from cardd.rfid.ledger import SqliteLedger, open_ledger
from tests.pg import PrivatePostgres

OP = "fault-suite"


def _ids(n: int, base: int) -> list[str]:
    return [f"F{base + 7919 * i:09d}" for i in range(n)]


def _assert_consistent(led, committed: dict[str, int]) -> None:
    assert led.check() == []
    for id_number, count in committed.items():
        numbers = led.numbers_for(id_number)
        suffixes = sorted(r.suffix for r in numbers)
        assert suffixes == list(range(len(suffixes))), f"suffix gap or reuse: {suffixes}"
        live = [r for r in numbers if r.state in (S.ACTIVE, S.LOST)]
        assert len(live) <= 1
        done = sum(1 for r in numbers if r.state in (S.ACTIVE, S.SUPERSEDED, S.LOST))
        assert done == count, f"{count} burns committed, ledger shows {done}"


def _burn_loop(led, ids, station, stop, committed, outcomes, lock, uid_seq) -> None:
    """reserve → bind_uid → commit, as a burn does; a refused step is retried as a station
    would retry it (resume the pending number on the same card, or void it)."""
    i = 0
    while not stop.is_set():
        id_number = ids[i % len(ids)]
        i += 1
        try:
            pend = [r for r in led.numbers_for(id_number) if r.state is S.PENDING]
            if pend:  # a burn cut off by the outage: settle it first, as `ledger resolve` does
                led.void(pend[0].number, station=station, operator=OP, reason="outage")
                outcomes["voided"] += 1
                continue
            r = led.reserve(id_number, reissue=True, station=station, operator=OP)
            with lock:
                uid = f"{next(uid_seq):08X}"
            led.bind_uid(r.number, uid)
            led.commit(r.number, uid=uid, station=station, operator=OP)
            with lock:
                committed[id_number] += 1
            outcomes["ok"] += 1
        except E.LedgerUnavailable:
            outcomes["unavailable"] += 1
            time.sleep(0.05)
        except E.LedgerConflict:
            outcomes["conflict"] += 1


@pytest.mark.slow
def test_postgres_restarted_under_load():
    reason = PrivatePostgres.usable()
    if reason:
        pytest.skip(reason)
    with PrivatePostgres() as pg:
        url = pg.create_database("faults")
        ids = _ids(12, 100_000_000)
        committed: collections.Counter[str] = collections.Counter()
        outcomes: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()
        uid_seq = iter(range(0x40000000, 0x50000000))
        stop = threading.Event()
        errors: list[BaseException] = []
        ledgers = [open_ledger(url, connect_timeout=2) for _ in range(4)]

        def station(n: int) -> None:
            try:
                _burn_loop(
                    ledgers[n], ids[n::4], f"station-{n}", stop, committed, outcomes, lock, uid_seq
                )
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=station, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        before = outcomes["ok"]
        pg.stop_server("fast")  # every connection is cut mid-transaction
        time.sleep(2)
        during = outcomes["unavailable"]
        pg.start_server()
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors[:3]
        print(f"\noutcomes: {dict(outcomes)}")
        assert before > 0 and during > 0, dict(outcomes)
        assert outcomes["ok"] > before, "no burn succeeded after the restart"
        # Settle what the outage left pending, then check the whole ledger.
        led = ledgers[0]
        for r in led.pending():
            led.void(r.number, station="fault-suite", operator=OP, reason="outage")
        _assert_consistent(led, committed)
        for x in ledgers:
            x.close()


@contextlib.contextmanager
def _small_tmpfs(size_kib: int):
    """A tmpfs of ``size_kib`` mounted on a new directory (root only), unmounted afterwards."""
    path = Path(tempfile.mkdtemp(prefix="cardd-diskfull-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_sqlite_ledger_on_a_full_disk():
    with _small_tmpfs(4096) as disk:
        led = SqliteLedger(disk / "ledger.sqlite3")
        ids = _ids(400, 200_000_000)
        committed: collections.Counter[str] = collections.Counter()
        refused = 0
        uid = 0x60000000
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # fill the disk to the last block
        try:
            while os.write(fd, b"\0" * 512):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        for id_number in ids[:200]:
            try:
                r = led.reserve(id_number, reissue=False, station="s", operator=OP)
                uid += 1
                led.bind_uid(r.number, f"{uid:08X}")
                led.commit(r.number, uid=f"{uid:08X}", station="s", operator=OP)
                committed[id_number] += 1
            except E.LedgerUnavailable as exc:
                refused += 1
                assert exc.code == "ledger_unavailable"
                assert "Traceback" not in str(exc)
        assert refused > 0, "the disk never filled up"
        # Space comes back (the technician deletes something): everything works again.
        filler.unlink()
        for r in led.pending():
            led.void(r.number, station="s", operator=OP, reason="disk full")
        for id_number in ids[200:210]:
            r = led.reserve(id_number, reissue=False, station="s", operator=OP)
            uid += 1
            led.bind_uid(r.number, f"{uid:08X}")
            led.commit(r.number, uid=f"{uid:08X}", station="s", operator=OP)
            committed[id_number] += 1
        _assert_consistent(led, committed)
        led.close()
        # And the file itself is intact for a fresh process.
        again = SqliteLedger(disk / "ledger.sqlite3")
        assert again.check() == []
        assert sum(again.counts().values()) >= sum(committed.values())
        again.close()
