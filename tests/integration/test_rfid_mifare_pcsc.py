# SPDX-License-Identifier: Apache-2.0
"""MifareClassicSession against the virtual MIFARE Classic card through the real pcscd + vpcd."""

from __future__ import annotations

import pytest

from cardd.errors import AccessDenied, AuthenticationFailed, UnsafeTrailer
from cardd.readers.pcsc import PcscBackend
from cardd.rfid.access import (
    STUDENT_ACCESS,
    TRANSPORT_ACCESS,
    TRANSPORT_KEY,
    AccessBits,
    KeyType,
    SectorTrailer,
)
from cardd.rfid.keys import load_key_file
from cardd.rfid.mifare import MifareClassicSession, first_block, trailer_block
from tests.helpers import READER0, fixture_card, wait_card

pytestmark = pytest.mark.pcsc

A, B = KeyType.A, KeyType.B
KEY_A = bytes.fromhex("A0A1A2A3A4A5")
KEY_B = bytes.fromhex("B0B1B2B3B4B5")
RECORD = b"LB\x01A12345678900\x00"
STUDENT_TRAILER = SectorTrailer(key_a=KEY_A, access=STUDENT_ACCESS, gpb=0x69, key_b=KEY_B)


def on_reader(vreaders, fixture: str):
    card = fixture_card(fixture)
    vreaders[0].insert(card)
    wait_card(READER0, present=True)
    return card


@pytest.fixture
def student(vreaders):
    card = on_reader(vreaders, "classic_1k_student.json")
    with PcscBackend().connect(READER0) as conn:
        yield card, MifareClassicSession(conn, size="1k")


@pytest.fixture
def blank(vreaders):
    card = on_reader(vreaders, "classic_1k_blank.json")
    with PcscBackend().connect(READER0) as conn:
        yield card, MifareClassicSession(conn, size="1k")


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text(
        f'[student_card]\nsector = 14\nkey_a = "{KEY_A.hex()}"\nkey_b = "{KEY_B.hex()}"\n',
        encoding="utf-8",
    )
    path.chmod(0o600)
    return path


def test_student_keys_from_the_key_file_write_and_read_the_record(student, key_file):
    card, session = student
    keys = load_key_file(key_file)
    assert session.uid() == bytes.fromhex("93A131C0")
    session.load_keys(keys, [B])
    session.authenticate_sector(keys.sector, B)
    block = first_block(keys.sector)
    session.write_block(block, RECORD, verify=False)
    session.write_block(block + 1, bytes(16), verify=False)
    session.write_block(block + 2, bytes(16), verify=False)
    assert session.read_block(block) == RECORD
    assert session.read_block(block + 1) == bytes(16)
    assert session.apdu_count == 8  # GET DATA (UID) + the 7-APDU burn
    assert card.block(block) == RECORD
    # key A reads what key B wrote
    session.load_keys(keys, [A])
    assert session.read_sector(keys.sector, A)[0] == RECORD


def test_write_block_refuses_a_trailer_without_sending(student):
    card, session = student
    before = card.dump()
    session.load_key(1, KEY_B)
    session.authenticate(56, B)
    sent = session.apdu_count
    with pytest.raises(UnsafeTrailer, match="write_trailer"):
        session.write_block(trailer_block(14), STUDENT_TRAILER.to_bytes())
    assert session.apdu_count == sent
    assert card.dump() == before


def test_wrong_key_is_authentication_failed(student):
    _card, session = student
    session.load_key(0, TRANSPORT_KEY)
    with pytest.raises(AuthenticationFailed) as info:
        session.authenticate(56, A)
    assert info.value.code == "auth_failed"
    assert session.authenticated_sector is None


def test_key_a_write_is_access_denied(student):
    card, session = student
    session.load_key(0, KEY_A)
    session.authenticate(57, A)
    before = card.block(57)
    with pytest.raises(AccessDenied, match="the access bits do not allow this") as info:
        session.write_block(57, b"\x11" * 16)
    assert info.value.code == "access_denied"
    assert card.block(57) == before


def test_personalize_a_blank_card_round_trip(blank):
    card, session = blank
    session.write_trailer(
        14, STUDENT_TRAILER, writer_key=A, keys_we_hold={A, B}, current_key=TRANSPORT_KEY
    )
    assert card.block(59) == STUDENT_TRAILER.to_bytes()
    assert card.access_conditions(14) is not None and card.blocked_sectors() == []
    # the new keys work: key B writes, key A reads
    session.load_key(session.slot_for(B), KEY_B)
    session.authenticate(56, B)
    session.write_block(56, RECORD)
    session.load_key(session.slot_for(A), KEY_A)
    assert session.read_sector(14, A)[0] == RECORD
    bits, _gpb = session.read_access(14)
    assert bits == AccessBits.parse("100 100 100 011")
    # the old transport key does not
    session.load_key(session.slot_for(A), TRANSPORT_KEY)
    with pytest.raises(AuthenticationFailed):
        session.authenticate(56, A)
    # the neighbouring sector is untouched
    assert card.block(trailer_block(13))[6:9] == TRANSPORT_ACCESS


@pytest.mark.parametrize(
    ("trailer", "hold", "match"),
    [
        # trailer bits 110: frozen for ever
        (
            SectorTrailer(
                key_a=KEY_A, access=AccessBits.uniform(0b100, 0b110).to_bytes(), key_b=KEY_B
            ),
            {A, B},
            "freeze",
        ),
        # only key B could ever write the trailer again, and we would hold only key A
        (STUDENT_TRAILER, {A}, "locked out"),
        # personalizing but leaving the public transport key as key A
        (
            SectorTrailer(key_a=TRANSPORT_KEY, access=STUDENT_ACCESS, key_b=KEY_B),
            {A, B},
            "transport key",
        ),
        # key A could not read the record
        (
            SectorTrailer(
                key_a=KEY_A, access=AccessBits.uniform(0b011, 0b011).to_bytes(), key_b=KEY_B
            ),
            {A, B},
            "read the record",
        ),
    ],
)
def test_unsafe_trailers_are_refused_before_any_apdu(blank, trailer, hold, match):
    card, session = blank
    before = card.dump()
    with pytest.raises(UnsafeTrailer, match=match):
        session.write_trailer(
            14, trailer, writer_key=A, keys_we_hold=hold, current_key=TRANSPORT_KEY
        )
    assert session.apdu_count == 0
    assert card.dump() == before


def test_personalize_a_large_4k_sector(vreaders):
    card = on_reader(vreaders, "classic_4k_blank.json")
    with PcscBackend().connect(READER0) as conn:
        session = MifareClassicSession(conn, size="4k")
        assert len(session.uid()) == 7
        session.write_trailer(
            39, STUDENT_TRAILER, writer_key=A, keys_we_hold={A, B}, current_key=TRANSPORT_KEY
        )
        assert card.block(255) == STUDENT_TRAILER.to_bytes()
        session.load_key(session.slot_for(B), KEY_B)
        session.authenticate_sector(39, B)
        session.write_block(254, RECORD)
        assert card.block(254) == RECORD
