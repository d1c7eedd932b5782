# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import random

import pytest

from cardd import errors as E
from cardd.rfid.uid import (
    DECIMAL_WIDTH,
    UidForm,
    UidForms,
    is_random_uid,
    parse_uid_text,
    uid_forms,
)


# contactless.md §2 worked examples
def test_easycard_worked_example():
    f = uid_forms(bytes.fromhex("93A131C0"))
    assert f == UidForms(
        hex="93A131C0", hex_reversed="C031A193", dec_le="3224478099", dec_be="2476814784", length=4
    )
    # Welte's note: 3224478099 == 0xc031a193
    assert int(f.dec_le) == 0xC031A193


def test_short_value_is_zero_padded_to_ten_digits():
    f = uid_forms(bytes.fromhex("01020300"))
    assert f.dec_le == "0000197121"
    assert f.dec_be == "0016909056"
    assert f.hex_reversed == "00030201"


def test_seven_byte_uid():
    f = uid_forms(bytes.fromhex("04A1B2C3D4E5F6"))
    assert f.dec_le == "69495546249912580" and len(f.dec_le) == 17
    assert f.dec_be == str(0x04A1B2C3D4E5F6).zfill(17) and len(f.dec_be) == 17
    assert f.length == 7 and f.uid == bytes.fromhex("04A1B2C3D4E5F6")


def test_ten_byte_uid_pads_to_25_digits():
    assert DECIMAL_WIDTH == {4: 10, 7: 17, 10: 25}
    f = uid_forms(bytes(10))
    assert f.dec_le == "0" * 25 and f.dec_be == "0" * 25
    top = uid_forms(b"\xff" * 10)
    assert top.dec_le == str(2**80 - 1) and len(top.dec_le) == 25


def test_widths_hold_at_the_extremes():
    for n, width in DECIMAL_WIDTH.items():
        for u in (bytes(n), b"\xff" * n, bytes([1]) + bytes(n - 1)):
            f = uid_forms(u)
            assert len(f.dec_le) == len(f.dec_be) == width


def test_to_dict_keys_are_the_api_contract():
    d = uid_forms(bytes.fromhex("93A131C0")).to_dict()
    assert d == {
        "hex": "93A131C0",
        "hexReversed": "C031A193",
        "decLE": "3224478099",
        "decBE": "2476814784",
        "length": 4,
    }
    assert list(d) == ["hex", "hexReversed", "decLE", "decBE", "length"]


@pytest.mark.parametrize("n", [0, 1, 3, 5, 6, 8, 9, 11, 16])
def test_other_lengths_are_refused(n):
    with pytest.raises(E.InvalidInput, match="4, 7 or 10 bytes"):
        uid_forms(bytes(n))


def test_bytearray_is_accepted():
    assert uid_forms(bytearray.fromhex("93A131C0")).hex == "93A131C0"


def test_random_uid():
    assert is_random_uid(bytes.fromhex("08123456"))
    assert not is_random_uid(bytes.fromhex("93A131C0"))
    assert not is_random_uid(bytes.fromhex("08A1B2C3D4E5F6"))  # only 4-byte UIDs are random IDs


# --- the inverse: typed text -> UID bytes -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "form", "uid"),
    [
        ("93A131C0", "hex", "93A131C0"),
        ("93 a1 31 c0", "hex", "93A131C0"),
        ("93:A1:31:C0", UidForm.HEX, "93A131C0"),
        ("0x93A131C0", "hex", "93A131C0"),
        ("C031A193", "hexReversed", "93A131C0"),
        ("3224478099", "decLE", "93A131C0"),
        ("2476814784", "decBE", "93A131C0"),
        ("0000197121", "decLE", "01020300"),
        ("197121", "decLE", "01020300"),  # unpadded: 6 digits -> 4 bytes
        ("69495546249912580", "decLE", "04A1B2C3D4E5F6"),
        ("３２２４４７８０９９", "decLE", "93A131C0"),  # full-width digits from an IME
    ],
)
def test_parse_uid_text(text, form, uid):
    assert parse_uid_text(text, form) == bytes.fromhex(uid)


def test_decimal_length_can_be_given():
    # a system that strips leading zeros of a 7-byte chip number
    assert parse_uid_text("197121", "decLE", length=7) == bytes.fromhex("01020300000000")
    assert parse_uid_text("197121", "decBE", length=7) == bytes.fromhex("00000000030201")
    # 17 digits infer 7 bytes even when the value is small
    assert parse_uid_text("00000000000197121", "decLE") == bytes.fromhex("01020300000000")


def test_roundtrip_every_form_and_length():
    rng = random.Random(1)
    for n in (4, 7, 10):
        for _ in range(200):
            uid = bytes(rng.randrange(256) for _ in range(n))
            d = uid_forms(uid).to_dict()
            for form in UidForm:
                assert parse_uid_text(str(d[form.value]), form) == uid
                assert parse_uid_text(str(d[form.value]), form, length=n) == uid


@pytest.mark.parametrize(
    ("text", "form", "length", "reason"),
    [
        ("", "hex", None, "empty"),
        ("93A131C", "hex", None, "two digits per byte"),
        ("93A131G0", "hex", None, "only 0-9 and A-F"),
        ("93A131", "hex", None, "4, 7 or 10 bytes"),
        ("93A131C0", "hex", 7, "not the 7 given"),
        ("4294967296", "decLE", None, "too large for a 4-byte UID"),
        ("9999999999", "decBE", None, "too large for a 4-byte UID"),
        ("12345678901234567890123456", "decLE", None, "at most 25 digits"),
        ("-1", "decLE", None, "only the digits"),
        ("3224 478099", "decLE", None, "only the digits"),
        ("3224478099", "decLE", 5, "4, 7 or 10 bytes"),
        ("3224478099", "decimal", None, "unknown UID form"),
    ],
)
def test_parse_uid_text_refusals(text, form, length, reason):
    with pytest.raises(E.InvalidInput, match=reason):
        parse_uid_text(text, form, length)


def test_parse_uid_text_refuses_non_text():
    with pytest.raises(E.InvalidInput):
        parse_uid_text(3224478099, "decLE")  # type: ignore[arg-type]
