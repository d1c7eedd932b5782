# SPDX-License-Identifier: Apache-2.0
"""The student-card record codec (product.md "Student card record (MIFARE Classic 1K/4K)").

One sector of the card; blocks are numbered here relative to the sector (0, 1, 2; block 3 is
the sector trailer, which this module never touches)::

    block 0   4C 42 | 01 | 12 ASCII characters of the library number | 00
    block 1   00 x 12 | CRC-32 (zlib.crc32, big-endian) of block 0 + block 1 bytes 0-11
    block 2   00 x 16

Decoding is total: for three 16-byte blocks it always answers a :class:`RecordResult` and never
raises, whatever the card holds (it is fuzzed). The states:

- ``empty``: block 0 is all zero, so the sector holds no record (the contract's rule, whatever
  blocks 1 and 2 hold; leftovers there are mentioned in ``reason``).
- ``valid``: every check passed; ``number`` is the library number.
- ``corrupt``: it is a cardd record ("LB") but a check fails: the version, the CRC (a torn or
  foreign write), the padding or reserved bytes, the characters, the ID checksum. A CRC mismatch
  is never reported as a number.
- ``foreign``: block 0 is not zero and does not start with "LB". A decision: this is kept apart
  from ``corrupt`` because the right action differs. A corrupt cardd record is ours to rewrite
  (typically a card pulled during a burn); a foreign sector may be someone else's data (the
  configured sector may be in use on some cards), so a burner should refuse it unless told
  otherwise. Caveat: a block 0 torn in the middle of its own write can hold anything, so a
  burner resuming its own pending burn on the same UID (the ledger knows) may overwrite it.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from enum import StrEnum

from cardd.errors import CardDataInvalid, InvalidInput, RecordCorrupt, RecordForeign
from cardd.rfid.idnumber import LIBRARY_NUMBER_LENGTH, LibraryNumber, parse_library_number

BLOCK_SIZE = 16
MAGIC = b"LB"
RECORD_VERSION = 1
#: blocks of the sector the record uses, relative to the sector's first block
RECORD_BLOCKS: tuple[int, ...] = (0, 1, 2)

#: The order in which a burner must write the record's blocks (relative indexes).
#:
#: Block 1 carries the CRC over block 0 and its own reserved bytes, so it is written last and
#: acts as the commit: until it is written, the card does not hold a record that checks out
#: unless it already holds the complete new one. Proof for a card pulled between two writes
#: (block writes themselves are taken as whole; a block torn inside its own write holds
#: garbage, which the CRC or the magic catches):
#:
#: - after block 2 (first): block 2 is zero in every record and every empty sector we write
#:   over, so the card decodes exactly as before (the complete old record, or empty). It goes
#:   first so that a sector with junk in block 2 is cleaned before the commit, not after.
#: - after block 0: the card holds the new block 0 and the old block 1. The old block 1 is
#:   twelve zero bytes and a CRC (from an old record, or all zero on an empty sector), so the
#:   stored CRC matches the new block 0 only if it equals the new CRC, that is only if the old
#:   block 1 is byte for byte the new block 1: then the card holds the complete new record.
#:   In every other case the CRC does not match and the record decodes as ``corrupt``.
#:
#: So every torn state decodes as the complete old record, the complete new record, or corrupt;
#: never as some third number. (The other order, CRC first, is also safe by the same argument,
#: but leaves the old number readable after a torn reissue, which the ledger has superseded.)
#: A burner may skip a write whose block already holds the target bytes, keeping this order.
WRITE_ORDER: tuple[int, ...] = (2, 0, 1)

_ZERO_BLOCK = bytes(BLOCK_SIZE)
_RESERVED = slice(0, 12)  # block 1 bytes covered by the CRC, zero in version 1
_CRC = slice(12, 16)
_NUMBER = slice(3, 3 + LIBRARY_NUMBER_LENGTH)
_PAD_INDEX = 15
# Exactly what encode_record writes: upper-case letters and digits, no lowercase, no spaces.
_CANONICAL_NUMBER = re.compile(rb"[A-Z][A-Z0-9][0-9]{10}")


class RecordState(StrEnum):
    EMPTY = "empty"
    VALID = "valid"
    CORRUPT = "corrupt"
    FOREIGN = "foreign"


@dataclass(frozen=True)
class RecordResult:
    """What a record sector holds. ``number`` is set exactly when ``state`` is ``valid``."""

    state: RecordState
    number: LibraryNumber | None = None
    #: why the record is corrupt or foreign, or a note on an empty one; for people, never a
    #: full number
    reason: str | None = None

    def __post_init__(self) -> None:
        if (self.state is RecordState.VALID) != (self.number is not None):
            raise ValueError("a RecordResult has a number exactly when it is valid")

    @property
    def is_valid(self) -> bool:
        return self.state is RecordState.VALID

    def check(self) -> LibraryNumber | None:
        """The library number, or None for an empty sector.

        :raises RecordCorrupt: for a corrupt record.
        :raises RecordForeign: for a sector holding data cardd did not write.
        """
        if self.state is RecordState.CORRUPT:
            raise RecordCorrupt(f"the card's library-number record is corrupt: {self.reason}")
        if self.state is RecordState.FOREIGN:
            raise RecordForeign(f"the record sector holds data cardd did not write: {self.reason}")
        return self.number


def _crc(block0: bytes, reserved: bytes) -> bytes:
    return zlib.crc32(block0 + reserved).to_bytes(4, "big")


def encode_record(number: LibraryNumber) -> tuple[bytes, bytes, bytes]:
    """The three blocks (relative 0, 1, 2) holding ``number``; write them in :data:`WRITE_ORDER`."""
    text = str(number).encode("ascii")
    if len(text) != LIBRARY_NUMBER_LENGTH:  # LibraryNumber guarantees it; a cheap guard
        raise InvalidInput("a library number is 12 characters")
    block0 = MAGIC + bytes([RECORD_VERSION]) + text + b"\x00"
    reserved = bytes(12)
    block1 = reserved + _crc(block0, reserved)
    return block0, block1, _ZERO_BLOCK


def _as_block(name: str, block: object) -> bytes:
    if not isinstance(block, bytes | bytearray | memoryview):
        raise CardDataInvalid(f"{name} must be bytes, not {type(block).__name__}")
    data = bytes(block)
    if len(data) != BLOCK_SIZE:
        raise CardDataInvalid(f"{name} must be {BLOCK_SIZE} bytes (got {len(data)})")
    return data


def _corrupt(reason: str) -> RecordResult:
    return RecordResult(RecordState.CORRUPT, reason=reason)


def decode_record(block0: bytes, block1: bytes, block2: bytes | None = None) -> RecordResult:
    """What the record blocks hold.

    :param block2: checked to be zero when given; callers that read only blocks 0 and 1 pass None.
    :raises CardDataInvalid: only when a block is not 16 bytes; all contents give a result.
    """
    b0 = _as_block("block 0", block0)
    b1 = _as_block("block 1", block1)
    b2 = None if block2 is None else _as_block("block 2", block2)

    if b0 == _ZERO_BLOCK:
        leftovers = [
            name
            for name, b in (("block 1", b1), ("block 2", b2))
            if b is not None and b != _ZERO_BLOCK
        ]
        note = f"{' and '.join(leftovers)} not zero (leftovers)" if leftovers else None
        return RecordResult(RecordState.EMPTY, reason=note)
    if b0[:2] != MAGIC:
        return RecordResult(
            RecordState.FOREIGN, reason='not a cardd record: block 0 does not start with "LB"'
        )
    if b0[2] != RECORD_VERSION:
        return _corrupt(
            f"record version {b0[2]} is not supported (this cardd reads version {RECORD_VERSION})"
        )
    # The CRC comes before the content checks: when it fails, nothing else in the blocks can be
    # trusted, and "torn or foreign write" is the useful diagnosis.
    if b1[_CRC] != _crc(b0, b1[_RESERVED]):
        return _corrupt(
            "the CRC does not match: the record was torn (card removed during a write) or written by something else"
        )
    if b0[_PAD_INDEX] != 0:
        return _corrupt("the byte after the library number is not 00")
    if b1[_RESERVED] != bytes(12):
        return _corrupt("the reserved bytes of block 1 are not zero")
    if b2 is not None and b2 != _ZERO_BLOCK:
        return _corrupt("block 2 is not zero")
    raw = b0[_NUMBER]
    if not _CANONICAL_NUMBER.fullmatch(raw):
        return _corrupt(
            "the library number has characters other than A-Z and 0-9 where they do not belong"
        )
    try:
        number = parse_library_number(raw.decode("ascii"))
    except InvalidInput as e:
        # the message names the failed rule with the number masked
        return _corrupt(f"the number on the card is not valid ({e.message})")
    return RecordResult(RecordState.VALID, number=number)
