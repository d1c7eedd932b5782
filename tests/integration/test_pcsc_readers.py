# SPDX-License-Identifier: Apache-2.0
"""The reader layer through the real pcscd + vpcd with virtual cards."""

from __future__ import annotations

import threading
import time

import pytest

from cardd.errors import CardRemoved, ReaderBusy
from cardd.readers.identify import CardType, identify
from cardd.readers.pcsc import PcscBackend, PcscWatcher
from cardd.readers.transport import send_expect
from cardd.readers.types import ReaderEventKind
from tests.helpers import READER0, READER1, fixture_card, wait_card

pytestmark = pytest.mark.pcsc


class EventLog:
    def __init__(self) -> None:
        self.events: list = []
        self.cond = threading.Condition()

    def __call__(self, ev) -> None:
        with self.cond:
            self.events.append(ev)
            self.cond.notify_all()

    def wait_for(self, pred, timeout: float = 5.0):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(pred(e) for e in self.events), timeout)
        assert ok, f"event not seen; got {[(e.kind.value, e.reader) for e in self.events]}"
        return next(e for e in self.events if pred(e))

    def kinds(self, reader: str) -> list[str]:
        with self.cond:
            return [e.kind.value for e in self.events if e.reader == reader]


def test_lists_both_virtual_readers(pcscd):
    names = [s.name for s in PcscBackend().snapshot()]
    assert READER0 in names and READER1 in names


@pytest.mark.parametrize(
    ("fixture", "card_type", "contactless"),
    [
        ("easycard_4b.json", CardType.MIFARE_CLASSIC_1K, True),
        ("classic_1k_blank.json", CardType.MIFARE_CLASSIC_1K, True),
        ("classic_4k_blank.json", CardType.MIFARE_CLASSIC_4K, True),
        ("desfire.json", CardType.ISO14443_4, True),
        ("../moica/card.json", CardType.MOICA_GEN1, False),
    ],
)
def test_atr_and_identification_of_each_virtual_card(vreaders, fixture, card_type, contactless):
    card = fixture_card(fixture)
    vreaders[0].insert(card)
    atr = wait_card(READER0, present=True)
    assert atr == card.atr
    ident = identify(atr)
    assert ident.card_type is card_type
    assert ident.contactless is contactless
    status = {s.name: s for s in PcscBackend().snapshot()}[READER0]
    assert status.card_present and status.atr == card.atr


def test_insert_remove_swap_events_in_order(vreaders):
    log = EventLog()
    watcher = PcscWatcher(log)
    watcher.start()
    try:
        log.wait_for(lambda e: e.kind is ReaderEventKind.READER_ADDED and e.reader == READER1)
        a, b = fixture_card("easycard_4b.json"), fixture_card("desfire.json")
        vreaders[1].insert(a)
        log.wait_for(lambda e: e.kind is ReaderEventKind.CARD_INSERTED and e.atr == a.atr)
        vreaders[1].swap(b)
        log.wait_for(lambda e: e.kind is ReaderEventKind.CARD_INSERTED and e.atr == b.atr)
        vreaders[1].remove()
        removed = [e for e in log.events if e.kind is ReaderEventKind.CARD_REMOVED]
        log.wait_for(lambda e: e.kind is ReaderEventKind.CARD_REMOVED and e not in removed)
    finally:
        watcher.stop()
    assert not watcher.alive
    assert log.kinds(READER1) == [
        "reader.added", "card.inserted", "card.removed", "card.inserted", "card.removed",
    ]
    inserted = [e for e in log.events if e.kind is ReaderEventKind.CARD_INSERTED]
    assert [e.atr for e in inserted] == [a.atr, b.atr]
    counters = [e.counter for e in log.events if e.reader == READER1 and e.counter is not None]
    assert counters == sorted(counters) and len(set(counters)) == 4


def test_transmit_and_card_pulled_mid_apdu_gives_card_removed(vreaders):
    from cardd.sim.cards.faults import FaultyCard

    card = FaultyCard(fixture_card("easycard_4b.json"))
    vreaders[0].insert(card)
    wait_card(READER0, present=True)
    with PcscBackend().connect(READER0) as conn:
        assert send_expect(conn, bytes.fromhex("FFCA000000")) == bytes.fromhex("93A131C0")
        card.remove_on_next(1)
        with pytest.raises(CardRemoved):
            conn.send_and_receive(bytes.fromhex("FFCA000000"))


def test_second_exclusive_holder_is_reported_busy(vreaders):
    from cardd.readers.pcsc import PcscContext

    vreaders[0].insert(fixture_card("easycard_4b.json"))
    wait_card(READER0, present=True)
    ctx1, ctx2 = PcscContext(), PcscContext()
    try:
        held = ctx1.connect(READER0, exclusive=True)
        with pytest.raises(ReaderBusy):
            ctx2.connect(READER0)
        held.close()
    finally:
        ctx1.release()
        ctx2.release()


def test_apdu_round_trip_is_fast_enough_to_be_useful(vreaders):
    """Not a timing assertion: proves TCP_NODELAY/QUICKACK are in effect (48 ms per APDU without)."""
    vreaders[0].insert(fixture_card("easycard_4b.json"))
    wait_card(READER0, present=True)
    with PcscBackend().connect(READER0) as conn:
        start = time.perf_counter()
        for _ in range(20):
            conn.send_and_receive(bytes.fromhex("FFCA000000"))
        per_apdu = (time.perf_counter() - start) / 20
    assert per_apdu < 0.040, f"{per_apdu * 1000:.1f} ms per APDU: delayed-ACK stall is back"
