# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import json
import random
from functools import reduce

import pytest

from cardd.readers.atr import parse_atr
from cardd.readers.identify import (
    KNOWN_CARDS,
    CardIdentity,
    CardType,
    identify,
    identify_parsed,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def with_tck(body: bytes) -> bytes:
    return body + bytes((reduce(lambda a, b: a ^ b, body[1:], 0),))


def pseudo(historical: bytes) -> bytes:
    return with_tck(bytes((0x3B, 0x80 | len(historical), 0x80, 0x01)) + historical)


def storage(ss: int, code: int) -> bytes:
    return pseudo(h("80 4F 0C A0 00 00 03 06") + bytes((ss, code >> 8, code & 0xFF)) + bytes(4))


MOICA_GEN1 = h("3B B8 13 00 81 31 FA 52 43 48 54 4D 4F 49 43 41 A5")
MOICA_GEN2 = h("3B D8 96 00 81 B1 FE 45 1F 07 43 48 54 47 50 4B 49 4A DD")
MOICA_CL = h("3B 8B 80 01 00 31 C1 64 08 40 21 30 00 90 00 57")
MOICA_CL_HISTORICAL = h("00 31 C1 64 08 40 21 30 00 90 00")


@pytest.mark.parametrize(
    ("raw", "card_type", "label", "contactless"),
    [
        (
            h("3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 01 00 00 00 00 6A"),
            CardType.MIFARE_CLASSIC_1K,
            "MIFARE Classic 1K",
            True,
        ),
        (
            h("3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 02 00 00 00 00 69"),
            CardType.MIFARE_CLASSIC_4K,
            "MIFARE Classic 4K",
            True,
        ),
        (
            h("3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 03 00 00 00 00 68"),
            CardType.MIFARE_ULTRALIGHT,
            "MIFARE Ultralight",
            True,
        ),
        (
            h("3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 26 00 00 00 00 4D"),
            CardType.MIFARE_MINI,
            "MIFARE Mini",
            True,
        ),
        (h("3B 81 80 01 80 80"), CardType.ISO14443_4, "ISO 14443-4 (ISO-DEP) card", True),
        (MOICA_GEN1, CardType.MOICA_GEN1, "Citizen certificate card (MOICA) gen1", False),
        (MOICA_GEN2, CardType.MOICA_GEN2, "Citizen certificate card (MOICA) gen2", False),
        (
            MOICA_CL,
            CardType.MOICA_CONTACTLESS,
            "Citizen certificate card (MOICA), contactless",
            True,
        ),
        (h("3B 02 14 50"), CardType.CONTACT_OTHER, "Unrecognised contact card", False),
    ],
)
def test_examples(raw: bytes, card_type: CardType, label: str, contactless: bool) -> None:
    ident = identify(raw)
    assert ident.card_type is card_type
    assert ident.label == label
    assert ident.contactless is contactless
    assert ident.atr.raw == raw
    assert ident.atr.valid


def test_known_table_examples_identify_as_themselves() -> None:
    assert {k.card_type for k in KNOWN_CARDS} == {
        CardType.MOICA_GEN1,
        CardType.MOICA_GEN2,
        CardType.MOICA_CONTACTLESS,
    }
    for known in KNOWN_CARDS:
        ident = identify(known.example_atr)
        assert ident.card_type is known.card_type
        assert ident.label == known.label
        assert ident.contactless is known.contactless
        assert ident.atr.tck_ok is True


@pytest.mark.parametrize("ta1", [0x11, 0x18, 0x95, 0x96])
def test_moica_gen1_matches_with_other_ta1(ta1: int) -> None:
    raw = with_tck(bytes((0x3B, 0xB8, ta1)) + MOICA_GEN1[3:-1])
    ident = identify(raw)
    assert ident.atr.valid
    assert ident.card_type is CardType.MOICA_GEN1


def test_moica_gen1_matches_despite_bad_tck() -> None:
    ident = identify(MOICA_GEN1[:-1] + b"\x00")
    assert ident.card_type is CardType.MOICA_GEN1
    assert ident.atr.tck_ok is False
    assert ident.atr.problems == ("TCK mismatch: expected A5 got 00",)


def test_moica_gen2_matches_other_batch_letter() -> None:
    raw = with_tck(MOICA_GEN2[:-2] + b"K")
    assert identify(raw).card_type is CardType.MOICA_GEN2


def test_moica_name_with_invalid_ts_is_not_moica() -> None:
    ident = identify(b"\x12" + MOICA_GEN1[1:])
    assert ident.card_type is CardType.UNKNOWN
    assert ident.atr.historical_bytes == b"CHTMOICA"


def test_moica_contactless_needs_the_pseudo_atr_shape() -> None:
    # Same historical bytes in a contact-card ATR (T=0 only): not the contactless card.
    contact = bytes((0x3B, len(MOICA_CL_HISTORICAL))) + MOICA_CL_HISTORICAL
    ident = identify(contact)
    assert ident.card_type is CardType.CONTACT_OTHER
    assert not ident.contactless
    # One more historical byte on the pseudo-ATR: some other ISO-DEP card.
    other = identify(pseudo(MOICA_CL_HISTORICAL + b"\x00"))
    assert other.card_type is CardType.ISO14443_4


def test_contactless_card_with_moica_name_is_not_gen1() -> None:
    assert identify(pseudo(b"CHTMOICA")).card_type is CardType.ISO14443_4


@pytest.mark.parametrize(
    ("ss", "code", "card_type", "label"),
    [
        (0x03, 0x003A, CardType.MIFARE_ULTRALIGHT, "MIFARE Ultralight C"),
        (0x03, 0x003D, CardType.MIFARE_ULTRALIGHT, "MIFARE Ultralight EV1"),
        (0x11, 0xF011, CardType.FELICA, "FeliCa 212K"),
        (0x11, 0xF012, CardType.FELICA, "FeliCa 424K"),
        (0x11, 0x003B, CardType.FELICA, "FeliCa"),
        (0x11, 0x0000, CardType.FELICA, "FeliCa"),
        (0x03, 0x0036, CardType.CONTACTLESS_OTHER, "MIFARE Plus SL1 2K"),
        (0x03, 0xF004, CardType.CONTACTLESS_OTHER, "Topaz/Jewel"),
        (0x03, 0xFF88, CardType.CONTACTLESS_OTHER, "unknown type (SAK 88)"),
        (0x03, 0x1234, CardType.CONTACTLESS_OTHER, "Contactless storage card (name code 1234)"),
    ],
)
def test_storage_card_types(ss: int, code: int, card_type: CardType, label: str) -> None:
    ident = identify(storage(ss, code))
    assert ident.card_type is card_type
    assert ident.label == label
    assert ident.contactless


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x3b",
        h("3B 80"),
        h("3B 8F 80 01 80 4F"),
        h("12 02 14 50"),
        h("3B B8 13 00 81 31 FA 52 43 48 54 4D 4F 49 43 41 A6 FF"),
    ],
    ids=lambda b: b.hex().upper() or "empty",
)
def test_unknown_cards_keep_their_atr(raw: bytes) -> None:
    ident = identify(raw)
    if ident.card_type is not CardType.UNKNOWN:
        # A damaged ATR may still be recognisable; it must then carry its problems along.
        assert ident.atr.problems
    else:
        assert ident.label == "Unknown card"
    assert ident.atr.raw == raw
    assert ident.atr.problems
    assert json.loads(json.dumps(ident.to_dict()))["atr"]["raw"] == raw.hex().upper()


def test_contact_card_with_bad_tck_is_unknown() -> None:
    raw = with_tck(h("3B 81 81 01 42"))[:-1] + b"\x00"
    ident = identify(raw)
    assert ident.card_type is CardType.UNKNOWN
    assert ident.atr.tck_ok is False


def test_to_dict() -> None:
    d = identify(MOICA_GEN1).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["card_type"] == "moica_gen1"
    assert d["label"] == "Citizen certificate card (MOICA) gen1"
    assert d["contactless"] is False
    assert d["atr"] == parse_atr(MOICA_GEN1).to_dict()
    assert identify(MOICA_CL).to_dict()["atr"]["contactless"]["kind"] == "iso-dep"


def test_identify_parsed_matches_identify() -> None:
    assert identify_parsed(parse_atr(MOICA_CL)) == identify(MOICA_CL)
    assert isinstance(identify(MOICA_CL), CardIdentity)


def test_card_type_values_are_stable() -> None:
    assert {t.value for t in CardType} >= {
        "moica_gen1",
        "moica_gen2",
        "moica_contactless",
        "mifare_classic_1k",
        "mifare_classic_4k",
        "mifare_ultralight",
        "mifare_mini",
        "felica",
        "iso14443_4",
        "contactless_other",
        "contact_other",
        "unknown",
    }


def test_random_inputs_never_raise() -> None:
    rng = random.Random(20240601)
    seeds = [k.example_atr for k in KNOWN_CARDS] + [storage(0x03, 0x0001), b"\x3b\x02\x14\x50"]
    for i in range(20_000):
        if i % 2:
            raw = rng.randbytes(rng.randint(0, 40))
        else:
            buf = bytearray(rng.choice(seeds))
            buf[rng.randrange(len(buf))] = rng.randrange(256)
            raw = bytes(buf[: rng.randint(0, len(buf) + 1)])
        ident = identify(raw)
        assert isinstance(ident.card_type, CardType)
        assert ident.label
        assert ident.atr.raw == raw
        if ident.card_type is CardType.CONTACT_OTHER:
            assert ident.atr.valid and not ident.contactless
        json.dumps(ident.to_dict())
