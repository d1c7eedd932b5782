# SPDX-License-Identifier: Apache-2.0
"""Kiosk tokens: classification of taps, records and barcodes; masking; virtual-card validity."""

from __future__ import annotations

from datetime import date

import pytest

from cardd.errors import ConfigError, InvalidInput
from cardd.kiosk.tokens import (
    TokenKind,
    TokenRules,
    TokenSource,
    from_barcode,
    from_record,
    from_tap,
    uid_value,
    virtual_card_valid,
)
from cardd.rfid.idnumber import parse_library_number
from cardd.rfid.uid import uid_forms

RULES = TokenRules()
NUMBER = "A12345678901"


def tap(uid_hex: str, **extra):
    return {"reader": "R", "uid": uid_forms(bytes.fromhex(uid_hex)).to_dict(), **extra}


def test_easycard_uid_is_the_little_endian_chip_number_by_default():
    t = from_tap(tap("93A131C0"), RULES)
    assert (t.kind, t.source, t.value, t.uid_hex) == (
        TokenKind.UID,
        TokenSource.CHIP,
        "3224478099",
        "93A131C0",
    )
    assert t.masked == "******8099" and "3224478099" not in repr(t)


@pytest.mark.parametrize(
    ("form", "uid", "expected"),
    [
        ("dec10_le", "01020300", "0000197121"),
        ("dec_be", "93A131C0", "2476814784"),
        ("hex", "93A131C0", "93A131C0"),
        ("hex_reversed", "93A131C0", "C031A193"),
        ("dec10_le", "04A1B2C3D4E5F6", "69495546249912580"),
        ("dec10_le_last10", "04A1B2C3D4E5F6", "6249912580"),
    ],
)
def test_uid_forms_a_site_can_choose(form, uid, expected):
    assert uid_value(bytes.fromhex(uid), form) == expected
    assert from_tap(tap(uid), TokenRules(uid_form=form)).value == expected


def test_random_uid_identifies_nobody():
    t = from_tap(tap("08112233", randomUid=True), RULES)
    assert t.kind is TokenKind.UNKNOWN and t.problem == "random_uid"
    assert from_tap(tap("08112233"), RULES).problem == "random_uid"  # by its first byte too


def test_em4100_tap_uses_the_configured_form():
    data = {
        "kind": "em4100",
        "reader": "rdm",
        "em4100": {"hex": "0F00A1B2C3", "decimal10": "0010597059", "wiegand": "161,45763"},
    }
    assert from_tap(data, RULES).value == "0010597059"
    t = from_tap(data, TokenRules(em4100_form="wiegand"))
    assert (t.kind, t.value, t.masked) == (TokenKind.EM4100, "161,45763", "*****5763")


@pytest.mark.parametrize("bad", [{}, {"uid": {}}, {"uid": {"hex": "zz"}}, {"kind": "em4100"}])
def test_malformed_tap_events_are_refused(bad):
    with pytest.raises(InvalidInput):
        from_tap(bad, RULES)


def test_record_token_masks_the_national_id():
    t = from_record(parse_library_number(NUMBER), bytes.fromhex("93A131C0"), "R")
    assert (t.kind, t.source, t.value, t.uid_hex) == (
        TokenKind.LIBRARY_NUMBER,
        TokenSource.CARD_RECORD,
        NUMBER,
        "93A131C0",
    )
    assert t.masked == "A12*****8901"
    assert t.to_event() == {
        "kind": "library_number",
        "source": "card_record",
        "masked": "A12*****8901",
        "reader": "R",
    }


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        (NUMBER, TokenKind.LIBRARY_NUMBER, NUMBER),
        (" a12345678901\r", TokenKind.LIBRARY_NUMBER, NUMBER),  # case, whitespace
        ("Ａ１２３４５６７８９０１", TokenKind.LIBRARY_NUMBER, NUMBER),  # full-width IME input
        ("CUTE-1-20131107112934", TokenKind.VIRTUAL_CARD, "CUTE-1-20131107112934"),
        ("cute-1-20131107112934", TokenKind.VIRTUAL_CARD, "CUTE-1-20131107112934"),
        ("0123456789", TokenKind.BARCODE, "0123456789"),
        ("A12345678801", TokenKind.UNKNOWN, "A12345678801"),  # checksum wrong: not a number
        ("A123456789", TokenKind.UNKNOWN, "A123456789"),  # a bare ID number is not a card
        ("CUTE-1-20131399112934", TokenKind.UNKNOWN, "CUTE-1-20131399112934"),  # month 13
        ("hello", TokenKind.UNKNOWN, "hello"),
    ],
)
def test_barcodes(text, kind, value):
    t = from_barcode(text, RULES, "scanner")
    assert (t.kind, t.value, t.source, t.reader) == (kind, value, TokenSource.BARCODE, "scanner")
    if kind is TokenKind.UNKNOWN:
        assert t.problem == "unknown_barcode"


@pytest.mark.parametrize("text", ["", "   ", "x" * 65, "12345678\x00", None, 12345678])
def test_junk_barcodes_are_unknown_and_never_raise(text):
    assert from_barcode(text, RULES).kind is TokenKind.UNKNOWN


def test_site_barcode_patterns_replace_the_default():
    rules = TokenRules(barcode_patterns=(r"P[0-9]{6}",))
    assert from_barcode("P123456", rules).kind is TokenKind.BARCODE
    assert from_barcode("0123456789", rules).kind is TokenKind.UNKNOWN


def test_virtual_card_mask_keeps_the_school():
    t = from_barcode("CUTE-1-20131107112934", RULES)
    assert t.masked == "CUTE-" + "*" * 12 + "2934"


def test_virtual_card_validity_follows_the_seed_example():
    t = from_barcode("CUTE-1-20131107112934", RULES)  # seed 003: 使用期限至 2013-11-10
    assert virtual_card_valid(t, date(2013, 11, 7), 3)
    assert virtual_card_valid(t, date(2013, 11, 10), 3)
    assert not virtual_card_valid(t, date(2013, 11, 11), 3)
    assert not virtual_card_valid(t, date(2013, 11, 6), 3)  # not yet applied for


@pytest.mark.parametrize(
    "kwargs",
    [
        {"uid_form": "decimal"},
        {"em4100_form": "dec"},
        {"barcode_patterns": ("[",)},
        {"virtual_card_pattern": "[A-Z]+"},
        {"virtual_card_days": -1},
    ],
)
def test_bad_rules_are_refused(kwargs):
    with pytest.raises(ConfigError):
        TokenRules(**kwargs)
