# SPDX-License-Identifier: Apache-2.0
"""kill -9 of a burning process at random points, then `ledger resolve`: the ledger invariants hold.

A child process burns numbers in a loop (reissues over a handful of IDs onto one virtual card)
and is SIGKILLed at a random moment, again and again, until at least 200 burns were started.
After every kill the pending numbers are resolved the way `cardd ledger resolve` does, and the
invariants of product.md are checked: at most one active number per ID, the number on the card is
in the ledger, no suffix reused.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from cardd.readers.pcsc import PcscBackend
from cardd.rfid.burn import StudentCards
from cardd.rfid.keys import load_key_file
from cardd.rfid.ledger import NumberState, open_ledger
from cardd.rfid.record import RecordState
from tests.helpers import READER0, fixture_card, wait_card

pytestmark = [pytest.mark.pcsc, pytest.mark.slow, pytest.mark.timeout(900)]

IDS = ["A123456789", "B120000008", "F131104093", "K225300086"]
MIN_BURNS = int(os.environ.get("CARDD_CRASH_BURNS", "200"))

CHILD = r"""
import sys, itertools
from cardd.readers.pcsc import PcscBackend
from cardd.rfid.burn import StudentCards
from cardd.rfid.keys import load_key_file
from cardd.rfid.ledger import open_ledger
from cardd.errors import CardError
keys, ledger_path, reader, ids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
cards = StudentCards(load_key_file(keys), open_ledger(ledger_path), station="crash")
backend = PcscBackend()
for n in itertools.count():
    person = ids[n % len(ids)]
    print("start", person, flush=True)
    try:
        with backend.connect(reader) as conn:
            out = cards.burn(conn, person, reissue=True, operator="crash", reader=reader,
                             confirm_overwrite=True)
        print("ok", out.status, out.number, flush=True)
    except CardError as e:
        print("error", e.code, flush=True)
"""


def resolve(cards: StudentCards) -> Counter[str]:
    """What `cardd ledger resolve` does with the card on the reader."""
    with PcscBackend().connect(READER0) as conn:
        read = cards.read(conn, reader=READER0)
    uid = read.uid.hex().upper()
    done: Counter[str] = Counter()
    for p in cards.ledger.pending():
        if p.uid == uid and read.record.number is not None and str(read.record.number) == p.number:
            cards.ledger.commit(p.number, uid=uid, station="resolve", operator="test")
            done["committed"] += 1
        else:
            cards.ledger.void(p.number, station="resolve", operator="test", reason="resolve")
            done["voided"] += 1
        done[read.record.state.value] += 1
    return done


def check_invariants(cards: StudentCards) -> None:
    records = list(cards.ledger.export())
    active = Counter(r.id_number for r in records if r.state is NumberState.ACTIVE)
    assert all(n == 1 for n in active.values()), active
    assert not [r for r in records if r.state is NumberState.PENDING]
    pairs = [(r.id_number, r.suffix) for r in records]
    assert len(pairs) == len(set(pairs))
    for person in IDS:  # suffixes are handed out in order, none twice, none reused after void
        suffixes = sorted(r.suffix for r in records if r.id_number == person)
        assert suffixes == list(range(len(suffixes))), (person, suffixes)
    with PcscBackend().connect(READER0) as conn:
        read = cards.read(conn, reader=READER0)
    if read.record.state is RecordState.VALID:
        entry = cards.ledger.state(str(read.record.number))
        assert entry is not None, "the number on the card is not in the ledger"
    assert cards.ledger.check() == []


def test_kill_9_at_random_points_then_resolve(vreaders, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text('[student_card]\nsector = 14\nkey_a = "A0A1A2A3A4A5"\nkey_b = "B0B1B2B3B4B5"\n')
    keys.chmod(0o600)
    ledger_path = tmp_path / "ledger.sqlite3"
    vreaders[0].insert(fixture_card("classic_1k_student.json"))
    wait_card(READER0, present=True)
    rng = random.Random(20261123)
    started = finished = rounds = 0
    resolved: Counter[str] = Counter()
    while started < MIN_BURNS:
        rounds += 1
        assert rounds < 400, f"only {started} burns started in {rounds} rounds"
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(keys), str(ledger_path), READER0, ",".join(IDS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        # wait for the child to get going, then kill it at a random point of its work
        first = child.stdout.readline()
        assert first.startswith("start"), first + child.stderr.read()
        time.sleep(rng.uniform(0.0, 0.06))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
        lines = [first, *out.splitlines()]
        started += sum(line.startswith("start") for line in lines)
        finished += sum(line.startswith("ok") for line in lines)
        with open_ledger(ledger_path) as ledger:
            cards = StudentCards(load_key_file(keys), ledger, station="resolve")
            resolved += resolve(cards)
            check_invariants(cards)
    assert finished > 0 and started >= MIN_BURNS
    # the kills did land inside burns: some left a pending number behind
    assert resolved["committed"] + resolved["voided"] > 0, resolved
    print(f"{started} burns started, {finished} completed, {rounds} kills, resolved {dict(resolved)}")
