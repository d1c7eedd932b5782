# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import random
import zlib

import pytest

from cardd import errors as E
from cardd.rfid.idnumber import LibraryNumber, check_digit
from cardd.rfid.record import (
    RECORD_VERSION,
    WRITE_ORDER,
    RecordResult,
    RecordState,
    decode_record,
    encode_record,
)

X = LibraryNumber("A123456789", 0)
EMPTY = (bytes(16), bytes(16), bytes(16))


def crc_be(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def test_encode_matches_the_contract_byte_for_byte():
    b0, b1, b2 = encode_record(X)
    assert b0 == bytes.fromhex("4C42 01") + b"A12345678900" + b"\x00"
    assert b0.hex().upper() == "4C4201413132333435363738393030" + "00"
    assert b1[:12] == bytes(12)
    assert b1[12:] == crc_be(b0 + bytes(12))
    assert b2 == bytes(16)
    assert all(len(b) == 16 for b in (b0, b1, b2))
    assert RECORD_VERSION == 1 and b0[2] == RECORD_VERSION


def test_roundtrip():
    for number in [X, X.next(), LibraryNumber("AC01234567", 99), LibraryNumber("A800000014", 5)]:
        blocks = encode_record(number)
        assert decode_record(*blocks) == RecordResult(RecordState.VALID, number=number)
        assert decode_record(blocks[0], blocks[1]).number == number  # block 2 optional
        assert decode_record(*blocks).check() == number


def test_empty_sector():
    assert decode_record(*EMPTY) == RecordResult(RecordState.EMPTY)
    assert decode_record(*EMPTY).check() is None
    # block 0 zero means no record whatever else is there; the leftovers are noted
    r = decode_record(bytes(16), encode_record(X)[1], b"\x01" * 16)
    assert r.state is RecordState.EMPTY and r.number is None
    assert "block 1" in (r.reason or "") and "block 2" in (r.reason or "")


def test_foreign_sector():
    easycard_like = bytes.fromhex("0102030405060708090A0B0C0D0E0F10")
    r = decode_record(easycard_like, bytes(16), bytes(16))
    assert r.state is RecordState.FOREIGN and "not a cardd record" in (r.reason or "")
    with pytest.raises(E.RecordForeign) as info:
        r.check()
    assert info.value.code == "record_foreign" and isinstance(info.value, E.CardDataInvalid)


def with_crc(b0: bytes, reserved: bytes = bytes(12)) -> tuple[bytes, bytes]:
    return b0, reserved + crc_be(b0 + reserved)


@pytest.mark.parametrize(
    ("blocks", "reason"),
    [
        # the CRC does not match the content
        ((encode_record(X)[0], bytes(16), bytes(16)), "CRC does not match"),
        ((encode_record(X.next())[0], encode_record(X)[1], bytes(16)), "CRC does not match"),
        (
            (encode_record(X)[0][:-1] + b"\x01", encode_record(X)[1], bytes(16)),
            "CRC does not match",
        ),
        # the CRC matches, but the content is not what version 1 writes
        (
            (*with_crc(b"LB\x02" + b"A12345678900" + b"\x00"), bytes(16)),
            "version 2 is not supported",
        ),
        (
            (*with_crc(b"LB\x01" + b"A12345678900" + b"\x20"), bytes(16)),
            "byte after the library number",
        ),
        (
            (*with_crc(b"LB\x01" + b"A12345678900" + b"\x00", b"\x01" + bytes(11)), bytes(16)),
            "reserved bytes",
        ),
        ((*encode_record(X)[:2], b"\x00" * 15 + b"\x01"), "block 2 is not zero"),
        ((*with_crc(b"LB\x01" + b"a12345678900" + b"\x00"), bytes(16)), "characters other than"),
        ((*with_crc(b"LB\x01" + b"A1234567890 " + b"\x00"), bytes(16)), "characters other than"),
        (
            (*with_crc(b"LB\x01" + "A12345678９".encode()[:12] + b"\x00"), bytes(16)),
            "characters other than",
        ),
        ((*with_crc(b"LB\x01" + b"A12345678800" + b"\x00"), bytes(16)), "check digit"),
        ((*with_crc(b"LB\x01" + b"A32345678900" + b"\x00"), bytes(16)), "second character"),
    ],
)
def test_corrupt_records_say_why(blocks, reason):
    r = decode_record(*blocks)
    assert r.state is RecordState.CORRUPT and r.number is None
    assert reason in (r.reason or "")
    assert "A12345678" not in (r.reason or "")  # never a full ID in a reason
    with pytest.raises(E.RecordCorrupt) as info:
        r.check()
    assert info.value.code == "record_corrupt" and isinstance(info.value, E.CardDataInvalid)


@pytest.mark.parametrize(
    "blocks",
    [
        (bytes(15), bytes(16), bytes(16)),
        (bytes(16), bytes(17), bytes(16)),
        (bytes(16), bytes(16), bytes(0)),
        ("LB", bytes(16), None),
        (16, bytes(16), None),  # bytes(16) would have made zeros of it: refused instead
    ],
)
def test_wrong_block_lengths_raise_card_data_invalid(blocks):
    with pytest.raises(E.CardDataInvalid):
        decode_record(*blocks)


def test_result_invariant():
    with pytest.raises(ValueError):
        RecordResult(RecordState.VALID)
    with pytest.raises(ValueError):
        RecordResult(RecordState.CORRUPT, number=X)


# --- torn writes ---------------------------------------------------------------------------------


def random_number(rng: random.Random) -> LibraryNumber:
    prefix = rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + rng.choice("1289ABCD")
    prefix += "".join(rng.choice("0123456789") for _ in range(7))
    return LibraryNumber(prefix + str(check_digit(prefix)), rng.randrange(100))


def torn_states(old: tuple[bytes, bytes, bytes], new: tuple[bytes, bytes, bytes]):
    """Every state a card can be left in by a burn of `new` over `old` in WRITE_ORDER.

    Whole-block tears (pulled between two writes) and in-block tears (the block being written
    holds a mix of old and new bytes, or garbage)."""
    rng = random.Random(old[0] + new[0])
    for k in range(len(WRITE_ORDER) + 1):
        state = list(old)
        for index in WRITE_ORDER[:k]:
            state[index] = new[index]
        yield k, None, tuple(state)
        if k < len(WRITE_ORDER):
            index = WRITE_ORDER[k]
            for cut in range(1, 16):
                mixed = list(state)
                mixed[index] = new[index][:cut] + state[index][cut:]
                yield k, f"prefix {cut}", tuple(mixed)
            for _ in range(4):
                mixed = list(state)
                mixed[index] = rng.randbytes(16)
                yield k, "garbage", tuple(mixed)


def assert_never_a_third_number(old_number, new_number, old, new):
    for k, how, state in torn_states(old, new):
        r = decode_record(*state)
        if r.state is RecordState.VALID:
            assert r.number in (old_number, new_number), (k, how)
            assert state == encode_record(r.number), (k, how)  # the complete record, not a mix
        # and a torn write is never mistaken for an intact new record unless it is one
        if r.number == new_number:
            assert state == new


def test_write_order_commits_with_the_crc_block_last():
    assert sorted(WRITE_ORDER) == [0, 1, 2]
    assert WRITE_ORDER[-1] == 1  # the block holding the CRC
    assert WRITE_ORDER.index(0) < WRITE_ORDER.index(1)


@pytest.mark.parametrize(
    ("old_number", "new_number"),
    [
        (None, X),  # first burn onto an empty sector
        (X, X.next()),  # reissue: same ID, next suffix
        (LibraryNumber("A123456789", 41), LibraryNumber("A123456789", 42)),
        (LibraryNumber("AC01234567", 0), X),  # card re-used for someone else
        (X, LibraryNumber("A800000014", 0)),
    ],
)
def test_torn_write_enumeration(old_number, new_number):
    old = EMPTY if old_number is None else encode_record(old_number)
    new = encode_record(new_number)
    seen = {}
    for k, how, state in torn_states(old, new):
        if how is None:
            seen[k] = decode_record(*state)
    # before any write: the old card; after all writes: the new record
    assert seen[0] == decode_record(*old)
    assert seen[len(WRITE_ORDER)] == RecordResult(RecordState.VALID, number=new_number)
    # after block 2 only: unchanged (block 2 is zero in both)
    assert seen[1] == decode_record(*old)
    # after block 0 but before the CRC block: corrupt, never the new (or a wrong) number
    assert seen[2].state is RecordState.CORRUPT
    assert "CRC" in (seen[2].reason or "")
    assert_never_a_third_number(old_number, new_number, old, new)


def test_torn_writes_between_random_numbers():
    rng = random.Random(42)
    for _ in range(150):
        a, b = random_number(rng), random_number(rng)
        assert_never_a_third_number(a, b, encode_record(a), encode_record(b))
        assert_never_a_third_number(None, b, EMPTY, encode_record(b))


# --- fuzz: decode is total -----------------------------------------------------------------------


def test_decode_never_raises_on_16_byte_blocks():
    rng = random.Random(99)
    numbers = [random_number(rng) for _ in range(20)]
    for i in range(4000):
        choice = i % 4
        if choice == 0:  # pure noise
            b0 = rng.randbytes(16)
        elif choice == 1:  # magic and version right, the rest noise
            b0 = b"LB\x01" + rng.randbytes(13)
        elif choice == 2:  # printable ASCII where the number goes
            b0 = b"LB\x01" + bytes(rng.randrange(0x20, 0x7F) for _ in range(12)) + b"\x00"
        else:  # a real record with one byte flipped
            raw = bytearray(encode_record(rng.choice(numbers))[0])
            raw[rng.randrange(16)] ^= 1 << rng.randrange(8)
            b0 = bytes(raw)
        reserved = bytes(12) if rng.random() < 0.8 else rng.randbytes(12)
        # often give it the right CRC, so the content checks behind it are exercised too
        b1 = reserved + (crc_be(b0 + reserved) if rng.random() < 0.7 else rng.randbytes(4))
        b2 = rng.choice([None, bytes(16), rng.randbytes(16)])
        r = decode_record(b0, b1, b2)
        assert r.state in RecordState
        if r.state is RecordState.VALID:
            assert r.number is not None
            assert encode_record(r.number)[:2] == (b0, b1)
        else:
            assert r.number is None and (r.reason or r.state is RecordState.EMPTY)
