# SPDX-License-Identifier: Apache-2.0
"""The access-bit codec, the permission tables and the trailer safety checks (contactless.md §6)."""

from __future__ import annotations

import itertools

import pytest

from cardd.errors import InvalidInput, UnsafeTrailer
from cardd.rfid.access import (
    DATA_PERMISSIONS,
    KEY_A,
    KEY_A_OR_B,
    KEY_B,
    NEVER,
    STUDENT_ACCESS,
    STUDENT_POLICY,
    TRAILER_PERMISSIONS,
    TRANSPORT_ACCESS,
    TRANSPORT_KEY,
    TRANSPORT_TRAILER,
    AccessBits,
    KeyType,
    RecordAccess,
    SectorTrailer,
    TrailerPolicy,
    check_trailer_safe,
    decode_access,
    encode_access,
    trailer_problems,
)
from cardd.sim.cards import mifare as sim

A, B = KeyType.A, KeyType.B
KEY_A_VALUE = bytes.fromhex("A0A1A2A3A4A5")
KEY_B_VALUE = bytes.fromhex("B0B1B2B3B4B5")
BOTH = {A, B}


def trailer(access: bytes | AccessBits, key_a: bytes = KEY_A_VALUE, key_b: bytes = KEY_B_VALUE):
    if isinstance(access, AccessBits):
        access = access.to_bytes()
    return SectorTrailer(key_a=key_a, access=access, gpb=0x69, key_b=key_b)


def unchecked_trailer(access: bytes) -> SectorTrailer:
    """A trailer that skipped __post_init__, as if built by code that bypassed the checks."""
    t = object.__new__(SectorTrailer)
    for name, value in (
        ("key_a", KEY_A_VALUE),
        ("access", access),
        ("gpb", 0x69),
        ("key_b", KEY_B_VALUE),
    ):
        object.__setattr__(t, name, value)
    return t


# -- codec ------------------------------------------------------------------------------------


def test_transport_access_decodes_to_000_data_and_001_trailer():
    bits = decode_access(TRANSPORT_ACCESS)
    assert bits == AccessBits((0b000, 0b000, 0b000, 0b001))
    assert str(bits) == "000 000 000 001"
    assert bits.key_b_readable  # so only key A works on a blank card
    assert bits.trailer.write_access == KEY_A and bits.trailer.write_key_b == KEY_A


def test_student_access_decodes_to_100_data_and_011_trailer():
    bits = decode_access(STUDENT_ACCESS)
    assert bits == AccessBits.parse("100 100 100 011")
    for group in range(3):
        assert bits.data(group).read == KEY_A_OR_B
        assert bits.data(group).write == KEY_B
    t = bits.trailer
    assert (t.write_key_a, t.write_access, t.write_key_b) == (KEY_B, KEY_B, KEY_B)
    assert t.read_access == KEY_A_OR_B and t.read_key_b == NEVER
    assert not bits.key_b_readable


@pytest.mark.parametrize(
    ("raw", "groups"),
    [
        ("FF0780", (0, 0, 0, 0b001)),
        ("787788", (0b100, 0b100, 0b100, 0b011)),
        ("7F0788", (0b000, 0b000, 0b000, 0b011)),  # a common "key B manages" layout
        ("00F0FF", (0b111, 0b111, 0b111, 0b111)),
    ],
)
def test_known_encodings(raw, groups):
    assert decode_access(bytes.fromhex(raw)) == AccessBits(groups)
    assert encode_access(AccessBits(groups)) == bytes.fromhex(raw)


def test_every_combination_round_trips_and_matches_the_card_model():
    for groups in itertools.product(range(8), repeat=4):
        bits = AccessBits(groups)  # type: ignore[arg-type]
        raw = encode_access(bits)
        assert decode_access(raw) == bits
        # an independent implementation: the virtual card the session is tested against
        assert sim.AccessConditions(groups).to_bytes() == raw  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", ["000000", "FFFFFF", "787789", "F70780", "FF0781"])
def test_inverted_copy_mismatch_decodes_to_none(raw):
    assert decode_access(bytes.fromhex(raw)) is None


def test_every_single_bit_flip_is_detected():
    for base in (TRANSPORT_ACCESS, STUDENT_ACCESS):
        for bit in range(24):
            flipped = (int.from_bytes(base, "big") ^ (1 << bit)).to_bytes(3, "big")
            assert decode_access(flipped) is None


def test_decode_wants_three_bytes_and_parse_wants_bits():
    with pytest.raises(InvalidInput):
        decode_access(b"\xff\x07")
    with pytest.raises(InvalidInput):
        AccessBits.parse("100 100 100")
    with pytest.raises(InvalidInput):
        AccessBits.parse("100 100 100 012")
    with pytest.raises(InvalidInput):
        AccessBits((0, 0, 0, 8))


def test_permission_tables_match_the_datasheet_rows_and_the_card_model():
    # contactless.md §6, spot checks in the doc's own words
    assert DATA_PERMISSIONS[0b010].write == NEVER  # read-only
    assert DATA_PERMISSIONS[0b011].read == KEY_B
    assert DATA_PERMISSIONS[0b111].read == NEVER
    assert TRAILER_PERMISSIONS[0b001].write_access == KEY_A
    assert TRAILER_PERMISSIONS[0b101].write_access == KEY_B
    assert TRAILER_PERMISSIONS[0b101].write_key_a == NEVER
    for bits in range(8):
        assert DATA_PERMISSIONS[bits].read == sim.DATA_RIGHTS[bits].read
        assert DATA_PERMISSIONS[bits].write == sim.DATA_RIGHTS[bits].write
        ours, theirs = TRAILER_PERMISSIONS[bits], sim.TRAILER_RIGHTS[bits]
        assert (
            ours.write_key_a,
            ours.read_access,
            ours.write_access,
            ours.read_key_b,
            ours.write_key_b,
        ) == (
            theirs.write_key_a,
            theirs.read_access,
            theirs.write_access,
            theirs.read_key_b,
            theirs.write_key_b,
        )


# -- SectorTrailer ----------------------------------------------------------------------------


def test_sector_trailer_layout_and_round_trip():
    t = trailer(STUDENT_ACCESS)
    raw = t.to_bytes()
    assert raw == KEY_A_VALUE + STUDENT_ACCESS + b"\x69" + KEY_B_VALUE
    assert SectorTrailer.from_bytes(raw) == t
    assert t.bits == AccessBits.parse("100 100 100 011")
    assert TRANSPORT_TRAILER.to_bytes() == sim.TRANSPORT_TRAILER
    built = SectorTrailer.build(
        key_a=KEY_A_VALUE, bits=AccessBits.uniform(0b100, 0b011), key_b=KEY_B_VALUE
    )
    assert built == t


def test_sector_trailer_refuses_invalid_access_bits_at_construction():
    with pytest.raises(UnsafeTrailer, match="inverted copy"):
        trailer(bytes.fromhex("000000"))
    with pytest.raises(UnsafeTrailer):
        SectorTrailer.from_bytes(b"\x00" * 16)  # an all-zero block written to a trailer


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key_a": b"\x01" * 5},
        {"key_b": b"\x01" * 7},
        {"access": b"\xff\x07"},
        {"gpb": 256},
    ],
)
def test_sector_trailer_field_sizes(kwargs):
    fields = {"key_a": KEY_A_VALUE, "access": STUDENT_ACCESS, "gpb": 0x69, "key_b": KEY_B_VALUE}
    fields.update(kwargs)
    with pytest.raises(InvalidInput):
        SectorTrailer(**fields)


def test_sector_trailer_repr_hides_keys():
    t = trailer(STUDENT_ACCESS)
    for text in (repr(t), str(t), f"{t}", repr([t])):
        assert "A0A1A2A3A4A5" not in text.upper() and "B0B1B2B3B4B5" not in text.upper()
        assert "787788" in text


# -- check_trailer_safe -----------------------------------------------------------------------


def test_student_personalization_is_safe():
    check_trailer_safe(trailer(STUDENT_ACCESS), writer_key=A, keys_we_hold=BOTH)
    check_trailer_safe(trailer(STUDENT_ACCESS), writer_key=B, keys_we_hold=BOTH)
    # with the transport trailer's current bits read from a blank card, key A writes everything
    check_trailer_safe(
        trailer(STUDENT_ACCESS), writer_key=A, keys_we_hold=BOTH, current=TRANSPORT_ACCESS + b"\x69"
    )


def test_invalid_bits_are_refused_even_when_the_constructor_was_bypassed():
    with pytest.raises(UnsafeTrailer, match="block the sector for ever"):
        check_trailer_safe(
            unchecked_trailer(bytes.fromhex("787789")), writer_key=B, keys_we_hold=BOTH
        )


@pytest.mark.parametrize("trailer_bits", [0b010, 0b110, 0b111])
def test_frozen_trailer_is_refused_unless_allowed(trailer_bits):
    t = trailer(AccessBits.uniform(0b100, trailer_bits))
    with pytest.raises(UnsafeTrailer, match="freeze the trailer"):
        check_trailer_safe(t, writer_key=B, keys_we_hold=BOTH)
    problems = trailer_problems(
        t, writer_key=B, keys_we_hold=BOTH, policy=TrailerPolicy(allow_freeze=True, required=None)
    )
    assert not any("freeze" in p or "locked out" in p for p in problems)


@pytest.mark.parametrize("trailer_bits", [0b000, 0b100])
def test_access_bits_fixed_for_good_are_refused_unless_allowed(trailer_bits):
    t = trailer(AccessBits.uniform(0b100, trailer_bits))
    with pytest.raises(UnsafeTrailer, match="fix the access bits"):
        check_trailer_safe(t, writer_key=B, keys_we_hold=BOTH)


def test_locked_out_when_no_key_we_hold_could_write_the_trailer_again():
    # trailer 011: only key B manages the trailer; holding only key A locks us out
    t = trailer(STUDENT_ACCESS)
    with pytest.raises(UnsafeTrailer, match="locked out"):
        check_trailer_safe(t, writer_key=A, keys_we_hold={A}, policy=TrailerPolicy(required=None))
    # trailer 001 makes key B readable: holding B alone is holding no usable key at all
    with pytest.raises(UnsafeTrailer, match="could authenticate"):
        check_trailer_safe(
            trailer(TRANSPORT_ACCESS),
            writer_key=B,
            keys_we_hold={B},
            policy=TrailerPolicy(required=None),
        )


def test_design_needs_key_a_to_read_and_key_b_to_write():
    # data 011: key A cannot read the record
    with pytest.raises(UnsafeTrailer, match="do not let key A read"):
        check_trailer_safe(
            trailer(AccessBits.uniform(0b011, 0b011)), writer_key=B, keys_we_hold=BOTH
        )
    # data 010: read-only, key B cannot write
    with pytest.raises(UnsafeTrailer, match="do not let key B write"):
        check_trailer_safe(
            trailer(AccessBits.uniform(0b010, 0b011)), writer_key=B, keys_we_hold=BOTH
        )
    # transport-like 000/001: key B is readable and could not authenticate to write
    with pytest.raises(UnsafeTrailer, match="key B would be readable"):
        check_trailer_safe(
            trailer(AccessBits.uniform(0b000, 0b001)), writer_key=A, keys_we_hold=BOTH
        )
    # one group of the record wrong is enough
    with pytest.raises(UnsafeTrailer, match=r"group 2"):
        check_trailer_safe(
            trailer(AccessBits((0b100, 0b100, 0b111, 0b011))), writer_key=B, keys_we_hold=BOTH
        )
    # ... unless the policy says the record lives only in groups 0 and 1
    check_trailer_safe(
        trailer(AccessBits((0b100, 0b100, 0b111, 0b011))),
        writer_key=B,
        keys_we_hold=BOTH,
        policy=TrailerPolicy(required=RecordAccess(groups=(0, 1))),
    )
    with pytest.raises(UnsafeTrailer, match="would not hold it"):
        check_trailer_safe(
            trailer(AccessBits.uniform(0b100, 0b101)),
            writer_key=B,
            keys_we_hold={B},
            policy=TrailerPolicy(required=RecordAccess(read=KEY_A, write=KEY_B)),
        )


def test_transport_and_zero_keys():
    with pytest.raises(UnsafeTrailer, match="key A is the public transport key"):
        check_trailer_safe(
            trailer(STUDENT_ACCESS, key_a=TRANSPORT_KEY), writer_key=B, keys_we_hold=BOTH
        )
    with pytest.raises(UnsafeTrailer, match="key B is the public transport key"):
        check_trailer_safe(
            trailer(STUDENT_ACCESS, key_b=TRANSPORT_KEY), writer_key=B, keys_we_hold=BOTH
        )
    not_personalizing = TrailerPolicy(personalize=False)
    check_trailer_safe(
        trailer(STUDENT_ACCESS, key_a=TRANSPORT_KEY),
        writer_key=B,
        keys_we_hold=BOTH,
        policy=not_personalizing,
    )
    # zeros are refused under every policy: they are what a read-modify-write writes
    for policy in (STUDENT_POLICY, not_personalizing):
        with pytest.raises(UnsafeTrailer, match="all zeros"):
            check_trailer_safe(
                trailer(STUDENT_ACCESS, key_a=b"\x00" * 6),
                writer_key=B,
                keys_we_hold=BOTH,
                policy=policy,
            )


def test_restoring_transport_configuration_needs_an_explicit_policy():
    reset = TrailerPolicy(required=None, personalize=False)
    t = TRANSPORT_TRAILER
    with pytest.raises(UnsafeTrailer):
        check_trailer_safe(t, writer_key=B, keys_we_hold=BOTH)
    check_trailer_safe(t, writer_key=B, keys_we_hold=BOTH, policy=reset)


def test_all_reasons_are_reported_together():
    t = trailer(AccessBits.uniform(0b011, 0b110), key_a=TRANSPORT_KEY)
    with pytest.raises(UnsafeTrailer) as info:
        check_trailer_safe(t, writer_key=B, keys_we_hold=BOTH)
    message = info.value.message
    assert "transport key" in message and "freeze" in message and "read the record" in message
    assert info.value.code == "unsafe_trailer"


@pytest.mark.parametrize(
    ("current", "writer", "match"),
    [
        # blank card: key B is readable, it cannot write anything
        ("FF078069", B, "readable"),
        # 100: key B writes the keys but the access bits never change again
        (AccessBits.uniform(0b100, 0b100).to_bytes().hex() + "69", B, "change the access bits"),
        # 011: key A only reads
        ("78778869", A, "write key A"),
        # 101: key B writes the access bits but never the keys
        (AccessBits.uniform(0b100, 0b101).to_bytes().hex() + "69", B, "write key B"),
        ("00000000", B, "invalid"),
    ],
)
def test_partial_writes_are_refused_once_the_current_bits_are_known(current, writer, match):
    with pytest.raises(UnsafeTrailer, match=match):
        check_trailer_safe(
            trailer(STUDENT_ACCESS),
            writer_key=writer,
            keys_we_hold=BOTH,
            current=bytes.fromhex(current),
        )


def test_a_writer_that_cannot_change_the_access_bits_may_still_rekey_when_they_stay():
    current = AccessBits.uniform(0b100, 0b100).to_bytes()
    t = trailer(current)
    check_trailer_safe(
        t,
        writer_key=B,
        keys_we_hold=BOTH,
        policy=TrailerPolicy(allow_freeze=True),
        current=current + b"\x69",
    )
