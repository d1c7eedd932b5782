# SPDX-License-Identifier: Apache-2.0
"""Fault suite: SIGTERM during a class batch burn (systemd stop, shutdown, `kill`).

The batch must stop cleanly: the card being written is finished (its APDUs are never cut by
us), the result sheets are written, exit status 143, nothing pending in the ledger, and the
same command afterwards finishes the class without burning anyone twice.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from cardd.rfid.ledger import NumberState
from cardd.sim.cards.faults import FaultyCard
from tests.integration.test_batch import (
    Hands,
    Station,
    finish,
    fresh_card,
    result_sheet,
    start,
    valid_id,
)

pytestmark = pytest.mark.pcsc


def test_sigterm_mid_write_stops_cleanly_and_resumes(vreaders, tmp_path):
    station = Station(tmp_path)
    ids = [valid_id(f"{'PQRSTU'[i]}{1 + i % 2}{2718280 + i:07d}") for i in range(5)]
    lines = ["座號,姓名,身分證字號,同意"]
    lines += [f"{i + 1},學生{i + 1},{ident},是" for i, ident in enumerate(ids)]
    roster = tmp_path / "302.csv"
    roster.write_text("\n".join(lines) + "\n", encoding="utf-8")

    writing = threading.Event()
    made = {"n": 0}

    def make_card():
        made["n"] += 1
        card = fresh_card()
        if made["n"] != 2:
            return card
        slow = FaultyCard(card)

        def on_apdu(apdu: bytes) -> bool:
            if apdu[:2] == b"\xff\xd6" and not writing.is_set():  # the first block write
                slow.delay_next(1.0)  # the next write takes 1 s: SIGTERM lands inside the burn
                writing.set()
            return False

        slow.remove_on_next(on_apdu)
        return slow

    proc = start(station.cmd(roster, "--on-error", "stop"))
    hands = Hands(proc, vreaders[0], make_card)
    hands.start()
    assert writing.wait(30), hands.text
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc, hands, timeout=30)
    assert rc == 143, hands.text + err
    assert "Stopped by SIGTERM" in hands.text
    ledger = station.ledger()
    try:
        assert ledger.check() == []
        assert ledger.pending() == [], "SIGTERM left a burn half done"
        done = [i for i in ids if ledger.active_for(i) is not None]
        assert done == ids[:2], done  # the card being written when the signal came was finished
    finally:
        ledger.close()
    rows, _ = result_sheet(station.results)
    assert [r["狀態 status"] for r in rows][:2] == ["burned", "burned"]

    vreaders[0].remove()
    proc = start(station.cmd(roster, "--on-error", "stop"))
    hands2 = Hands(proc, vreaders[0])
    hands2.start()
    rc, err = finish(proc, hands2, timeout=60)
    assert rc == 0, hands2.text + err
    assert len(hands2.cards) == 3
    ledger = station.ledger()
    try:
        assert ledger.check() == [] and ledger.pending() == []
        for ident in ids:
            [number] = ledger.numbers_for(ident)  # nobody burned twice
            assert number.state is NumberState.ACTIVE and number.suffix == 0
    finally:
        ledger.close()
