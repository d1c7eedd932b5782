# SPDX-License-Identifier: Apache-2.0
"""Burning library numbers into virtual MIFARE Classic cards through the real pcscd."""

from __future__ import annotations

import os
import threading

import pytest

from cardd.errors import (
    AlreadyIssued,
    BurnPending,
    CardInUse,
    CardNotPersonalized,
    CardRemoved,
    IdNumberInvalid,
    SuffixExhausted,
)
from cardd.readers.pcsc import PcscBackend
from cardd.rfid.burn import StudentCards
from cardd.rfid.keys import load_key_file
from cardd.rfid.ledger import NumberState, open_ledger
from cardd.rfid.record import RecordState
from cardd.sim.cards.faults import FaultyCard
from cardd.sim.cards.mifare import MifareClassic
from tests.helpers import READER0, fixture_card, wait_card

pytestmark = pytest.mark.pcsc

KEYS = """[student_card]
sector = 14
key_a = "A0A1A2A3A4A5"
key_b = "B0B1B2B3B4B5"
"""
PERSON, OTHER = "A123456789", "B120000008"


@pytest.fixture
def cards(tmp_path):
    key_file = tmp_path / "keys.toml"
    key_file.write_text(KEYS)
    os.chmod(key_file, 0o600)
    ledger = open_ledger(tmp_path / "ledger.sqlite3")
    yield StudentCards(load_key_file(key_file), ledger, station="desk-1")
    ledger.close()


def put(vreaders, card, slot=0):
    if vreaders[slot].card is not None:
        vreaders[slot].remove()
        wait_card(READER0, present=False)
    vreaders[slot].insert(card)
    wait_card(READER0, present=True)
    return card


def student(uid="93A131C0"):
    base = fixture_card("classic_1k_student.json")
    return MifareClassic(bytes.fromhex(uid), base.dump()) if uid != "93A131C0" else base


def test_first_issue_reissue_and_superseded_old_card(cards, vreaders):
    old = put(vreaders, student())
    with PcscBackend().connect(READER0) as conn:
        first = cards.burn(conn, PERSON, operator="alice", reader=READER0)
    assert (first.status, first.number, first.superseded) == ("burned", PERSON + "00", None)
    assert first.apdus <= 9
    with PcscBackend().connect(READER0) as conn:
        again = cards.burn(conn, PERSON, operator="alice", reader=READER0)
        assert again.status == "already_done"
    new = put(vreaders, student("04112233"))
    with PcscBackend().connect(READER0) as conn:
        with pytest.raises(AlreadyIssued):
            cards.burn(conn, PERSON, operator="alice", reader=READER0)
        second = cards.burn(conn, PERSON, reissue=True, operator="alice", reader=READER0)
        assert second.apdus == 8  # key already in the reader, no record on the new card
    assert (second.number, second.superseded) == (PERSON + "01", PERSON + "00")
    put(vreaders, old)
    with PcscBackend().connect(READER0) as conn:
        read = cards.read(conn, reader=READER0)
    assert read.record.state is RecordState.VALID and str(read.record.number) == PERSON + "00"
    assert read.ledger is not None and read.ledger.state is NumberState.SUPERSEDED
    put(vreaders, new)
    cards.report_lost(PERSON + "01", operator="bob")
    third = put(vreaders, student("04445566"))
    with PcscBackend().connect(READER0) as conn:
        out = cards.burn(conn, PERSON, operator="bob", reader=READER0)  # lost → reissue
    assert out.number == PERSON + "02" and third.block(56)[3:15] == (PERSON + "02").encode()


def test_suffix_99_cannot_be_followed(cards, vreaders, tmp_path):
    put(vreaders, student())
    for suffix in range(100):
        r = cards.ledger.reserve(OTHER, reissue=True, station="s", operator="o")
        cards.ledger.void(r.number, station="s", operator="o", reason="test")
    with PcscBackend().connect(READER0) as conn, pytest.raises(SuffixExhausted):
        cards.burn(conn, OTHER, reissue=True, operator="o", reader=READER0)


@pytest.mark.parametrize("bad", ["A123456788", "A12345678", "a1234567890", "Z323456789x", ""])
def test_bad_id_numbers_refused_before_touching_the_card(cards, vreaders, bad):
    card = put(vreaders, FaultyCard(student()))
    with PcscBackend().connect(READER0) as conn, pytest.raises(IdNumberInvalid):
        cards.burn(conn, bad, operator="o", reader=READER0)
    assert vreaders[0].link.apdu_count == 0 and card is not None


def test_card_of_another_person_needs_confirmation(cards, vreaders):
    put(vreaders, student())
    with PcscBackend().connect(READER0) as conn:
        cards.burn(conn, OTHER, operator="o", reader=READER0)
        with pytest.raises(CardInUse):
            cards.burn(conn, PERSON, operator="o", reader=READER0)
        out = cards.burn(conn, PERSON, operator="o", reader=READER0, confirm_overwrite=True)
    assert out.number == PERSON + "00"


def test_blank_card_needs_personalization_then_burns(cards, vreaders):
    blank = put(vreaders, fixture_card("classic_1k_blank.json"))
    with PcscBackend().connect(READER0) as conn:
        with pytest.raises(CardNotPersonalized):
            cards.burn(conn, PERSON, operator="o", reader=READER0)
        cards.personalize(conn, reader=READER0)
    assert blank.access_conditions(14) is not None
    with PcscBackend().connect(READER0) as conn:
        assert cards.burn(conn, PERSON, operator="o", reader=READER0).status == "burned"


def test_card_pulled_between_block_writes_then_retry_completes(cards, vreaders):
    card = FaultyCard(student())
    put(vreaders, card)
    writes = {"n": 0}

    def crc_block_write(apdu: bytes) -> bool:
        # WRITE_ORDER is (2, 0, 1): the third write is block 1 with the CRC, after block 0 landed
        if apdu[:2] == b"\xff\xd6":
            writes["n"] += 1
            return writes["n"] == 3
        return False

    card.remove_on_next(crc_block_write)
    with PcscBackend().connect(READER0) as conn, pytest.raises(CardRemoved):
        cards.burn(conn, PERSON, operator="o", reader=READER0)
    [pending] = cards.ledger.pending()
    assert pending.number == PERSON + "00" and pending.uid == "93A131C0"
    put(vreaders, card)  # the same card back on the reader
    with PcscBackend().connect(READER0) as conn:
        assert cards.read(conn, reader=READER0).record.state is RecordState.CORRUPT
        out = cards.burn(conn, PERSON, operator="o", reader=READER0)
    assert (out.status, out.number) == ("resumed", PERSON + "00")
    assert cards.ledger.state(PERSON + "00").state is NumberState.ACTIVE


def test_card_swapped_mid_burn_is_not_given_the_pending_number(cards, vreaders):
    card = FaultyCard(student())
    put(vreaders, card)
    card.remove_on_next(lambda apdu: apdu[:2] == b"\xff\xd6")
    with PcscBackend().connect(READER0) as conn, pytest.raises(CardRemoved):
        cards.burn(conn, PERSON, operator="o", reader=READER0)
    put(vreaders, student("04778899"))  # someone puts another card down
    with PcscBackend().connect(READER0) as conn, pytest.raises(BurnPending) as e:
        cards.burn(conn, PERSON, operator="o", reader=READER0)
    assert "93A131C0" in str(e.value)
    assert cards.ledger.state(PERSON + "00").state is NumberState.PENDING


def test_wrong_keys_report_not_personalized(cards, vreaders, tmp_path):
    key_file = tmp_path / "wrong.toml"
    key_file.write_text(KEYS.replace("B0B1B2B3B4B5", "B0B1B2B3B4B6"))
    os.chmod(key_file, 0o600)
    wrong = StudentCards(load_key_file(key_file), cards.ledger, station="desk-2")
    put(vreaders, student())
    with PcscBackend().connect(READER0) as conn, pytest.raises(CardNotPersonalized):
        wrong.burn(conn, PERSON, operator="o", reader=READER0)
    assert cards.ledger.pending() == []  # nothing reserved for a card we cannot write


def test_cancel_before_write_leaves_pending(cards, vreaders):
    put(vreaders, student())
    cancel = threading.Event()
    cancel.set()
    with PcscBackend().connect(READER0) as conn, pytest.raises(Exception) as e:
        cards.burn(conn, PERSON, operator="o", reader=READER0, cancel=cancel)
    assert e.value.code == "cancelled"
