# SPDX-License-Identifier: Apache-2.0
"""The contactless virtual cards: pseudo-APDUs, MIFARE Classic access rules, faults, fixtures."""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from pathlib import Path

import pytest

from cardd.errors import ConfigError
from cardd.sim.cards.base import VirtualCard
from cardd.sim.cards.contactless import (
    CARD_NAME_CLASSIC_4K,
    CommandApdu,
    isodep_atr,
    storage_atr,
    validate_uid,
)
from cardd.sim.cards.faults import CardMute, FaultSignal, FaultyCard, RemoveCard
from cardd.sim.cards.isodep import IsoDepCard
from cardd.sim.cards.loader import card_from_spec, load_card
from cardd.sim.cards.mifare import (
    TRANSPORT_ACCESS,
    TRANSPORT_TRAILER,
    AccessConditions,
    ClassicLayout,
    KeyType,
    MifareClassic,
    manufacturer_block,
    sector_trailer,
    uid_from_manufacturer_block,
)
from cardd.sim.cards.uid import UidCard

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cards"

ATR_1K = bytes.fromhex("3B8F8001804F0CA000000306030001000000006A")
ATR_4K = bytes.fromhex("3B8F8001804F0CA0000003060300020000000069")
ATR_DESFIRE = bytes.fromhex("3B8180018080")
UID4 = bytes.fromhex("93A131C0")
UID7 = bytes.fromhex("04A1B2C3D4E5F6")
FF6 = "FFFFFFFFFFFF"
KEY_A = "A0A1A2A3A4A5"
KEY_B = "B0B1B2B3B4B5"


def tx(card: VirtualCard, hexapdu: str) -> str:
    """Send an APDU written in hex (spaces allowed); return the response as upper-case hex."""
    return card.process(bytes.fromhex(hexapdu)).hex().upper()


def load(card: VirtualCard, key: str, slot: int = 0) -> None:
    assert tx(card, f"FF 82 00 {slot:02X} 06 {key}") == "9000"


def auth(card: VirtualCard, block: int, key_type: int = 0x60, slot: int = 0) -> str:
    return tx(card, f"FF 86 00 00 05 01 00 {block:02X} {key_type:02X} {slot:02X}")


def read(card: VirtualCard, block: int) -> str:
    return tx(card, f"FF B0 00 {block:02X} 10")


def write(card: VirtualCard, block: int, data: str) -> str:
    return tx(card, f"FF D6 00 {block:02X} 10 {data}")


def student() -> MifareClassic:
    card = load_card(FIXTURES / "classic_1k_student.json")
    assert isinstance(card, MifareClassic)
    return card


# -- pseudo-ATR, UIDs, APDU parsing ------------------------------------------------------


def test_pseudo_atrs_match_the_reader_manuals() -> None:
    assert storage_atr(b"\x00\x01") == ATR_1K
    assert storage_atr(CARD_NAME_CLASSIC_4K) == ATR_4K
    assert storage_atr(b"\x00\x03").hex().upper().endswith("000300000000" + "68")
    assert storage_atr(b"\x00\x26")[-1] == 0x4D
    assert isodep_atr(b"\x80") == ATR_DESFIRE


def test_isodep_atr_length_nibble_and_limit() -> None:
    atr = isodep_atr(bytes(range(1, 16)))
    assert atr[1] == 0x8F and len(atr) == 4 + 15 + 1
    with pytest.raises(ValueError):
        isodep_atr(bytes(16))


@pytest.mark.parametrize("uid", ["93A131C0", "04A1B2C3D4E5F6", "04A1B2C3D4E5F60708F1"])
def test_valid_uids(uid: str) -> None:
    assert validate_uid(bytes.fromhex(uid)) == bytes.fromhex(uid)


@pytest.mark.parametrize("uid", ["", "93A131", "93A131C0C1", "04A1B2C3D4E5F607", "88A131C0"])
def test_invalid_uids(uid: str) -> None:
    with pytest.raises(ValueError):
        validate_uid(bytes.fromhex(uid))


def test_cascade_tag_rule_applies_to_the_last_cascade_level() -> None:
    validate_uid(bytes.fromhex("88A1B2C3D4E5F6"))  # UID0 of a 7-byte UID may be anything
    with pytest.raises(ValueError):
        validate_uid(bytes.fromhex("04A1B288D4E5F6"))
    with pytest.raises(ValueError):
        validate_uid(bytes.fromhex("04A1B2C3D4E588000000"))


def test_every_model_rejects_a_bad_uid() -> None:
    with pytest.raises(ValueError):
        UidCard(b"\x01\x02")
    with pytest.raises(ValueError):
        IsoDepCard(bytes(5))
    with pytest.raises(ValueError):  # Classic has no 10-byte UIDs
        MifareClassic.blank(bytes.fromhex("04A1B2C3D4E5F60708F1"))


@pytest.mark.parametrize(
    ("apdu", "parsed"),
    [
        ("FFCA0000", CommandApdu(0xFF, 0xCA, 0, 0)),
        ("FFCA000000", CommandApdu(0xFF, 0xCA, 0, 0, le=0)),
        ("FF82000002AABB", CommandApdu(0xFF, 0x82, 0, 0, data=b"\xaa\xbb")),
        ("00A4040002AABB00", CommandApdu(0, 0xA4, 4, 0, data=b"\xaa\xbb", le=0)),
        ("FFCA00", None),
        ("FF82000006AABB", None),
        ("FFB000000000AA", None),  # extended length
    ],
)
def test_command_apdu_parse(apdu: str, parsed: CommandApdu | None) -> None:
    assert CommandApdu.parse(bytes.fromhex(apdu)) == parsed


def test_command_apdu_ne() -> None:
    assert CommandApdu(0, 0, 0, 0, le=0).ne == 256
    assert CommandApdu(0, 0, 0, 0, le=16).ne == 16
    assert CommandApdu(0, 0, 0, 0).ne is None


# -- GET DATA on every model -------------------------------------------------------------


def all_models() -> list[VirtualCard]:
    return [UidCard(UID4), MifareClassic.blank(UID4), IsoDepCard(UID4)]


@pytest.mark.parametrize("card", all_models(), ids=lambda c: c.kind)
def test_get_data_uid_and_le_rules(card: VirtualCard) -> None:
    assert tx(card, "FF CA 00 00 00") == "93A131C09000"
    assert tx(card, "FF CA 00 00") == "93A131C09000"  # no Le: everything
    assert tx(card, "FF CA 00 00 04") == "93A131C09000"
    assert tx(card, "FF CA 00 00 02") == "6C04"
    assert tx(card, "FF CA 00 00 08") == "93A131C06282"
    assert tx(card, "FF CA 02 00 00") == "6A81"
    assert tx(card, "FF CA 00 01 00") == "6A81"
    assert tx(card, "FF CA 00 00 01 AA") == "6700"


def test_get_data_returns_uid0_first_for_7_and_10_byte_uids() -> None:
    assert tx(UidCard(UID7), "FF CA 00 00 00") == "04A1B2C3D4E5F69000"
    uid10 = "04A1B2C3D4E5F60708F1"
    assert tx(IsoDepCard(bytes.fromhex(uid10)), "FF CA 00 00 00") == uid10 + "9000"
    assert tx(UidCard(UID7), "FF CA 00 00 04") == "6C07"


@pytest.mark.parametrize("card", all_models()[:2], ids=lambda c: c.kind)
def test_storage_cards_have_no_ats_and_no_apdu_interface(card: VirtualCard) -> None:
    assert tx(card, "FF CA 01 00 00") == "6A81"
    assert tx(card, "00 A4 04 00 07 A0000000031010 00") == "6E00"
    assert tx(card, "00 84 00 00 08") == "6E00"
    assert tx(card, "FF 00 00 00 02 D4 02") == "6A81"  # unknown FF instruction
    assert tx(card, "FFCA") == "6700"


# -- UID card --------------------------------------------------------------------------


def test_uid_card_defaults_to_the_classic_1k_atr() -> None:
    card = UidCard(UID4)
    assert card.atr == ATR_1K
    assert card.kind == "uid"
    assert isinstance(card, VirtualCard)


def test_uid_card_atr_options() -> None:
    assert UidCard(UID4, card_name=CARD_NAME_CLASSIC_4K).atr == ATR_4K
    assert UidCard(UID4, ATR_DESFIRE).atr == ATR_DESFIRE


def test_uid_card_refuses_mifare_commands() -> None:
    card = UidCard(UID4)
    assert tx(card, f"FF 82 00 00 06 {FF6}") == "6A81"
    assert tx(card, "FF 86 00 00 05 01 00 04 60 00") == "6A81"
    assert tx(card, "FF B0 00 04 10") == "6A81"
    assert tx(card, "FF D6 00 04 10" + "00" * 16) == "6A81"


def test_uid_card_power_on_keeps_a_fixed_uid() -> None:
    card = UidCard(UID4)
    card.power_on()
    assert card.uid == UID4


def test_random_id_card_draws_a_new_08_uid_at_every_power_on() -> None:
    card = UidCard(bytes.fromhex("08B7C6D5"), random_id=True, seed=7)
    seen = set()
    for _ in range(5):
        card.power_on()
        assert card.uid[0] == 0x08 and len(card.uid) == 4
        assert tx(card, "FF CA 00 00 00") == card.uid.hex().upper() + "9000"
        seen.add(card.uid)
    assert len(seen) > 1
    again = UidCard(bytes.fromhex("08B7C6D5"), random_id=True, seed=7)
    again.power_on()
    first = UidCard(bytes.fromhex("08B7C6D5"), random_id=True, seed=7)
    first.power_on()
    assert again.uid == first.uid  # the seed makes it reproducible


def test_random_id_needs_an_08_uid() -> None:
    with pytest.raises(ValueError):
        UidCard(UID4, random_id=True)


# -- ISO-DEP card ----------------------------------------------------------------------


def test_isodep_atr_and_ats() -> None:
    card = IsoDepCard(UID7)
    assert card.atr == ATR_DESFIRE
    assert card.kind == "iso-dep"
    assert tx(card, "FF CA 01 00 00") == "067577810280" + "9000"
    assert tx(card, "FF CA 01 00 03") == "6C06"


def test_isodep_custom_historical_bytes_and_ats() -> None:
    card = IsoDepCard(UID7, historical=b"\x80\x01", ats=bytes.fromhex("0778770280" + "8001"))
    assert card.atr == isodep_atr(b"\x80\x01")
    assert tx(card, "FF CA 01 00 00") == "07787702808001" + "9000"
    with pytest.raises(ValueError):
        IsoDepCard(UID7, ats=bytes.fromhex("0975778102"))  # TL does not match


def test_isodep_commands() -> None:
    card = IsoDepCard(UID7)
    assert tx(card, "00 A4 04 00 07 D2760000850101 00") == "6A82"
    assert tx(card, "00 A4 04 00 06 A00000000001") == "6A82"
    assert tx(card, "00 B0 00 00 10") == "6D00"
    assert tx(card, "90 60 00 00 00") == "6D00"
    assert tx(card, "FF 82 00 00 06 " + FF6) == "6A81"
    assert tx(card, "00 A4 04 00 06 AABB") == "6700"


# -- access-bit codec ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "groups"),
    [
        ("FF0780", (0b000, 0b000, 0b000, 0b001)),
        ("787788", (0b100, 0b100, 0b100, 0b011)),
        ("7F0788", (0b000, 0b000, 0b000, 0b011)),
        ("00F0FF", (0b111, 0b111, 0b111, 0b111)),
        ("FF0F00", (0b000, 0b000, 0b000, 0b000)),
    ],
)
def test_access_bits_codec(raw: str, groups: tuple[int, int, int, int]) -> None:
    decoded = AccessConditions.from_bytes(bytes.fromhex(raw))
    assert decoded == AccessConditions(groups)
    assert AccessConditions(groups).to_bytes() == bytes.fromhex(raw)


def test_access_bits_codec_round_trips_every_combination() -> None:
    for value in range(8**4):
        groups = (value & 7, (value >> 3) & 7, (value >> 6) & 7, (value >> 9) & 7)
        conds = AccessConditions(groups)
        assert AccessConditions.from_bytes(conds.to_bytes()) == conds


@pytest.mark.parametrize("raw", ["000000", "FFFFFF", "FF0781", "FE0780", "FF0680", "787789"])
def test_access_bits_with_a_bad_inverted_copy_are_invalid(raw: str) -> None:
    assert AccessConditions.from_bytes(bytes.fromhex(raw)) is None


def test_transport_access_and_key_b_readability() -> None:
    assert TRANSPORT_ACCESS.to_bytes() == bytes.fromhex("FF0780")
    assert TRANSPORT_ACCESS.key_b_readable
    assert not AccessConditions((4, 4, 4, 0b011)).key_b_readable
    assert TRANSPORT_TRAILER == bytes.fromhex(FF6 + "FF078069" + FF6)
    with pytest.raises(ValueError):
        AccessConditions((0, 0, 0, 8))


# -- MIFARE Classic: images ----------------------------------------------------------------


def test_blank_1k_image() -> None:
    card = MifareClassic.blank(UID4)
    image = card.dump()
    assert len(image) == 1024
    assert card.atr == ATR_1K and card.kind == "mifare-classic-1k"
    assert image[:16] == bytes.fromhex("93A131C0C3080400") + b"bcdefghi"
    for sector in range(16):
        assert card.block(4 * sector + 3) == TRANSPORT_TRAILER
    assert image[16:48] == bytes(32)
    assert card.blocked_sectors() == []


def test_blank_4k_image_with_7_byte_uid() -> None:
    card = MifareClassic.blank(UID7, "4k")
    assert len(card.dump()) == 4096 and card.atr == ATR_4K and card.kind == "mifare-classic-4k"
    assert card.block(0)[:10] == UID7 + bytes.fromhex("184200")
    trailers = [4 * s + 3 for s in range(32)] + [128 + 16 * i + 15 for i in range(8)]
    for block in range(256):
        assert (card.block(block) == TRANSPORT_TRAILER) == (block in trailers)


def test_manufacturer_block_uid_detection() -> None:
    assert uid_from_manufacturer_block(manufacturer_block(UID4)) == UID4
    assert uid_from_manufacturer_block(manufacturer_block(UID7, "4k")) == UID7


def test_from_mfd_bytes_and_path(tmp_path: Path) -> None:
    image = MifareClassic.blank(UID7, "4k").dump()
    card = MifareClassic.from_mfd(image)
    assert card.size == "4k" and card.uid == UID7 and card.dump() == image
    path = tmp_path / "card.mfd"
    path.write_bytes(MifareClassic.blank(UID4).dump())
    card = MifareClassic.from_mfd(path)
    assert card.size == "1k" and card.uid == UID4
    assert MifareClassic.from_mfd(str(path), uid=bytes.fromhex("11223344")).uid.hex() == "11223344"
    with pytest.raises(ValueError):
        MifareClassic.from_mfd(bytes(1000))


def test_constructor_checks_size_and_image_length() -> None:
    with pytest.raises(ValueError):
        MifareClassic(UID4, bytes(1024), size="2k")
    with pytest.raises(ValueError):
        MifareClassic(UID4, bytes(4096), size="1k")


def test_layout_4k_geometry() -> None:
    layout = MifareClassic.blank(UID4, "4k").layout
    assert isinstance(layout, ClassicLayout)
    assert [layout.sector_of(b) for b in (0, 3, 127, 128, 143, 144, 255)] == [
        0,
        0,
        31,
        32,
        32,
        33,
        39,
    ]
    assert layout.trailer_of(31) == 127 and layout.trailer_of(32) == 143
    assert layout.trailer_of(39) == 255
    groups = [layout.group_of(128 + i) for i in range(16)]
    assert groups == [0] * 5 + [1] * 5 + [2] * 5 + [3]
    assert [layout.group_of(b) for b in (4, 5, 6, 7)] == [0, 1, 2, 3]


# -- MIFARE Classic: reader commands ---------------------------------------------------------


def test_typical_read_with_the_transport_key() -> None:
    card = MifareClassic.blank(UID4)
    assert tx(card, f"FF 82 00 00 06 {FF6}") == "9000"
    assert tx(card, "FF 86 00 00 05 01 00 04 60 00") == "9000"
    assert tx(card, "FF B0 00 04 10") == "00" * 16 + "9000"
    assert card.authenticated is not None and card.authenticated.sector == 1


def test_load_keys_errors() -> None:
    card = MifareClassic.blank(UID4)
    assert tx(card, f"FF 82 20 00 06 {FF6}") == "6986"  # non-volatile (ACR128) not supported
    assert tx(card, f"FF 82 00 02 06 {FF6}") == "6986"  # only slots 00 and 01
    assert tx(card, "FF 82 00 00 05 FFFFFFFFFF") == "6700"
    assert tx(card, "FF 82 00 00 07 FFFFFFFFFFFFFF") == "6700"
    assert tx(card, "FF 82 00 00") == "6700"
    load(card, FF6, slot=1)
    assert auth(card, 4, slot=1) == "9000"


def test_authenticate_needs_a_loaded_slot_and_a_valid_request() -> None:
    card = MifareClassic.blank(UID4)
    assert auth(card, 4) == "6300"  # nothing loaded yet
    load(card, FF6)
    assert auth(card, 4, slot=1) == "6300"  # slot 1 empty
    assert auth(card, 4, slot=2) == "6300"
    assert auth(card, 4, key_type=0x62) == "6300"
    assert auth(card, 64) == "6300"  # a 1K card ends at block 63
    assert tx(card, "FF 86 00 00 05 02 00 04 60 00") == "6300"  # unknown version
    assert tx(card, "FF 86 00 00 05 01 01 04 60 00") == "6300"  # block MSB
    assert tx(card, "FF 86 00 00 04 01 00 04 60") == "6700"
    assert auth(card, 63) == "9000"


def test_obsolete_authenticate() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    assert tx(card, "FF 88 00 08 60 00") == "9000"
    assert read(card, 9) == "00" * 16 + "9000"
    assert tx(card, "FF 88 00 08 60") == "6700"
    assert tx(card, "FF 88 01 08 60 00") == "6300"
    assert card.authenticated is None


def test_wrong_key_fails_and_clears_authentication() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6, slot=0)
    load(card, KEY_A, slot=1)
    assert auth(card, 4) == "9000"
    assert auth(card, 4, slot=1) == "6300"
    assert card.authenticated is None
    assert read(card, 4) == "6300"


def test_authentication_is_per_sector_and_replaced_by_the_next() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    assert auth(card, 4) == "9000"
    assert read(card, 5) == "00" * 16 + "9000"
    assert read(card, 8) == "6300"  # sector 2 not authenticated
    assert read(card, 5) == "6300"  # and the failure ended the session
    assert auth(card, 4) == "9000"
    assert auth(card, 9) == "9000"  # another sector replaces the first
    assert read(card, 8) == "00" * 16 + "9000"
    assert read(card, 4) == "6300"


def test_any_failure_clears_authentication_but_get_data_does_not() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    for failing in (
        "FF B0 00 04 00",
        "FF 00 00 00 00",
        "00 B0 00 00 10",
        "FF D6 00 00 10" + "00" * 16,
    ):
        assert auth(card, 4 if "D6" not in failing else 0) == "9000"
        assert tx(card, failing) != "9000"
        assert card.authenticated is None, failing
    assert auth(card, 4) == "9000"
    assert tx(card, "FF CA 00 00 02") == "6C04"
    assert tx(card, "FF CA 01 00 00") == "6A81"
    assert read(card, 4) == "00" * 16 + "9000"


def test_power_on_clears_authentication_but_keeps_the_reader_key_slots() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    assert auth(card, 4) == "9000"
    card.power_on()
    assert card.authenticated is None
    assert read(card, 4) == "6300"
    assert auth(card, 4) == "9000"  # slot 0 still holds the key


def test_read_binary_length_and_range() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    for apdu in ("FF B0 00 04 00", "FF B0 00 04 20", "FF B0 00 04", "FF B0 00 04 01 00 10"):
        assert auth(card, 4) == "9000"
        assert tx(card, apdu) == "6700", apdu
    assert auth(card, 4) == "9000"
    assert tx(card, "FF B0 01 04 10") == "6300"
    assert auth(card, 60) == "9000"
    assert read(card, 64) == "6300"


def test_write_then_read_back() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    assert auth(card, 4) == "9000"
    data = "41313233343536373839303100000000"
    assert write(card, 5, data) == "9000"
    assert read(card, 5) == data + "9000"
    assert card.block(5).hex().upper() == data
    assert write(card, 5, "00" * 15) == "6700"  # Lc 10 but 15 bytes
    assert auth(card, 4) == "9000"
    assert tx(card, "FF D6 00 05 11" + "00" * 17) == "6700"  # 17 bytes in one UPDATE
    assert auth(card, 4) == "9000"
    assert tx(card, "FF D6 00 05 0F" + "00" * 15) == "6700"
    assert card.block(5).hex().upper() == data


def test_manufacturer_block_is_read_only() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    assert auth(card, 0) == "9000"
    assert read(card, 0) == card.block(0).hex().upper() + "9000"
    assert write(card, 0, "00" * 16) == "6300"
    assert card.block(0)[:4] == UID4
    assert auth(card, 0, key_type=0x61) == "6300"  # transport key B is readable: no auth


def test_key_a_reads_back_as_zero_and_transport_key_b_is_readable() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    assert auth(card, 7) == "9000"
    assert read(card, 7) == "000000000000" + "FF078069" + FF6 + "9000"


def test_readable_key_b_cannot_authenticate() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    assert auth(card, 4, key_type=0x61) == "6300"


def test_student_sector_access_rules() -> None:
    card = student()
    load(card, KEY_A, slot=0)
    load(card, KEY_B, slot=1)
    # key A: reads data, cannot write it; sees access bits but not key B
    assert auth(card, 56, 0x60, 0) == "9000"
    assert read(card, 56) == "00" * 16 + "9000"
    assert read(card, 59) == "00" * 6 + "78778869" + "00" * 6 + "9000"
    assert write(card, 57, "11" * 16) == "6300"
    assert card.block(57) == bytes(16)
    # key B: writes data; key B unreadable even to itself
    assert auth(card, 56, 0x61, 1) == "9000"
    assert card.authenticated is not None and card.authenticated.key_type is KeyType.B
    assert write(card, 57, "11" * 16) == "9000"
    assert read(card, 57) == "11" * 16 + "9000"
    assert read(card, 59) == "00" * 6 + "78778869" + "00" * 6 + "9000"
    # the transport key does not open sector 14
    load(card, FF6, slot=0)
    assert auth(card, 56, 0x60, 0) == "6300"


def test_student_other_sectors_stay_transport() -> None:
    card = student()
    assert card.block(1) == bytes.fromhex("0e140001070208030904081000000000")
    load(card, FF6)
    assert auth(card, 1) == "9000"
    assert read(card, 1) == "0E140001070208030904081000000000" + "9000"


def test_data_table_read_and_write_per_key_type() -> None:
    expected = {  # C1C2C3: (read A, read B, write A, write B)
        0b000: (True, True, True, True),
        0b010: (True, True, False, False),
        0b100: (True, True, False, True),
        0b110: (True, True, False, True),
        0b001: (True, True, False, False),
        0b011: (False, True, False, True),
        0b101: (False, True, False, False),
        0b111: (False, False, False, False),
    }
    for bits, (read_a, read_b, write_a, write_b) in expected.items():
        # trailer 011: key B is not readable, so both keys can authenticate
        trailer = sector_trailer(
            bytes.fromhex(KEY_A), AccessConditions((bits, 0, 0, 0b011)), bytes.fromhex(KEY_B)
        )
        memory = bytearray(MifareClassic.blank(UID4).dump())
        memory[7 * 16 : 8 * 16] = trailer
        card = MifareClassic(UID4, bytes(memory))
        load(card, KEY_A, 0)
        load(card, KEY_B, 1)
        for key_type, slot, may_read, may_write in (
            (0x60, 0, read_a, write_a),
            (0x61, 1, read_b, write_b),
        ):
            assert auth(card, 4, key_type, slot) == "9000"
            assert read(card, 4).endswith("9000") == may_read, (bits, key_type)
            assert auth(card, 4, key_type, slot) == "9000"
            assert (write(card, 4, "22" * 16) == "9000") == may_write, (bits, key_type)
            # block 5 is in group 1 (000): always open, proves the group split
            assert auth(card, 4, key_type, slot) == "9000"
            assert write(card, 5, "33" * 16) == "9000"


def trailer_card(bits: int) -> MifareClassic:
    memory = bytearray(MifareClassic.blank(UID4).dump())
    memory[7 * 16 : 8 * 16] = sector_trailer(
        bytes.fromhex(KEY_A), AccessConditions((0, 0, 0, bits)), bytes.fromhex(KEY_B)
    )
    card = MifareClassic(UID4, bytes(memory))
    load(card, KEY_A, 0)
    load(card, KEY_B, 1)
    return card


def test_trailer_read_masking_per_table() -> None:
    for bits in range(8):
        card = trailer_card(bits)
        access = AccessConditions((0, 0, 0, bits)).to_bytes().hex().upper() + "69"
        key_b_readable = bits in (0b000, 0b010, 0b001)
        read_ab_with_b = bits in (0b100, 0b110, 0b011, 0b101, 0b111)
        assert auth(card, 7, 0x60, 0) == "9000"
        shown_b = KEY_B if key_b_readable else "00" * 6
        assert read(card, 7) == "00" * 6 + access + shown_b + "9000", bits
        if not key_b_readable:
            assert auth(card, 7, 0x61, 1) == "9000"
            shown_ab = access if read_ab_with_b else "00" * 4
            assert read(card, 7) == "00" * 6 + shown_ab + "00" * 6 + "9000", bits
        else:
            assert auth(card, 7, 0x61, 1) == "6300"


def test_trailer_write_field_by_field() -> None:
    new_a, new_b = "C0C1C2C3C4C5", "D0D1D2D3D4D5"
    new_access = AccessConditions((0b100, 0b100, 0b100, 0b011)).to_bytes().hex() + "00"
    block = new_a + new_access + new_b
    cases = {  # bits: (key type, slot) -> which fields change (key A, access, key B)
        0b001: ((0x60, 0), (True, True, True)),
        0b000: ((0x60, 0), (True, False, True)),
        0b011: ((0x61, 1), (True, True, True)),
        0b100: ((0x61, 1), (True, False, True)),
        0b101: ((0x61, 1), (False, True, False)),
    }
    for bits, ((key_type, slot), (wa, wab, wb)) in cases.items():
        card = trailer_card(bits)
        before = card.block(7)
        assert auth(card, 7, key_type, slot) == "9000"
        assert write(card, 7, block) == "9000", bits
        after = card.block(7)
        assert (after[0:6] == bytes.fromhex(new_a)) == wa, bits
        assert (after[6:10] == bytes.fromhex(new_access)) == wab, bits
        assert (after[10:16] == bytes.fromhex(new_b)) == wb, bits
        assert after[0:6] == (bytes.fromhex(new_a) if wa else before[0:6])


@pytest.mark.parametrize(
    ("bits", "key_type", "slot"),
    [
        (0b010, 0x60, 0),
        (0b110, 0x60, 0),
        (0b110, 0x61, 1),
        (0b111, 0x61, 1),
        (0b011, 0x60, 0),
        (0b000, 0x61, 1),
    ],
)
def test_trailer_write_refused_when_no_field_is_writable(
    bits: int, key_type: int, slot: int
) -> None:
    card = trailer_card(bits)
    before = card.dump()
    result = auth(card, 7, key_type, slot)
    if result == "9000":
        assert write(card, 7, "00" * 16) == "6300"
    assert card.dump() == before


def test_read_modify_write_of_a_trailer_destroys_key_a() -> None:
    """The mistake contactless.md §6 warns about: read a trailer, write it back."""
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    assert auth(card, 7) == "9000"
    shown = read(card, 7)[:-4]
    assert write(card, 7, shown) == "9000"
    assert card.block(7)[:6] == bytes(6)
    assert auth(card, 7) == "6300"  # the transport key no longer opens the sector


def test_invalid_access_bits_block_the_sector_for_good() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    assert auth(card, 7) == "9000"
    assert write(card, 7, FF6 + "00000000" + FF6) == "9000"  # access bits writable: it lands
    assert card.block(7) == bytes.fromhex(FF6 + "00000000" + FF6)
    assert card.blocked_sectors() == [1]
    assert card.access_conditions(1) is None
    assert read(card, 4) == "6300"  # at once, inside the same session
    for key_type in (0x60, 0x61):
        assert auth(card, 4, key_type) == "6300"
    card.power_on()
    assert auth(card, 4) == "6300"
    assert auth(card, 8) == "9000"  # other sectors are unaffected


def test_writing_application_data_into_a_trailer_blocks_the_sector() -> None:
    card = MifareClassic.blank(UID4)
    load(card, FF6)
    assert auth(card, 11) == "9000"
    assert write(card, 11, "41313233343536373839303100000000") == "9000"
    assert card.blocked_sectors() == [2]


def test_invalid_access_bits_in_an_image_block_the_sector() -> None:
    memory = bytearray(MifareClassic.blank(UID4).dump())
    memory[3 * 16 + 6] ^= 0x01
    card = MifareClassic(UID4, bytes(memory))
    load(card, FF6)
    assert card.blocked_sectors() == [0]
    assert auth(card, 0) == "6300"


def test_4k_large_sector_addressing() -> None:
    card = MifareClassic.blank(UID4, "4k")
    load(card, FF6)
    assert auth(card, 130) == "9000"  # any block of sector 32 authenticates it
    assert card.authenticated is not None and card.authenticated.sector == 32
    assert write(card, 142, "AB" * 16) == "9000"
    assert read(card, 142) == "AB" * 16 + "9000"
    assert read(card, 143) == "00" * 6 + "FF078069" + FF6 + "9000"
    assert read(card, 144) == "6300"  # sector 33
    assert auth(card, 255) == "9000"
    assert card.authenticated is not None and card.authenticated.sector == 39
    assert read(card, 240) == "00" * 16 + "9000"
    assert read(card, 255) == "00" * 6 + "FF078069" + FF6 + "9000"
    assert auth(card, 127) == "9000"
    assert card.authenticated is not None and card.authenticated.sector == 31
    assert card.block(142) == bytes.fromhex("AB" * 16)


def test_4k_large_sector_groups_of_five_blocks() -> None:
    card = MifareClassic.blank(UID4, "4k")
    # sector 33 (blocks 144-159): group 0 read-only (010), group 1 never (111), group 2 open
    trailer = sector_trailer(
        bytes.fromhex(FF6), AccessConditions((0b010, 0b111, 0b000, 0b001)), bytes.fromhex(FF6)
    )
    memory = bytearray(card.dump())
    memory[159 * 16 : 160 * 16] = trailer
    card = MifareClassic(UID4, bytes(memory), size="4k")
    load(card, FF6)
    for block in range(144, 159):
        group = (block - 144) // 5
        assert auth(card, 144) == "9000"
        readable = read(card, block) == "00" * 16 + "9000"
        assert readable == (group != 1), block
        assert auth(card, 144) == "9000"
        writable = write(card, block, "01" * 16) == "9000"
        assert writable == (group == 2), block


# -- fault injection -----------------------------------------------------------------------


def test_faulty_card_is_a_virtual_card_and_passes_through() -> None:
    inner = UidCard(UID4)
    card = FaultyCard(inner)
    assert isinstance(card, VirtualCard)
    assert card.kind == "uid" and card.atr == ATR_1K
    assert tx(card, "FF CA 00 00 00") == "93A131C09000"


def test_fail_next() -> None:
    card = FaultyCard(UidCard(UID4))
    card.fail_next(0x6F00, count=2)
    card.fail_next(0x6D00)
    assert [tx(card, "FF CA 00 00 00") for _ in range(4)] == [
        "6F00",
        "6F00",
        "6D00",
        "93A131C09000",
    ]
    with pytest.raises(ValueError):
        card.fail_next(0x10000)
    with pytest.raises(ValueError):
        card.fail_next(0x6F00, count=0)


def test_fail_next_does_not_reach_the_inner_card() -> None:
    inner = MifareClassic.blank(UID4)
    card = FaultyCard(inner)
    load(card, FF6)
    assert auth(card, 4) == "9000"
    card.fail_next(0x6300)
    assert write(card, 5, "11" * 16) == "6300"
    assert inner.block(5) == bytes(16)


def test_mute_next() -> None:
    card = FaultyCard(UidCard(UID4))
    card.mute_next(2)
    for _ in range(2):
        with pytest.raises(CardMute):
            card.process(bytes.fromhex("FFCA000000"))
    assert tx(card, "FF CA 00 00 00") == "93A131C09000"
    assert issubclass(CardMute, FaultSignal) and not issubclass(CardMute, ConfigError)


def test_remove_on_nth_apdu() -> None:
    card = FaultyCard(UidCard(UID4))
    card.remove_on_next(3)
    assert tx(card, "FF CA 00 00 00") == "93A131C09000"
    assert tx(card, "FF CA 00 00 00") == "93A131C09000"
    with pytest.raises(RemoveCard):
        tx(card, "FF CA 00 00 00")
    assert tx(card, "FF CA 00 00 00") == "93A131C09000"  # one-shot


def test_remove_on_matching_apdu_before_processing() -> None:
    inner = MifareClassic.blank(UID4)
    card = FaultyCard(inner)
    card.remove_on_next(lambda apdu: apdu[1] == 0xD6)
    load(card, FF6)
    assert auth(card, 4) == "9000"
    assert read(card, 4) == "00" * 16 + "9000"
    with pytest.raises(RemoveCard):
        write(card, 5, "11" * 16)
    assert inner.block(5) == bytes(16)


def test_remove_after_processing_lands_the_write_but_loses_the_answer() -> None:
    inner = MifareClassic.blank(UID4)
    card = FaultyCard(inner)
    load(card, FF6)
    assert auth(card, 4) == "9000"
    card.remove_on_next(after_processing=True)
    with pytest.raises(RemoveCard):
        write(card, 5, "11" * 16)
    assert inner.block(5) == bytes.fromhex("11" * 16)


def test_removal_pre_empts_other_faults_which_stay_armed() -> None:
    card = FaultyCard(UidCard(UID4))
    card.fail_next(0x6F00)
    card.remove_on_next()
    with pytest.raises(RemoveCard):
        tx(card, "FF CA 00 00 00")
    assert tx(card, "FF CA 00 00 00") == "6F00"


def test_delay_next_uses_the_sleep_function() -> None:
    slept: list[float] = []
    card = FaultyCard(UidCard(UID4), sleep=slept.append)
    card.delay_next(0.5, count=2)
    for _ in range(3):
        assert tx(card, "FF CA 00 00 00") == "93A131C09000"
    assert slept == [0.5, 0.5]
    with pytest.raises(ValueError):
        card.delay_next(-1)


def test_delay_next_really_sleeps() -> None:
    import time

    card = FaultyCard(UidCard(UID4))
    card.delay_next(0.05)
    start = time.monotonic()
    assert tx(card, "FF CA 00 00 00") == "93A131C09000"
    assert time.monotonic() - start >= 0.045


def test_disarm() -> None:
    card = FaultyCard(UidCard(UID4), sleep=lambda s: pytest.fail("slept"))
    card.fail_next(0x6F00)
    card.mute_next()
    card.remove_on_next()
    card.delay_next(1)
    card.disarm()
    assert tx(card, "FF CA 00 00 00") == "93A131C09000"


def test_chain_61xx() -> None:
    card = FaultyCard(UidCard(UID7), chain_61xx=True)
    assert tx(card, "FF CA 00 00 00") == "6107"
    assert tx(card, "00 C0 00 00 07") == "04A1B2C3D4E5F69000"
    assert tx(card, "FF CA 00 00 00") == "6107"
    assert tx(card, "00 C0 00 00 03") == "04A1B26104"
    assert tx(card, "00 C0 00 00 00") == "C3D4E5F69000"
    # responses without data are not chained; GET RESPONSE with nothing pending goes through
    assert tx(card, "FF 82 00 00 06 " + FF6) == "6A81"
    assert tx(card, "00 C0 00 00 07") == "6E00"


def test_chain_61xx_chunks_and_keeps_the_final_status_word() -> None:
    card = FaultyCard(UidCard(UID4), chain_61xx=True, chunk_size=3)
    assert tx(card, "FF CA 00 00 08") == "6104"  # inner answered data + 62 82
    assert tx(card, "00 C0 00 00 00") == "93A1316101"
    assert tx(card, "00 C0 00 00 00") == "C06282"


def test_chain_61xx_is_dropped_by_another_command_and_by_power_on() -> None:
    card = FaultyCard(UidCard(UID4), chain_61xx=True)
    assert tx(card, "FF CA 00 00 00") == "6104"
    assert tx(card, "FF CA 00 00 00") == "6104"  # re-issued: a new pending response
    card.power_on()
    assert tx(card, "00 C0 00 00 04") == "6E00"
    card.chain_61xx = False
    assert tx(card, "FF CA 00 00 00") == "93A131C09000"


def test_chain_61xx_with_mifare_read() -> None:
    card = FaultyCard(MifareClassic.blank(UID4), chain_61xx=True)
    load(card, FF6)
    assert auth(card, 0) == "9000"
    assert read(card, 0) == "6110"
    assert tx(card, "00 C0 00 00 10") == MifareClassic.blank(UID4).block(0).hex().upper() + "9000"


def test_wrong_le() -> None:
    card = FaultyCard(UidCard(UID4), wrong_le=True)
    assert tx(card, "FF CA 00 00 00") == "6C04"
    assert tx(card, "FF CA 00 00 04") == "93A131C09000"
    assert tx(card, "FF CA 00 00 04") == "93A131C09000"  # a correct Le needs no retry
    assert tx(card, "FF CA 00 00") == "93A131C09000"  # no Le: nothing to correct
    card.wrong_le = False
    assert tx(card, "FF CA 00 00 00") == "93A131C09000"


def test_wrong_le_answers_the_retry_without_processing_twice() -> None:
    class Counting(UidCard):
        calls = 0

        def process(self, apdu: bytes) -> bytes:
            Counting.calls += 1
            return super().process(apdu)

    card = FaultyCard(Counting(UID4), wrong_le=True)
    assert tx(card, "FF CA 00 00 00") == "6C04"
    assert tx(card, "FF CA 00 00 04") == "93A131C09000"
    assert Counting.calls == 1


def test_chunk_size_validation() -> None:
    with pytest.raises(ValueError):
        FaultyCard(UidCard(UID4), chunk_size=0)
    card = FaultyCard(UidCard(UID4))
    card.chunk_size = 2
    assert card.chunk_size == 2


def test_arming_from_another_thread() -> None:
    card = FaultyCard(UidCard(UID4))
    armed = threading.Event()

    def arm() -> None:
        card.fail_next(0x6F00, count=100)
        armed.set()

    thread = threading.Thread(target=arm)
    thread.start()
    thread.join()
    assert armed.is_set()
    answers = [tx(card, "FF CA 00 00 00") for _ in range(101)]
    assert answers.count("6F00") == 100 and answers[-1] == "93A131C09000"


def test_power_on_keeps_armed_faults() -> None:
    card = FaultyCard(MifareClassic.blank(UID4))
    card.fail_next(0x6F00)
    card.power_on()
    assert tx(card, "FF CA 00 00 00") == "6F00"


# -- loader and fixtures -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "uid", "atr"),
    [
        ("easycard_4b.json", "uid", "93A131C0", ATR_1K),
        ("easycard_7b.json", "uid", "04A1B2C3D4E5F6", ATR_1K),
        ("small_uid.json", "uid", "01020300", ATR_1K),
        ("random_uid.json", "uid", "08B7C6D5", ATR_1K),
        ("classic_1k_blank.json", "mifare-classic-1k", "A1B2C3D4", ATR_1K),
        ("classic_4k_blank.json", "mifare-classic-4k", "04112233445566", ATR_4K),
        ("classic_1k_student.json", "mifare-classic-1k", "93A131C0", ATR_1K),
        ("desfire.json", "iso-dep", "04536B22A53A80", ATR_DESFIRE),
    ],
)
def test_fixture_loads(name: str, kind: str, uid: str, atr: bytes) -> None:
    card = load_card(FIXTURES / name)
    assert isinstance(card, VirtualCard)
    assert card.kind == kind and card.atr == atr
    card.power_on()
    assert tx(card, "FF CA 00 00 00") == uid + "9000"


def test_fixture_uids_give_the_documented_little_endian_numbers() -> None:
    def le_decimal(name: str) -> int:
        response = load_card(FIXTURES / name).process(bytes.fromhex("FFCA000000"))
        return int.from_bytes(response[:-2], "little")

    assert le_decimal("easycard_4b.json") == 3224478099
    assert f"{le_decimal('small_uid.json'):010d}" == "0000197121"
    assert le_decimal("easycard_7b.json") == 69495546249912580
    assert load_card(FIXTURES / "random_uid.json").process(b"\xff\xca\x00\x00\x00")[0] == 0x08


def test_every_fixture_is_covered() -> None:
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert names >= {
        "easycard_4b.json",
        "easycard_7b.json",
        "small_uid.json",
        "random_uid.json",
        "classic_1k_blank.json",
        "classic_4k_blank.json",
        "classic_1k_student.json",
        "desfire.json",
    }
    for path in FIXTURES.glob("*.json"):
        if '"moica-gen1"' not in path.read_text(encoding="utf-8"):
            assert isinstance(load_card(path), VirtualCard), path


def test_student_image_is_what_the_generator_makes() -> None:
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    image = (FIXTURES / "classic_1k_student.mfd").read_bytes()
    assert module.student_image() == image
    card = student()
    assert card.dump() == image
    assert card.block(59) == bytes.fromhex(KEY_A + "78778869" + KEY_B)
    assert card.blocked_sectors() == []
    for sector in range(16):
        if sector != 14:
            assert card.block(4 * sector + 3) == TRANSPORT_TRAILER


def test_loader_specs(tmp_path: Path) -> None:
    card = card_from_spec({"type": "uid", "uid": "93:A1:31:C0", "card_name": "0002"}, tmp_path)
    assert card.atr == ATR_4K
    card = card_from_spec({"type": "uid", "uid": "93A131C0", "atr": "3B8180018080"}, tmp_path)
    assert card.atr == ATR_DESFIRE
    card = card_from_spec({"type": "uid", "uid": "08000001", "random": True, "seed": 3}, tmp_path)
    assert isinstance(card, UidCard) and card.random_id
    card = card_from_spec({"type": "iso-dep", "uid": "04536B22A53A80"}, tmp_path)
    assert card.atr == ATR_DESFIRE
    card = card_from_spec({"type": "mifare-classic", "uid": "93A131C0"}, tmp_path)
    assert isinstance(card, MifareClassic) and card.size == "1k"
    (tmp_path / "img.mfd").write_bytes(MifareClassic.blank(UID7, "4k").dump())
    card = card_from_spec({"type": "mifare-classic", "image": "img.mfd"}, tmp_path)
    assert isinstance(card, MifareClassic) and card.size == "4k" and card.uid == UID7


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "magic"},
        {"uid": "93A131C0"},
        {"type": "uid"},
        {"type": "uid", "uid": "93A1"},
        {"type": "uid", "uid": "XYZ"},
        {"type": "uid", "uid": 1234},
        {"type": "uid", "uid": "93A131C0", "colour": "blue"},
        {"type": "uid", "uid": "93A131C0", "random": "yes"},
        {"type": "uid", "uid": "93A131C0", "random": True},
        {"type": "uid", "uid": "08A131C0", "seed": "x"},
        {"type": "mifare-classic", "image": "blank"},
        {"type": "mifare-classic", "uid": "93A131C0", "size": "2k"},
        {"type": "mifare-classic", "image": "missing.mfd"},
        {"type": "mifare-classic", "image": 3},
        {"type": "iso-dep", "uid": "04536B22A53A80", "historical": "00" * 16},
    ],
)
def test_loader_rejects_bad_specs(spec: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        card_from_spec(spec, tmp_path)


def test_loader_size_must_match_the_image(tmp_path: Path) -> None:
    (tmp_path / "img.mfd").write_bytes(MifareClassic.blank(UID4).dump())
    with pytest.raises(ConfigError, match="1k"):
        card_from_spec({"type": "mifare-classic", "size": "4k", "image": "img.mfd"}, tmp_path)


def test_load_card_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "uid", "uid": "93"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.json"):
        load_card(bad)
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_card(bad)
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_card(bad)
    with pytest.raises(ConfigError):
        load_card(tmp_path / "absent.json")


def test_loader_dispatches_moica_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[dict[str, object], Path]] = []
    sentinel = UidCard(UID4)

    class FakeMoica:
        @staticmethod
        def from_spec(spec: dict[str, object], base_dir: Path) -> VirtualCard:
            seen.append((spec, base_dir))
            return sentinel

    module = types.ModuleType("cardd.sim.cards.moica")
    module.MoicaGen1Card = FakeMoica  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cardd.sim.cards.moica", module)
    spec = {"type": "moica-gen1", "card_number": "TP03"}
    assert card_from_spec(spec, tmp_path) is sentinel
    assert seen == [(spec, tmp_path)]


def test_loader_without_the_moica_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cardd.sim.cards.moica", None)  # import raises
    with pytest.raises(ConfigError, match="cardd.sim.cards.moica"):
        card_from_spec({"type": "moica-gen1"}, tmp_path)


def test_loader_turns_moica_spec_errors_into_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FakeMoica:
        @staticmethod
        def from_spec(spec: dict[str, object], base_dir: Path) -> VirtualCard:
            raise ValueError("cardNumber must be a string")

    module = types.ModuleType("cardd.sim.cards.moica")
    module.MoicaGen1Card = FakeMoica  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cardd.sim.cards.moica", module)
    with pytest.raises(ConfigError, match="cardNumber"):
        card_from_spec({"type": "moica-gen1"}, tmp_path)
