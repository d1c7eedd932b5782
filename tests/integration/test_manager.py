# SPDX-License-Identifier: Apache-2.0
"""The reader manager on the real pcscd: one worker per reader, busy, timeouts, removal, events."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from cardd.errors import CardRemoved, NoCard, OperationTimeout, ReaderBusy
from cardd.events import EventBus
from cardd.readers.manager import ReaderManager
from cardd.readers.pcsc import PcscBackend
from cardd.readers.transport import send_expect
from cardd.readers.types import ReaderKind
from cardd.sim.cards.faults import FaultyCard
from tests.helpers import READER0, READER1, fixture_card

pytestmark = pytest.mark.pcsc

GET_UID = bytes.fromhex("FFCA000000")


@pytest.fixture
async def manager(pcscd):
    bus = EventBus()
    m = ReaderManager([PcscBackend()], bus)
    await m.start()
    assert await m.wait_until(lambda: {READER0, READER1} <= {r.name for r in m.readers()}, 5)
    yield m, bus
    await m.stop()


async def insert(m: ReaderManager, slot, card, reader=READER0):
    slot.insert(card)
    assert await m.wait_until(lambda: m.reader(reader).card_present, 5)


async def test_card_state_identity_and_kind(manager, vreaders):
    m, bus = manager
    with bus.subscribe() as sub:
        await insert(m, vreaders[0], fixture_card("easycard_7b.json"))
        info = m.reader(READER0)
        assert info.identity is not None and info.kind is ReaderKind.CONTACTLESS
        ev = await sub.get(timeout=1)
        while ev.type != "card.inserted":
            ev = await sub.get(timeout=1)
        assert ev.data["reader"] == READER0 and ev.data["cardType"] == "mifare_classic_1k"


async def test_operation_runs_on_worker_and_reports_events(manager, vreaders):
    m, bus = manager
    await insert(m, vreaders[0], fixture_card("easycard_7b.json"))
    seen = []
    with bus.subscribe() as sub:
        uid = await m.run(READER0, lambda conn, cancel: (seen.append(threading.current_thread().name),
                                                         send_expect(conn, GET_UID))[1], name="uid")
        assert uid == bytes.fromhex("04A1B2C3D4E5F6")
        assert seen[0].startswith("cardd-reader[")
        types = [(await sub.get(timeout=1)).type for _ in range(2)]
        assert types == ["operation.started", "operation.finished"]


async def test_second_operation_on_same_reader_is_busy(manager, vreaders):
    m, _ = manager
    await insert(m, vreaders[0], fixture_card("easycard_4b.json"))
    release = threading.Event()

    def slow(conn, cancel):
        release.wait(5)
        return send_expect(conn, GET_UID)

    first = asyncio.create_task(m.run(READER0, slow, name="slow"))
    await asyncio.sleep(0.05)
    assert m.reader(READER0).busy
    with pytest.raises(ReaderBusy):
        await m.run(READER0, lambda c, e: send_expect(c, GET_UID))
    release.set()
    assert await first == bytes.fromhex("93A131C0")
    assert await m.wait_until(lambda: not m.reader(READER0).busy, 2)


async def test_timeout_sets_cancel_and_reader_stays_busy_until_thread_ends(manager, vreaders):
    m, _ = manager
    await insert(m, vreaders[0], fixture_card("easycard_4b.json"))
    cancelled = threading.Event()

    def stubborn(conn, cancel):
        cancel.wait(5)
        cancelled.set()
        time.sleep(0.2)  # an APDU that cannot be interrupted half-way
        return None

    with pytest.raises(OperationTimeout):
        await m.run(READER0, stubborn, timeout=0.1)
    assert await asyncio.to_thread(cancelled.wait, 2)
    assert m.reader(READER0).busy  # still finishing its APDU
    assert await m.wait_until(lambda: not m.reader(READER0).busy, 2)


async def test_card_pulled_mid_operation_gives_card_removed(manager, vreaders):
    m, _ = manager
    card = FaultyCard(fixture_card("classic_1k_blank.json"))
    await insert(m, vreaders[0], card)

    def two_apdus(conn, cancel):
        send_expect(conn, GET_UID)
        card.remove_on_next(1)
        return send_expect(conn, GET_UID)

    started = time.monotonic()
    with pytest.raises(CardRemoved):
        await m.run(READER0, two_apdus, timeout=10)
    assert time.monotonic() - started < 5  # no hang
    assert await m.wait_until(lambda: not m.reader(READER0).card_present, 3)


async def test_mute_card_times_out_and_recovers_after_removal(manager, vreaders):
    m, _ = manager
    card = FaultyCard(fixture_card("easycard_4b.json"))
    await insert(m, vreaders[0], card)
    card.mute_next(1)
    with pytest.raises(OperationTimeout):
        await m.run(READER0, lambda c, e: send_expect(c, GET_UID), timeout=0.5)
    vreaders[0].remove()  # pulling the mute card frees pcscd's blocked transmit
    assert await m.wait_until(lambda: not m.reader(READER0).busy, 5)
    await insert(m, vreaders[0], fixture_card("easycard_7b.json"))
    assert await m.run(READER0, lambda c, e: send_expect(c, GET_UID)) == bytes.fromhex("04A1B2C3D4E5F6")


async def test_pick_reader_rules(manager, vreaders):
    m, _ = manager
    with pytest.raises(NoCard):
        m.pick_reader()
    await insert(m, vreaders[1], fixture_card("desfire.json"), READER1)
    assert m.pick_reader() == READER1
    with pytest.raises(NoCard):
        m.pick_reader(READER0)
