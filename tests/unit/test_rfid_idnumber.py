# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import random

import pytest

from cardd import errors as E
from cardd.log import mask_id as log_mask_id
from cardd.rfid.idnumber import (
    IdKind,
    IdNumber,
    LibraryNumber,
    check_digit,
    mask_id,
    parse_library_number,
    validate_id,
)

# --- an independent reference implementation of the checksum (written from product.md) -------

# The official table, typed again here rather than imported, so a typo in one is caught.
REF_CODES = dict(zip(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    [10, 11, 12, 13, 14, 15, 16, 17, 34, 18, 19, 20, 21, 22, 35, 23, 24, 25, 26, 27, 28, 29, 32, 30, 31, 33],
    strict=True,
))  # fmt: skip


def ref_valid(number: str) -> bool:
    """Spell the number as an 11-digit string, weight it, test divisibility by 10."""
    head = str(REF_CODES[number[0]])
    if number[1].isalpha():  # old resident certificate: second letter -> last digit of its code
        spelled = head + str(REF_CODES[number[1]])[-1] + number[2:]
    else:
        spelled = head + number[1:]
    assert len(spelled) == 11
    return sum(int(d) * int(w) for d, w in zip(spelled, "19876543211", strict=True)) % 10 == 0


def ref_generate(rng: random.Random, letter: str, second: str) -> str:
    """Pick random digits and find the check digit by trying all ten."""
    body = letter + second + "".join(rng.choice("0123456789") for _ in range(7))
    hits = [body + d for d in "0123456789" if ref_valid(body + d)]
    assert len(hits) == 1  # the check digit has weight 1: exactly one completes the sum
    return hits[0]


RNG = random.Random(20240917)
GENERATED = [
    (ref_generate(RNG, letter, second), kind)
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for second, kind in [
        ("1", IdKind.NATIONAL),
        ("2", IdKind.NATIONAL),
        ("8", IdKind.RESIDENT_NEW),
        ("9", IdKind.RESIDENT_NEW),
        ("A", IdKind.RESIDENT_OLD),
        ("B", IdKind.RESIDENT_OLD),
        ("C", IdKind.RESIDENT_OLD),
        ("D", IdKind.RESIDENT_OLD),
    ]
]


# --- validate_id ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("A123456789", IdKind.NATIONAL),  # the textbook example
        ("Y144766850", IdKind.NATIONAL),
        # sample numbers published by guanting112/taiwan-id-validator and enylin/taiwan-id-validator
        ("A800000014", IdKind.RESIDENT_NEW),
        ("AC01234567", IdKind.RESIDENT_OLD),
        ("AA00000009", IdKind.RESIDENT_OLD),
    ],
)
def test_known_valid_numbers(text, kind):
    ident = validate_id(text)
    assert ident.value == text and ident.kind is kind
    assert ref_valid(text)


def test_old_resident_rule_worked_by_hand():
    # AC01234567: A=10 -> 1,0; C=12 -> 2 (code mod 10); then 0,1,2,3,4,5,6,7
    # 1*1 + 0*9 + 2*8 + 0*7 + 1*6 + 2*5 + 3*4 + 4*3 + 5*2 + 6*1 + 7*1 = 80
    assert 1 + 16 + 6 + 10 + 12 + 12 + 10 + 6 + 7 == 80
    assert validate_id("AC01234567").kind is IdKind.RESIDENT_OLD
    # The same digits with the full code 12 would shift everything; the mod-10 rule is the one used.
    with pytest.raises(E.IdNumberInvalid):
        validate_id("AC01234568")


@pytest.mark.parametrize(("number", "kind"), GENERATED)
def test_generated_numbers_of_every_letter_and_kind(number, kind):
    assert validate_id(number).kind is kind
    assert check_digit(number[:9]) == int(number[9])


@pytest.mark.parametrize(("number", "kind"), GENERATED[::5])
def test_every_wrong_check_digit_is_refused(number, kind):
    for d in "0123456789":
        if d == number[9]:
            continue
        with pytest.raises(E.IdNumberInvalid, match="check digit") as info:
            validate_id(number[:9] + d)
        assert number[:9] + d not in info.value.message


def test_random_numbers_agree_with_the_reference():
    rng = random.Random(7)
    for _ in range(3000):
        cand = (
            rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
            + rng.choice("1289ABCD")
            + "".join(rng.choice("0123456789") for _ in range(8))
        )
        try:
            validate_id(cand)
            ok = True
        except E.IdNumberInvalid:
            ok = False
        assert ok == ref_valid(cand), cand


def test_normalisation_lowercase_spaces_fullwidth():
    assert validate_id("a123456789").value == "A123456789"
    assert validate_id("  A123456789\n").value == "A123456789"
    assert validate_id("\u3000A123456789\t").value == "A123456789"  # ideographic space
    # full-width forms from an IME are folded (documented decision), in any mix
    assert validate_id("Ａ１２３４５６７８９").value == "A123456789"
    assert validate_id("Ａ123456789").value == "A123456789"
    assert validate_id("ａc01234567").value == "AC01234567"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("A12345678", "must be 10 characters (got 9)"),
        ("A1234567890", "must be 10 characters (got 11)"),
        ("", "empty"),
        ("   ", "empty"),
        ("A323456789", "second character must be 1 or 2"),
        ("A023456789", "second character must be 1 or 2"),
        ("AE12345678", "second character must be 1 or 2"),
        ("1123456789", "first character must be a letter"),
        ("A1234567A9", "must all be digits"),
        ("AC0123456X", "must all be digits"),
        ("A123 456789", "only the letters A to Z and the digits"),
        ("A123-456789", "only the letters A to Z and the digits"),
        ("Å123456789", "only the letters A to Z and the digits"),
        ("A١٢٣٤٥٦٧٨٩", "only the letters A to Z and the digits"),  # Arabic-Indic digits
        ("A¹23456789", "only the letters A to Z and the digits"),  # NFKC would have made it 1
        ("A123456788", "check digit does not match"),
    ],
)
def test_refusals_say_why_and_never_echo_the_number(text, reason):
    with pytest.raises(E.IdNumberInvalid) as info:
        validate_id(text)
    err = info.value
    assert reason in err.message
    assert isinstance(err, E.InvalidInput) and err.code == "id_invalid"
    if len(text.strip()) >= 4:
        assert text.strip() not in err.message


def test_refused_number_of_the_right_length_is_shown_masked():
    with pytest.raises(E.IdNumberInvalid) as info:
        validate_id("A123456788")
    assert "A12*****88" in info.value.message


@pytest.mark.parametrize("value", [None, 123456789, b"A123456789"])
def test_non_text_is_refused_not_crashed(value):
    with pytest.raises(E.IdNumberInvalid, match="text"):
        validate_id(value)


def test_id_number_object_masks_its_repr_and_guards_construction():
    ident = validate_id("A123456789")
    assert ident.masked == "A12*****89"
    assert "A123456789" not in repr(ident) and "A12*****89" in repr(ident)
    assert str(ident) == "A123456789"
    assert IdNumber("A123456789", IdKind.NATIONAL) == ident
    with pytest.raises(E.IdNumberInvalid):
        IdNumber("A123456788", IdKind.NATIONAL)
    with pytest.raises(E.IdNumberInvalid):
        IdNumber("A123456789", IdKind.RESIDENT_NEW)
    with pytest.raises(E.IdNumberInvalid):
        IdNumber("a123456789", IdKind.NATIONAL)  # not canonical: use validate_id
    assert IdKind.RESIDENT_OLD.description.startswith("resident certificate")


def test_check_digit_refuses_bad_prefixes():
    assert check_digit("A12345678") == 9
    for bad in ["A1234567", "A32345678", "AX0123456", "A12 45678"]:
        with pytest.raises(E.IdNumberInvalid):
            check_digit(bad)


# --- masking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("A123456789", "A12*****89"),
        ("A12345678901", "A12*****8901"),
        ("AB12345678", "AB1*****78"),
        ("A812345678", "A81*****78"),
        (" a123456789 ", "A12*****89"),
        ("short", "*****"),
        ("", ""),
        ("A1234567890123", "**************"),
    ],
)
def test_mask_id(value, masked):
    assert mask_id(value) == masked


@pytest.mark.parametrize(
    "number", ["A123456789", "A12345678901", "AC01234567", "AC0123456700", "A800000014"]
)
def test_mask_matches_the_log_redaction(number):
    # an API answer and a log line show the same characters of the same number
    assert mask_id(number) == log_mask_id(number)


# --- library numbers -----------------------------------------------------------------------------


def test_library_number_first_next_and_text():
    first = LibraryNumber.first("a123456789")
    assert first == LibraryNumber("A123456789", 0)
    assert str(first) == "A12345678900" and len(str(first)) == 12
    assert str(first.next()) == "A12345678901"
    assert first.next().next().suffix == 2
    assert LibraryNumber.first(validate_id("AC01234567")).kind is IdKind.RESIDENT_OLD
    assert first.masked == "A12*****8900"
    assert "A12345678900" not in repr(first)
    assert first.id == validate_id("A123456789")
    assert LibraryNumber("A123456789", 98).next() == LibraryNumber("A123456789", 99)
    assert sorted([first.next(), first]) == [first, first.next()]
    assert len({first, LibraryNumber("a123456789", 0)}) == 1


def test_suffix_99_cannot_be_followed():
    last = LibraryNumber("A123456789", 99)
    with pytest.raises(E.SuffixExhausted) as info:
        last.next()
    err = info.value
    assert err.code == "suffix_exhausted"
    assert "99" in err.message and "issuing office" in err.message
    assert "A123456789" not in err.message and "A12*****8999" in err.message


@pytest.mark.parametrize("suffix", [-1, 100, True, "1", 1.0])
def test_library_number_suffix_range(suffix):
    with pytest.raises(E.LibraryNumberInvalid):
        LibraryNumber("A123456789", suffix)


def test_library_number_with_an_invalid_id_is_refused():
    with pytest.raises(E.IdNumberInvalid):
        LibraryNumber("A123456788", 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A12345678900", LibraryNumber("A123456789", 0)),
        (" a12345678907 ", LibraryNumber("A123456789", 7)),
        ("Ａ１２３４５６７８９９９", LibraryNumber("A123456789", 99)),
        ("AC0123456742", LibraryNumber("AC01234567", 42)),
        ("A80000001401", LibraryNumber("A800000014", 1)),
    ],
)
def test_parse_library_number(text, expected):
    assert parse_library_number(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("A123456789", "without its 2-digit suffix"),
        ("A1234567890", "must be 12 characters"),
        ("A123456789000", "must be 12 characters"),
        ("A1234567890X", "suffix) must be digits"),
        ("A123456789 0", "only the letters"),
        ("A12345678800", "ID number part is not valid: the check digit"),
        ("A32345678900", "ID number part is not valid: the second character"),
        ("", "empty"),
    ],
)
def test_parse_library_number_refusals(text, reason):
    with pytest.raises(E.LibraryNumberInvalid) as info:
        parse_library_number(text)
    err = info.value
    assert reason in err.message
    assert err.code == "library_number_invalid" and isinstance(err, E.InvalidInput)
    if len(text) >= 10:
        assert text not in err.message and text[:10] not in err.message


def test_new_error_codes_are_registered():
    codes = {c.code for c in E.all_error_classes()}
    assert {
        "id_invalid",
        "library_number_invalid",
        "suffix_exhausted",
        "record_corrupt",
        "record_foreign",
    } <= codes
