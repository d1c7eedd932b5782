# SPDX-License-Identifier: Apache-2.0
"""The issuance ledger on PostgreSQL: the whole contract suite, then what only several stations
sharing one server can show (concurrent burns, lock waits, lost connections, migrations racing).

Runs against the private cluster of tests/pg.py; each test gets a fresh database.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cardd import errors as E
from cardd.rfid.ledger import NumberState as S
from cardd.rfid.ledger import open_ledger
from tests.unit.test_ledger_sqlite import ID, OP, ST, LedgerContract, burn, invariants_hold

psycopg = pytest.importorskip("psycopg")

from cardd.rfid.ledger_pg import PgLedger  # noqa: E402


class TestPgLedger(LedgerContract):
    db_errors = (psycopg.Error,)
    backend = PgLedger

    @pytest.fixture
    def target(self, pg_fresh_url: str) -> str:
        return pg_fresh_url

    @pytest.fixture
    def raw(self, target: str) -> Iterator[Callable[[str], Any]]:
        conns: list[Any] = []

        def run(sql: str) -> Any:
            conn = psycopg.connect(target, autocommit=True)
            conns.append(conn)
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description else []

        yield run
        for c in conns:
            c.close()

    # -- PostgreSQL only -------------------------------------------------------------------------

    def test_truncate_is_refused_too(self, led: PgLedger, raw: Callable[[str], Any]) -> None:
        burn(led, ID, reissue=False)
        for table in ("ledger_audit", "ledger_numbers CASCADE", "ledger_ids CASCADE"):
            with pytest.raises(psycopg.Error, match="append-only|never deleted"):
                raw(f"TRUNCATE {table}")
        assert len(led.history(ID)) == 3

    def test_stations_open_a_new_database_at_once(
        self, target: str, raw: Callable[[str], Any]
    ) -> None:
        opened: list[PgLedger] = []
        failures: list[BaseException] = []
        barrier = threading.Barrier(6)

        def station() -> None:
            barrier.wait()
            try:
                opened.append(PgLedger(target))
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=station) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for led in opened:
            led.close()
        assert not failures, failures
        assert raw("SELECT version FROM ledger_schema_version ORDER BY version") == [(1,), (2,)]

    def test_an_id_held_too_long_is_a_conflict(self, make: Callable[..., Any], target: str) -> None:
        led = make(lock_timeout=0.2, max_retries=2)
        burn(led, ID, reissue=False)
        other = make()
        blocker = psycopg.connect(target)  # a station stuck inside a transaction on this ID
        try:
            blocker.execute("SELECT 1 FROM ledger_ids WHERE id_number = %s FOR UPDATE", (ID,))
            t0 = time.monotonic()
            with pytest.raises(E.LedgerConflict) as exc:
                led.reserve(ID, reissue=True, station=ST, operator=OP)
            assert "busy" in str(exc.value) and ID not in str(exc.value)
            assert time.monotonic() - t0 < 5
            # other IDs are not held up, and reads never wait for the lock
            assert burn(other, "B234567890", reissue=False).suffix == 0
            assert led.active_for(ID).suffix == 0
        finally:
            blocker.rollback()
            blocker.close()
        assert led.reserve(ID, reissue=True, station=ST, operator=OP).suffix == 1

    def test_isolation_is_explicit(
        self, make: Callable[..., Any], raw: Callable[[str], Any]
    ) -> None:
        # a database default of SERIALIZABLE does not change the ledger's design ...
        [(dbname,)] = raw("SELECT current_database()")
        raw(f"ALTER DATABASE \"{dbname}\" SET default_transaction_isolation = 'serializable'")
        self._hammer(make, stations=6, burns=20, ids=[ID, "B234567890"])
        led = make()
        assert led._run(lambda tx: tx.row("SHOW transaction_isolation"))[0] == "read committed"
        with pytest.raises(E.ConfigError):
            make(isolation="chaos")

    def test_serializable_is_retried(
        self, make: Callable[..., Any], caplog: pytest.LogCaptureFixture
    ) -> None:
        # ... and SERIALIZABLE, for sites that want it, retries its serialization failures and
        # reports only LedgerConflict when the retries run out.
        caplog.set_level(logging.DEBUG, logger="cardd.rfid.ledger")
        self._hammer(
            lambda: make(isolation="serializable"), stations=6, burns=20, ids=[ID, "B234567890"]
        )
        retried = [r.getMessage() for r in caplog.records if "transient" in r.getMessage()]
        assert any("SerializationFailure" in m for m in retried), retried[:5]
        led = make(isolation="serializable")
        assert led._run(lambda tx: tx.row("SHOW transaction_isolation"))[0] == "serializable"

    @staticmethod
    def _hammer(make: Callable[..., Any], *, stations: int, burns: int, ids: list[str]) -> None:
        failures: list[BaseException] = []

        def station(i: int) -> None:
            led = make()
            rng = random.Random(i)
            try:
                for _ in range(burns):
                    id_number = rng.choice(ids)
                    while True:
                        try:
                            burn(led, id_number, station=f"st-{i}")
                            break
                        except E.LedgerConflict:
                            time.sleep(rng.random() * 0.003)
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        threads = [threading.Thread(target=station, args=(i,)) for i in range(stations)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures
        led = make()
        assert sum(len(led.numbers_for(i)) for i in ids) == stations * burns
        invariants_hold(led, *ids)

    def test_lost_connection_is_unavailable_then_reconnects(
        self, led: PgLedger, raw: Callable[[str], Any]
    ) -> None:
        burn(led, ID, reissue=False)
        raw(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'cardd-ledger'"
        )
        with pytest.raises(E.LedgerUnavailable):
            led.reserve(ID, reissue=True, station=ST, operator=OP)
        assert led.reserve(ID, reissue=True, station=ST, operator=OP).suffix == 1  # reconnected

    def test_unreachable_server_is_unavailable(self, pg_cluster: Any) -> None:
        url = f"postgresql://postgres:s3cret@/nope?host={pg_cluster.dir}&port=1"
        with pytest.raises(E.LedgerUnavailable) as exc:
            open_ledger(url, connect_timeout=2)
        assert exc.value.code == "ledger_unavailable" and "s3cret" not in str(exc.value)


STATIONS, BURNS_PER_STATION, IDS = 8, 200, 20


def test_eight_stations_share_one_ledger(pg_fresh_url: str) -> None:
    """8 stations × 200 burns (reserve → bind_uid → commit, mostly reissues) over 20 shared IDs,
    with abandoned burns and lost cards mixed in. No suffix is duplicated or skipped, every
    transition is in the audit log, at most one number per ID is live, and the losers of each
    race got LedgerConflict and retried."""
    ids = [f"F{100000000 + 7919 * n:09d}" for n in range(IDS)]
    # every ID gets the same number of burns, spread over the stations in random order
    plan = ids * (STATIONS * BURNS_PER_STATION // IDS)
    random.Random(42).shuffle(plan)
    work = [plan[i::STATIONS] for i in range(STATIONS)]

    ops: collections.Counter[str] = collections.Counter()
    voids_per_id: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    failures: list[BaseException] = []
    barrier = threading.Barrier(STATIONS)
    uid_seq = iter(range(0x20000000, 0x30000000))

    def station(i: int) -> None:
        rng = random.Random(i)
        mine: collections.Counter[str] = collections.Counter()
        station_name = f"station-{i}"
        try:
            with PgLedger(pg_fresh_url) as led:
                barrier.wait()
                for id_number in work[i]:
                    while True:
                        try:
                            r = led.reserve(
                                id_number, reissue=True, station=station_name, operator=OP
                            )
                        except E.LedgerConflict:
                            mine["conflict"] += 1
                            time.sleep(rng.random() * 0.002)
                            continue
                        mine["reserve"] += 1
                        with lock:
                            uid = f"{next(uid_seq):08X}"
                        led.bind_uid(r.number, uid)
                        mine["bind"] += 1
                        if rng.random() < 0.04:  # the write failed: abandon, burn again
                            led.void(
                                r.number, station=station_name, operator=OP, reason="write failed"
                            )
                            mine["void"] += 1
                            with lock:
                                voids_per_id[id_number] += 1
                            continue
                        rec = led.commit(r.number, uid=uid, station=station_name, operator=OP)
                        mine["commit"] += 1
                        mine["supersede"] += r.supersedes is not None
                        if rng.random() < 0.04:
                            try:
                                led.report_lost(rec.number, station=station_name, operator=OP)
                                mine["lost"] += 1
                            except E.InvalidTransition:
                                # another station reissued this ID in between: its card is the
                                # live one now, and the ledger says so instead of marking it lost
                                assert led.state(rec.number).state == S.SUPERSEDED
                                mine["lost_too_late"] += 1
                        break
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        with lock:
            ops.update(mine)

    t0 = time.monotonic()
    threads = [
        threading.Thread(target=station, args=(i,), name=f"station-{i}") for i in range(STATIONS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - t0
    assert not failures, failures[:3]
    assert elapsed < 60, f"{elapsed:.1f} s"
    print(f"\n{STATIONS}x{BURNS_PER_STATION} burns in {elapsed:.1f} s: {dict(ops)}")

    assert ops["commit"] == STATIONS * BURNS_PER_STATION
    assert ops["conflict"] > 0, "the stations never collided; the test does not test anything"
    with PgLedger(pg_fresh_url) as led:
        assert led.check() == []
        transitions = sum(
            ops[k] for k in ("reserve", "bind", "commit", "supersede", "void", "lost")
        )
        audit_rows = led._run(lambda tx: tx.row("SELECT count(*) FROM ledger_audit"))[0]
        assert audit_rows == transitions
        counts = led.counts()
        assert counts["pending"] == 0 and counts["void"] == ops["void"]
        assert counts["active"] + counts["lost"] == IDS
        assert sum(counts.values()) == ops["reserve"]
        per_id = STATIONS * BURNS_PER_STATION // IDS
        for id_number in ids:
            recs = led.numbers_for(id_number)
            assert [r.suffix for r in recs] == list(range(len(recs)))  # none skipped, none twice
            assert len(recs) == per_id + voids_per_id[id_number]
            live = [r for r in recs if r.state in (S.ACTIVE, S.LOST)]
            committed = [r for r in recs if r.state != S.VOID]
            assert len(live) == 1 and live[0] == committed[-1]
            assert all(r.state == S.SUPERSEDED for r in committed[:-1])
            assert len({r.uid for r in committed}) == len(committed)
            assert sum(h.to_state == S.ACTIVE for h in led.history(id_number)) == per_id
