# SPDX-License-Identifier: Apache-2.0
"""MIFARE Classic sector trailers and access bits, with the checks that keep a sector alive.

contactless.md §6 is the source for every table here (NXP MF1S50YYX §8.6-8.7). A trailer write
is the one MIFARE operation that cannot be undone, so this module refuses, *before* anything is
sent to a card, every trailer that would

* block the sector for good (inverted copy of the access bits does not match),
* freeze the trailer (trailer bits ``010``, ``110``, ``111``), or fix the access bits for good
  (``000``, ``100``), unless the policy explicitly allows freezing,
* lock us out (no key we hold could write the trailer again),
* stop our own design from working (key A must read the record, key B must write it),
* set an all-zero key (the signature of a read-modify-write: keys read back as zeros), or, when
  personalizing, leave the public transport key in place.

C1C2C3 values are written as a 3-bit number with C1 as the high bit, so ``0b100`` reads like the
datasheet's "100". Group 0-2 are the data blocks (on the 16-block sectors of a 4K card, groups of
five blocks: 0-4, 5-9, 10-14) and group 3 is the trailer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

from cardd.errors import InvalidInput, UnsafeTrailer

KEY_SIZE = 6
ACCESS_SIZE = 3
TRAILER_SIZE = 16

#: The key of a new card (and of every sector nobody has personalized): public knowledge.
TRANSPORT_KEY = b"\xff" * KEY_SIZE
#: An all-zero key is what a read-modify-write of a trailer writes (keys read back as zeros).
ZERO_KEY = b"\x00" * KEY_SIZE
#: The general purpose byte of a new card's trailers.
TRANSPORT_GPB = 0x69

#: ``FF 07 80``: data blocks 000 (A or B do everything), trailer 001 (key A manages everything,
#: key B is readable and so cannot authenticate).
TRANSPORT_ACCESS = bytes.fromhex("FF0780")
#: ``78 77 88``: data blocks 100 (read A or B, write B), trailer 011 (key B writes keys and
#: access bits, key A only reads the access bits). The student-card record layout.
STUDENT_ACCESS = bytes.fromhex("787788")

DATA_GROUPS: tuple[int, int, int] = (0, 1, 2)
TRAILER_GROUP = 3


class KeyType(IntEnum):
    """Key type byte of GENERAL AUTHENTICATE (the MIFARE AUTH command codes)."""

    A = 0x60
    B = 0x61


Keys = frozenset[KeyType]
NEVER: Keys = frozenset()
KEY_A: Keys = frozenset({KeyType.A})
KEY_B: Keys = frozenset({KeyType.B})
KEY_A_OR_B: Keys = frozenset({KeyType.A, KeyType.B})


@dataclass(frozen=True)
class DataPermissions:
    """Who may do what to a data block under one C1C2C3 value."""

    read: Keys
    write: Keys
    increment: Keys
    #: decrement, transfer and restore share one condition
    decrement: Keys


@dataclass(frozen=True)
class TrailerPermissions:
    """Who may do what to the fields of a sector trailer under one C1C2C3 value.

    Key A is never readable, under any bits.
    """

    write_key_a: Keys
    read_access: Keys
    write_access: Keys
    read_key_b: Keys
    write_key_b: Keys

    @property
    def writers(self) -> Keys:
        """Keys that may write at least one field of the trailer."""
        return self.write_key_a | self.write_access | self.write_key_b


#: Data blocks (contactless.md §6; increment/decrement from MF1S50YYX table 8).
DATA_PERMISSIONS: dict[int, DataPermissions] = {
    0b000: DataPermissions(KEY_A_OR_B, KEY_A_OR_B, KEY_A_OR_B, KEY_A_OR_B),
    0b010: DataPermissions(KEY_A_OR_B, NEVER, NEVER, NEVER),
    0b100: DataPermissions(KEY_A_OR_B, KEY_B, NEVER, NEVER),
    0b110: DataPermissions(KEY_A_OR_B, KEY_B, KEY_B, KEY_A_OR_B),
    0b001: DataPermissions(KEY_A_OR_B, NEVER, NEVER, KEY_A_OR_B),
    0b011: DataPermissions(KEY_B, KEY_B, NEVER, NEVER),
    0b101: DataPermissions(KEY_B, NEVER, NEVER, NEVER),
    0b111: DataPermissions(NEVER, NEVER, NEVER, NEVER),
}

#: Sector trailers (contactless.md §6 / MF1S50YYX table 7).
TRAILER_PERMISSIONS: dict[int, TrailerPermissions] = {
    0b000: TrailerPermissions(KEY_A, KEY_A, NEVER, KEY_A, KEY_A),
    0b010: TrailerPermissions(NEVER, KEY_A, NEVER, KEY_A, NEVER),
    0b100: TrailerPermissions(KEY_B, KEY_A_OR_B, NEVER, NEVER, KEY_B),
    0b110: TrailerPermissions(NEVER, KEY_A_OR_B, NEVER, NEVER, NEVER),
    0b001: TrailerPermissions(KEY_A, KEY_A, KEY_A, KEY_A, KEY_A),
    0b011: TrailerPermissions(KEY_B, KEY_A_OR_B, KEY_B, NEVER, KEY_B),
    0b101: TrailerPermissions(NEVER, KEY_A_OR_B, KEY_B, NEVER, NEVER),
    0b111: TrailerPermissions(NEVER, KEY_A_OR_B, NEVER, NEVER, NEVER),
}

#: Trailer bits under which no field of the trailer can ever be written again.
FROZEN_TRAILER_BITS = frozenset({0b010, 0b110, 0b111})
#: Trailer bits under which the access bits can never change again (the keys still can).
FIXED_ACCESS_TRAILER_BITS = frozenset({0b000, 0b100})


def format_bits(value: int) -> str:
    """``0b011`` -> ``"011"`` (C1 C2 C3), the datasheet's notation."""
    return format(value, "03b")


def _key_names(keys: Iterable[KeyType]) -> str:
    names = sorted(k.name for k in keys)
    return " or ".join(names) if names else "no key"


@dataclass(frozen=True)
class AccessBits:
    """The decoded access bits of one sector: C1C2C3 for data groups 0, 1, 2 and the trailer."""

    #: C1C2C3 per group as a 3-bit number, C1 the high bit; index 3 is the trailer
    groups: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        if len(self.groups) != 4 or any(not 0 <= g <= 7 for g in self.groups):
            raise InvalidInput("access bits are four 3-bit C1C2C3 values")

    @classmethod
    def parse(cls, text: str) -> AccessBits:
        """From the datasheet notation, e.g. ``"100 100 100 011"`` (groups 0, 1, 2, trailer)."""
        parts = text.split()
        if len(parts) != 4 or any(len(p) != 3 or set(p) - {"0", "1"} for p in parts):
            raise InvalidInput("access bits are four groups of three 0/1 digits")
        g = [int(p, 2) for p in parts]
        return cls((g[0], g[1], g[2], g[3]))

    @classmethod
    def uniform(cls, data: int, trailer: int) -> AccessBits:
        """The same bits on all three data groups."""
        return cls((data, data, data, trailer))

    def data(self, group: int) -> DataPermissions:
        if group not in DATA_GROUPS:
            raise InvalidInput(f"data block group is 0, 1 or 2, not {group}")
        return DATA_PERMISSIONS[self.groups[group]]

    @property
    def trailer_bits(self) -> int:
        return self.groups[TRAILER_GROUP]

    @property
    def trailer(self) -> TrailerPermissions:
        return TRAILER_PERMISSIONS[self.trailer_bits]

    @property
    def key_b_readable(self) -> bool:
        """A readable key B is data, not a key: the card refuses it for authentication."""
        return bool(self.trailer.read_key_b)

    def usable(self, keys: Iterable[KeyType]) -> Keys:
        """The keys out of ``keys`` that can authenticate under these bits."""
        usable = frozenset(keys)
        return usable - KEY_B if self.key_b_readable else usable

    def to_bytes(self) -> bytes:
        return encode_access(self)

    def __str__(self) -> str:
        return " ".join(format_bits(g) for g in self.groups)


def encode_access(bits: AccessBits) -> bytes:
    """Trailer bytes 6-8: each of C1, C2, C3 for every group, true and inverted (§6 packing)."""
    c1 = c2 = c3 = 0
    for y, g in enumerate(bits.groups):
        c1 |= ((g >> 2) & 1) << y
        c2 |= ((g >> 1) & 1) << y
        c3 |= (g & 1) << y
    return bytes(
        (
            (~c2 & 0x0F) << 4 | (~c1 & 0x0F),
            c1 << 4 | (~c3 & 0x0F),
            c3 << 4 | c2,
        )
    )


def decode_access(b: bytes) -> AccessBits | None:
    """Decode trailer bytes 6-8. None when the inverted copy does not match.

    None is not a parse error to shrug at: a card holding such bits has blocked the sector for
    good, and a host writing them blocks it.
    """
    if len(b) != ACCESS_SIZE:
        raise InvalidInput(f"access bits are {ACCESS_SIZE} bytes, not {len(b)}")
    b6, b7, b8 = b[0], b[1], b[2]
    c1, c2, c3 = b7 >> 4, b8 & 0x0F, b8 >> 4
    if (b6 & 0x0F) != (~c1 & 0x0F) or (b6 >> 4) != (~c2 & 0x0F) or (b7 & 0x0F) != (~c3 & 0x0F):
        return None
    g = [((c1 >> y) & 1) << 2 | ((c2 >> y) & 1) << 1 | ((c3 >> y) & 1) for y in range(4)]
    return AccessBits((g[0], g[1], g[2], g[3]))


@dataclass(frozen=True, kw_only=True, repr=False)
class SectorTrailer:
    """A 16-byte sector trailer built from named fields: ``KeyA | access | GPB | KeyB``.

    Construction fails when the access bits' inverted copy does not match, so a trailer that
    would block its sector cannot even be built. ``repr`` never shows the keys.
    """

    key_a: bytes
    access: bytes
    gpb: int = TRANSPORT_GPB
    key_b: bytes

    def __post_init__(self) -> None:
        for name in ("key_a", "access", "key_b"):
            object.__setattr__(self, name, bytes(getattr(self, name)))
        if len(self.key_a) != KEY_SIZE or len(self.key_b) != KEY_SIZE:
            raise InvalidInput(f"sector trailer keys are {KEY_SIZE} bytes each")
        if not 0 <= self.gpb <= 0xFF:
            raise InvalidInput("the general purpose byte is one byte")
        if len(self.access) != ACCESS_SIZE:
            raise InvalidInput(f"access bits are {ACCESS_SIZE} bytes, not {len(self.access)}")
        if decode_access(self.access) is None:
            raise UnsafeTrailer(
                f"access bits {self.access.hex(' ').upper()}: the inverted copy does not match; "
                "writing them would block the sector for ever"
            )

    @classmethod
    def build(
        cls, *, key_a: bytes, bits: AccessBits, key_b: bytes, gpb: int = TRANSPORT_GPB
    ) -> SectorTrailer:
        return cls(key_a=key_a, access=encode_access(bits), gpb=gpb, key_b=key_b)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SectorTrailer:
        if len(raw) != TRAILER_SIZE:
            raise InvalidInput(f"a sector trailer is {TRAILER_SIZE} bytes, not {len(raw)}")
        return cls(key_a=raw[0:6], access=raw[6:9], gpb=raw[9], key_b=raw[10:16])

    def to_bytes(self) -> bytes:
        return self.key_a + self.access + bytes((self.gpb,)) + self.key_b

    @property
    def bits(self) -> AccessBits:
        bits = decode_access(self.access)
        if bits is None:  # only reachable if someone bypassed __post_init__
            raise UnsafeTrailer("the access bits' inverted copy does not match")
        return bits

    def key(self, key_type: KeyType) -> bytes:
        return self.key_a if key_type is KeyType.A else self.key_b

    def __repr__(self) -> str:
        # Keys never appear in a repr: reprs end up in logs, tracebacks and bug reports.
        return (
            f"SectorTrailer(key_a=<redacted>, access={self.access.hex().upper()}, "
            f"gpb={self.gpb:02X}, key_b=<redacted>)"
        )

    __str__ = __repr__


TRANSPORT_TRAILER = SectorTrailer(
    key_a=TRANSPORT_KEY, access=TRANSPORT_ACCESS, gpb=TRANSPORT_GPB, key_b=TRANSPORT_KEY
)


@dataclass(frozen=True)
class RecordAccess:
    """What our design needs from the record's data blocks after a trailer write."""

    #: every key listed here must be able to read the record blocks
    read: Keys = KEY_A
    #: every key listed here must be able to write the record blocks
    write: Keys = KEY_B
    #: the data groups holding the record
    groups: tuple[int, ...] = DATA_GROUPS


@dataclass(frozen=True)
class TrailerPolicy:
    """What a trailer write must leave possible, beyond not destroying the sector."""

    #: the record's needs; None for no requirement on the data blocks
    required: RecordAccess | None = field(default_factory=RecordAccess)
    #: personalizing: the transport key must not stay on the sector (privacy rule, product.md)
    personalize: bool = True
    #: allow trailer bits that freeze the trailer or fix the access bits for good
    allow_freeze: bool = False


#: The student-card record: key A reads, key B writes, no transport keys, nothing frozen.
STUDENT_POLICY = TrailerPolicy()


def trailer_problems(
    trailer: SectorTrailer,
    *,
    writer_key: KeyType,
    keys_we_hold: Iterable[KeyType],
    policy: TrailerPolicy = STUDENT_POLICY,
    current: bytes | None = None,
) -> list[str]:
    """Every reason why writing ``trailer`` is unsafe; empty when it is safe.

    :param writer_key: the key type that will write the trailer (authenticated with its
        current value); checked against the current bits when ``current`` is given
    :param keys_we_hold: key types whose *new* values (those in ``trailer``) we keep afterwards
    :param current: trailer bytes 6-9 (access bits + GPB) as read from the card now, if known
    """
    bits = decode_access(trailer.access)
    if bits is None:
        return [
            f"access bits {trailer.access.hex(' ').upper()}: the inverted copy does not match; "
            "the card would block the sector for ever"
        ]
    held = frozenset(keys_we_hold)
    problems: list[str] = []

    for key_type in KeyType:
        value = trailer.key(key_type)
        if value == ZERO_KEY:
            # Always refused: zeros are what an unreadable key reads back as, so this is almost
            # certainly a read-modify-write of a trailer, not a chosen key.
            problems.append(
                f"key {key_type.name} is all zeros (a trailer read back and written again?)"
            )
        elif policy.personalize and value == TRANSPORT_KEY:
            problems.append(
                f"key {key_type.name} is the public transport key; personalizing needs own keys"
            )

    t = bits.trailer_bits
    frozen = t in FROZEN_TRAILER_BITS
    if frozen and not policy.allow_freeze:
        problems.append(
            f"trailer bits {format_bits(t)} freeze the trailer: no key could ever change the "
            "keys or access bits again"
        )
    elif t in FIXED_ACCESS_TRAILER_BITS and not policy.allow_freeze:
        problems.append(
            f"trailer bits {format_bits(t)} fix the access bits for good (only keys could change)"
        )

    usable = bits.usable(held)
    if not usable:
        problems.append(
            "none of the keys we hold could authenticate after the write, so it could not even "
            "be checked"
        )
    elif not (frozen and policy.allow_freeze):
        # Locked out: none of our keys could change the access bits again (or, where fixing the
        # access bits is allowed, the keys).
        rights = bits.trailer
        if t in FIXED_ACCESS_TRAILER_BITS and policy.allow_freeze:
            needed = rights.write_key_a | rights.write_key_b
        else:
            needed = rights.write_access
        if not usable & needed:
            why = ""
            if KeyType.B in held and bits.key_b_readable:
                why = " (key B would be readable, so it could not authenticate)"
            problems.append(
                f"locked out: after the write only key {_key_names(needed)} could change the "
                f"trailer, and of the keys we hold {_key_names(usable)} could authenticate{why}"
            )

    if policy.required is not None:
        problems.extend(_record_problems(bits, held, usable, policy.required))
    if current is not None:
        problems.extend(_partial_write_problems(current, trailer, writer_key))
    return problems


def _record_problems(
    bits: AccessBits, held: Keys, usable: Keys, required: RecordAccess
) -> list[str]:
    problems: list[str] = []
    for op, needed in (("read", required.read), ("write", required.write)):
        for key_type in sorted(needed):
            if key_type not in held:
                problems.append(
                    f"the design needs key {key_type.name} to {op} the record, "
                    "but we would not hold it"
                )
                continue
            if key_type not in usable:
                problems.append(
                    f"key {key_type.name} would be readable, so it could not "
                    f"authenticate to {op} the record"
                )
                continue
            for group in required.groups:
                perms = bits.data(group)
                allowed = perms.read if op == "read" else perms.write
                if key_type not in allowed:
                    problems.append(
                        f"data bits {format_bits(bits.groups[group])} (group {group}) do not "
                        f"let key {key_type.name} {op} the record blocks"
                    )
    return problems


def check_trailer_safe(
    trailer: SectorTrailer,
    *,
    writer_key: KeyType,
    keys_we_hold: Iterable[KeyType],
    policy: TrailerPolicy = STUDENT_POLICY,
    current: bytes | None = None,
) -> None:
    """Refuse a trailer that would damage or lock the sector; call before sending anything.

    :param current: trailer bytes 6-9 (access bits + GPB) as read from the card now, once known;
        then also refuse a write the card would carry out only in part
    :raises UnsafeTrailer: with every reason found, joined by ``"; "``
    """
    problems = trailer_problems(
        trailer, writer_key=writer_key, keys_we_hold=keys_we_hold, policy=policy, current=current
    )
    if problems:
        raise UnsafeTrailer("refusing to write the sector trailer: " + "; ".join(problems))


def _partial_write_problems(
    current_access_gpb: bytes, trailer: SectorTrailer, writer_key: KeyType
) -> list[str]:
    """Why the card would carry out this trailer write only in part (empty: it would not).

    The card writes only the trailer fields the writer may write under the *current* bits and
    silently keeps the others, so a write could change the keys and keep the old access bits
    (or the reverse) and leave a sector nobody planned. Keys cannot be read back to compare, so
    the writer must be allowed to write both; the access bits and GPB only need to be writable
    when they change.
    """
    if len(current_access_gpb) != ACCESS_SIZE + 1:
        raise InvalidInput("the current trailer state is the 3 access bytes and the GPB")
    current = decode_access(bytes(current_access_gpb[:ACCESS_SIZE]))
    if current is None:
        return ["the sector's current access bits are invalid or were not readable"]
    rights = current.trailer
    bits_now = format_bits(current.trailer_bits)
    now = f"the current trailer bits {bits_now}"
    problems: list[str] = []
    if not current.usable({writer_key}):
        problems.append(f"key {writer_key.name} is readable under trailer bits {bits_now}")
    if writer_key not in rights.write_key_a:
        problems.append(f"{now} do not let key {writer_key.name} write key A")
    if writer_key not in rights.write_key_b:
        problems.append(f"{now} do not let key {writer_key.name} write key B")
    new_access_gpb = trailer.access + bytes((trailer.gpb,))
    if new_access_gpb != bytes(current_access_gpb) and writer_key not in rights.write_access:
        problems.append(f"{now} do not let key {writer_key.name} change the access bits")
    if problems:
        problems[0] = "the card would write the trailer only in part: " + problems[0]
    return problems
