# SPDX-License-Identifier: Apache-2.0
"""MIFARE Classic through PC/SC Part 3 pseudo-APDUs, over cardd's transport, real pcscd + vpcd."""

from __future__ import annotations

import pytest

from cardd.readers.pcsc import PcscBackend
from tests.helpers import READER0, fixture_card, wait_card

pytestmark = pytest.mark.pcsc

KEY_A = bytes.fromhex("A0A1A2A3A4A5")
KEY_B = bytes.fromhex("B0B1B2B3B4B5")
TRANSPORT = bytes.fromhex("FFFFFFFFFFFF")


def load_key(conn, key: bytes, slot: int = 0) -> int:
    return conn.send_and_receive(bytes([0xFF, 0x82, 0x00, slot, 0x06]) + key)[1]


def auth(conn, block: int, key_type: int, slot: int = 0) -> int:
    return conn.send_and_receive(bytes([0xFF, 0x86, 0, 0, 5, 1, 0, block, key_type, slot]))[1]


def read(conn, block: int) -> tuple[bytes, int]:
    return conn.send_and_receive(bytes([0xFF, 0xB0, 0, block, 16]))


def write(conn, block: int, data: bytes) -> int:
    return conn.send_and_receive(bytes([0xFF, 0xD6, 0, block, 16]) + data)[1]


@pytest.fixture
def student_card(vreaders):
    card = fixture_card("classic_1k_student.json")
    vreaders[0].insert(card)
    wait_card(READER0, present=True)
    with PcscBackend().connect(READER0) as conn:
        yield card, conn


def test_uid_auth_read_write_with_sector_keys(student_card):
    card, conn = student_card
    assert conn.send_and_receive(bytes.fromhex("FFCA000000")) == (bytes.fromhex("93A131C0"), 0x9000)
    assert load_key(conn, KEY_B, 1) == 0x9000
    assert auth(conn, 56, 0x61, 1) == 0x9000  # sector 14, key B
    record = b"LB\x01A12345678900\x00"
    assert write(conn, 56, record) == 0x9000
    assert read(conn, 56) == (record, 0x9000)
    assert card.block(56) == record


def test_wrong_key_is_refused_and_drops_authentication(student_card):
    _card, conn = student_card
    load_key(conn, TRANSPORT, 0)
    assert auth(conn, 56, 0x60, 0) == 0x6300  # sector 14 no longer answers to the transport key
    assert read(conn, 56)[1] == 0x6300


def test_access_bits_refuse_write_with_key_a_and_hide_keys(student_card):
    card, conn = student_card
    load_key(conn, KEY_A, 0)
    assert auth(conn, 57, 0x60, 0) == 0x9000
    before = card.block(57)
    assert read(conn, 57)[1] == 0x9000  # access 78 77 88: key A reads data ...
    assert write(conn, 57, b"\x11" * 16) == 0x6300  # ... but only key B writes
    assert card.block(57) == before
    assert auth(conn, 59, 0x60, 0) == 0x9000
    trailer, sw = read(conn, 59)
    assert sw == 0x9000
    assert trailer[:6] == b"\x00" * 6  # key A always reads back as zeros
    assert trailer[6:9] == bytes.fromhex("787788")
    assert trailer[10:] == b"\x00" * 6  # key B not readable under these access bits


def test_manufacturer_block_is_read_only(student_card):
    card, conn = student_card
    load_key(conn, TRANSPORT, 0)
    assert auth(conn, 0, 0x60, 0) == 0x9000
    block0, sw = read(conn, 0)
    assert sw == 0x9000 and block0[:4] == bytes.fromhex("93A131C0")
    assert write(conn, 0, b"\x00" * 16) == 0x6300
    assert card.block(0) == block0
