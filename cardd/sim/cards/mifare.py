# SPDX-License-Identifier: Apache-2.0
"""MIFARE Classic 1K/4K behind an ACR122U-like PC/SC reader (contactless.md §3 and §6).

This is the card the library-number writer is tested against, so it enforces what a genuine
card enforces and makes every irreversible mistake visible in :meth:`MifareClassic.dump`:

* authentication covers one sector at a time, with a key from one of two volatile reader slots;
* the access-bit tables decide every read and write, per key type;
* key A always reads back as zeros, key B only when the access bits make it readable, and a
  readable key B cannot authenticate;
* access bits whose inverted copy does not match block their sector for good, including when
  the host itself writes them;
* the manufacturer block (block 0) is read-only;
* ACS readers answer ``63 00`` for nearly every failure, and so does this model.

Decisions where the sources are silent (each is marked ``Decision:`` below):

* Every failed command clears the authentication state, because a real card drops to HALT/IDLE
  after a refused command and the host must authenticate again (contactless.md §3). GET DATA is
  the exception: the reader answers it from its own activation data without talking to the card.
* Key slots survive :meth:`MifareClassic.power_on`: they live in the reader, not in the card.
* READ BINARY reads exactly one block (Le ``10``), as on the ACR122U; any other Le is ``67 00``.
  UPDATE BINARY writes exactly one block (Lc ``10``), as the writer rules demand.
* LOAD KEYS with key structure ``20`` (non-volatile, ACR128) or any other structure, or a slot
  other than ``00``/``01``, is ``69 86``, the answer cardpeek's fallback expects.
* Authenticating with key B where the access bits make key B readable fails at the
  authentication itself. (A genuine chip accepts the authentication and then refuses every
  access, which the host sees as ``63 00`` one command later; failing early gives the same
  outcome with a clearer test.)
* A sector trailer write stores each field (key A, access bits + GPB, key B) that the
  authenticated key may write and leaves the others unchanged; it is refused (``63 00``) only
  when no field at all may be written.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from cardd.sim.cards.base import SW_OK, sw
from cardd.sim.cards.contactless import (
    CARD_NAME_CLASSIC_1K,
    CARD_NAME_CLASSIC_4K,
    CLA_PCSC,
    INS_AUTHENTICATE_OBSOLETE,
    INS_GENERAL_AUTHENTICATE,
    INS_GET_DATA,
    INS_LOAD_KEYS,
    INS_READ_BINARY,
    INS_UPDATE_BINARY,
    SW,
    CommandApdu,
    ContactlessCard,
    bcc,
    storage_atr,
    validate_uid,
)

BLOCK_SIZE = 16
KEY_SIZE = 6

#: LOAD KEYS key structure: volatile reader memory, the only kind an ACR122U has.
KEY_STRUCTURE_VOLATILE = 0x00
KEY_SLOTS = 2
#: GENERAL AUTHENTICATE data: version 01, block MSB, block LSB, key type, key slot.
GENERAL_AUTHENTICATE_VERSION = 0x01

#: The default key of a new card.
TRANSPORT_KEY = b"\xff" * KEY_SIZE
#: The general purpose byte of a new card's trailers.
TRANSPORT_GPB = 0x69

# Trailer field offsets: KeyA (6) | access bits (3) | GPB (1) | KeyB (6).
_KEY_A = slice(0, 6)
_ACCESS = slice(6, 9)
_ACCESS_AND_GPB = slice(6, 10)
_KEY_B = slice(10, 16)

#: The block group of a sector trailer in the access bits.
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
class DataRights:
    """Who may read and write a data block under one C1C2C3 value."""

    read: Keys
    write: Keys


@dataclass(frozen=True)
class TrailerRights:
    """Who may do what to the fields of a sector trailer under one C1C2C3 value."""

    write_key_a: Keys
    read_access: Keys
    write_access: Keys
    read_key_b: Keys
    write_key_b: Keys


# Keys are C1C2C3 written as a 3-bit number, C1 first, so 0b100 reads like the datasheet's "100".
#: Data blocks: contactless.md §6 / MF1S50YYX table 8 (increment/decrement are not modelled).
DATA_RIGHTS: dict[int, DataRights] = {
    0b000: DataRights(read=KEY_A_OR_B, write=KEY_A_OR_B),
    0b010: DataRights(read=KEY_A_OR_B, write=NEVER),
    0b100: DataRights(read=KEY_A_OR_B, write=KEY_B),
    0b110: DataRights(read=KEY_A_OR_B, write=KEY_B),
    0b001: DataRights(read=KEY_A_OR_B, write=NEVER),
    0b011: DataRights(read=KEY_B, write=KEY_B),
    0b101: DataRights(read=KEY_B, write=NEVER),
    0b111: DataRights(read=NEVER, write=NEVER),
}

#: Sector trailers: contactless.md §6 / MF1S50YYX table 7.
TRAILER_RIGHTS: dict[int, TrailerRights] = {
    0b000: TrailerRights(KEY_A, KEY_A, NEVER, KEY_A, KEY_A),
    0b010: TrailerRights(NEVER, KEY_A, NEVER, KEY_A, NEVER),
    0b100: TrailerRights(KEY_B, KEY_A_OR_B, NEVER, NEVER, KEY_B),
    0b110: TrailerRights(NEVER, KEY_A_OR_B, NEVER, NEVER, NEVER),
    0b001: TrailerRights(KEY_A, KEY_A, KEY_A, KEY_A, KEY_A),
    0b011: TrailerRights(KEY_B, KEY_A_OR_B, KEY_B, NEVER, KEY_B),
    0b101: TrailerRights(NEVER, KEY_A_OR_B, KEY_B, NEVER, NEVER),
    0b111: TrailerRights(NEVER, KEY_A_OR_B, NEVER, NEVER, NEVER),
}


@dataclass(frozen=True)
class AccessConditions:
    """The decoded access bits of one sector: C1C2C3 for block groups 0, 1, 2 and the trailer."""

    #: C1C2C3 per block group as a 3-bit number, C1 the high bit (0b001 is the datasheet's "001")
    groups: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        if len(self.groups) != 4 or any(not 0 <= g <= 7 for g in self.groups):
            raise ValueError("access conditions are four 3-bit values")

    @classmethod
    def from_bytes(cls, raw: bytes) -> AccessConditions | None:
        """Decode trailer bytes 6-8; None if the inverted copy does not match (sector blocked).

        :param raw: at least the three access bytes; a 4th byte (GPB) is ignored
        """
        b6, b7, b8 = raw[0], raw[1], raw[2]
        c1, c2, c3 = b7 >> 4, b8 & 0x0F, b8 >> 4
        if (b6 & 0x0F) != (~c1 & 0x0F) or (b6 >> 4) != (~c2 & 0x0F) or (b7 & 0x0F) != (~c3 & 0x0F):
            return None
        groups = tuple(
            ((c1 >> y) & 1) << 2 | ((c2 >> y) & 1) << 1 | ((c3 >> y) & 1) for y in range(4)
        )
        return cls((groups[0], groups[1], groups[2], groups[3]))

    def to_bytes(self) -> bytes:
        """Encode as trailer bytes 6-8, the true and the inverted copy of each bit."""
        c1 = c2 = c3 = 0
        for y, g in enumerate(self.groups):
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

    @property
    def trailer(self) -> TrailerRights:
        return TRAILER_RIGHTS[self.groups[TRAILER_GROUP]]

    def data(self, group: int) -> DataRights:
        return DATA_RIGHTS[self.groups[group]]

    @property
    def key_b_readable(self) -> bool:
        """A readable key B is data, not a key: it cannot authenticate."""
        return bool(self.trailer.read_key_b)


#: Transport configuration ``FF 07 80``: data blocks 000, trailer 001.
TRANSPORT_ACCESS = AccessConditions((0b000, 0b000, 0b000, 0b001))


def sector_trailer(
    key_a: bytes, access: AccessConditions, key_b: bytes, *, gpb: int = TRANSPORT_GPB
) -> bytes:
    """Build a 16-byte sector trailer from named fields."""
    if len(key_a) != KEY_SIZE or len(key_b) != KEY_SIZE:
        raise ValueError("keys are 6 bytes")
    return bytes(key_a) + access.to_bytes() + bytes((gpb,)) + bytes(key_b)


TRANSPORT_TRAILER = sector_trailer(TRANSPORT_KEY, TRANSPORT_ACCESS, TRANSPORT_KEY)


@dataclass(frozen=True)
class ClassicLayout:
    """Sector geometry: 4-block sectors, then (4K only) 16-block sectors from sector 32 on."""

    size: str
    sectors: int
    blocks: int
    card_name: bytes
    #: SAK and ATQA as stored in the manufacturer block, for 4-byte and 7-byte UIDs
    sak: int
    atqa_4b: bytes
    atqa_7b: bytes

    #: sectors 0-31 have 4 blocks; any sector after that has 16
    SMALL_SECTORS = 32
    SMALL_BLOCKS = 4 * SMALL_SECTORS

    @property
    def memory_size(self) -> int:
        return self.blocks * BLOCK_SIZE

    def sector_of(self, block: int) -> int:
        if block < self.SMALL_BLOCKS:
            return block // 4
        return self.SMALL_SECTORS + (block - self.SMALL_BLOCKS) // 16

    def first_block(self, sector: int) -> int:
        if sector < self.SMALL_SECTORS:
            return 4 * sector
        return self.SMALL_BLOCKS + 16 * (sector - self.SMALL_SECTORS)

    def blocks_in(self, sector: int) -> int:
        return 4 if sector < self.SMALL_SECTORS else 16

    def trailer_of(self, sector: int) -> int:
        return self.first_block(sector) + self.blocks_in(sector) - 1

    def group_of(self, block: int) -> int:
        """Which C1C2C3 group of its sector governs ``block`` (3 = the trailer)."""
        sector = self.sector_of(block)
        index = block - self.first_block(sector)
        if self.blocks_in(sector) == 4:
            return index
        # A 16-block sector shares each data-block group among 5 blocks: 0-4, 5-9, 10-14.
        return TRAILER_GROUP if index == 15 else index // 5


LAYOUTS: dict[str, ClassicLayout] = {
    "1k": ClassicLayout(
        "1k", 16, 64, CARD_NAME_CLASSIC_1K, 0x08, bytes.fromhex("0400"), bytes.fromhex("4400")
    ),
    "4k": ClassicLayout(
        "4k", 40, 256, CARD_NAME_CLASSIC_4K, 0x18, bytes.fromhex("0200"), bytes.fromhex("4200")
    ),
}

#: ATQA bits 8-7 (the top of its first byte): UID size, 00 = single (4 bytes).
_ATQA_UID_SINGLE = 0b00

#: Fictitious manufacturer data for the rest of block 0 (what many clone cards carry).
_MANUFACTURER_DATA = bytes.fromhex("6263646566676869")


def manufacturer_block(uid: bytes, size: str = "1k") -> bytes:
    """Block 0 of a blank card: UID (+ BCC for 4-byte UIDs), SAK, ATQA, manufacturer data."""
    layout = _layout(size)
    uid = validate_uid(uid, lengths=(4, 7))
    if len(uid) == 4:
        head = uid + bytes((bcc(uid), layout.sak)) + layout.atqa_4b
    else:
        head = uid + bytes((layout.sak,)) + layout.atqa_7b
    return head + _MANUFACTURER_DATA[: BLOCK_SIZE - len(head)]


def uid_from_manufacturer_block(block0: bytes) -> bytes:
    """The UID in a dump's block 0 (a guess; pass the UID explicitly where it matters).

    4 bytes if byte 4 is their BCC and the ATQA after the SAK announces a single-size UID,
    else 7 bytes. The BCC alone is not enough: 1 in 256 7-byte UIDs matches it by chance
    (``04 A1 B2 C3 D4 ...`` from contactless.md §2 does).
    """
    single_size = (block0[6] >> 6) == _ATQA_UID_SINGLE
    if block0[4] == bcc(block0[:4]) and single_size:
        return bytes(block0[:4])
    return bytes(block0[:7])


def _layout(size: str) -> ClassicLayout:
    try:
        return LAYOUTS[size]
    except KeyError:
        raise ValueError(f"MIFARE Classic size must be 1k or 4k, not {size!r}") from None


@dataclass(frozen=True)
class Authentication:
    """The card's one authenticated sector and the key type used for it."""

    sector: int
    key_type: KeyType


class MifareClassic(ContactlessCard):
    """A MIFARE Classic 1K or 4K card behind an ACR122U-like reader."""

    def __init__(self, uid: bytes, memory: bytes, *, size: str = "1k") -> None:
        """
        :param uid: UID0 first; 4 or 7 bytes
        :param memory: the whole card, trailers holding the real keys (``.mfd`` layout)
        :param size: ``"1k"`` or ``"4k"``
        """
        layout = _layout(size)
        if len(memory) != layout.memory_size:
            raise ValueError(f"a {size} image is {layout.memory_size} bytes, not {len(memory)}")
        super().__init__(validate_uid(uid, lengths=(4, 7)), storage_atr(layout.card_name))
        self.kind = f"mifare-classic-{size}"
        self._layout = layout
        self._memory = bytearray(memory)
        self._keys: list[bytes | None] = [None] * KEY_SLOTS
        self._auth: Authentication | None = None

    @classmethod
    def blank(cls, uid: bytes, size: str = "1k") -> MifareClassic:
        """A new card: manufacturer block, zeroed data, transport trailers everywhere."""
        layout = _layout(size)
        memory = bytearray(layout.memory_size)
        memory[0:BLOCK_SIZE] = manufacturer_block(uid, size)
        for sector in range(layout.sectors):
            start = layout.trailer_of(sector) * BLOCK_SIZE
            memory[start : start + BLOCK_SIZE] = TRANSPORT_TRAILER
        return cls(uid, bytes(memory), size=size)

    @classmethod
    def from_mfd(cls, source: str | Path | bytes, *, uid: bytes | None = None) -> MifareClassic:
        """Load a libnfc / MIFARE Classic Tool binary dump (1024 or 4096 bytes).

        :param source: a path to the ``.mfd`` file, or its bytes
        :param uid: the card's UID; default the one in block 0
        """
        raw = bytes(source) if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
        sizes = {layout.memory_size: name for name, layout in LAYOUTS.items()}
        if len(raw) not in sizes:
            raise ValueError(f"an .mfd image is 1024 or 4096 bytes, not {len(raw)}")
        if uid is None:
            uid = uid_from_manufacturer_block(raw[:BLOCK_SIZE])
        return cls(uid, raw, size=sizes[len(raw)])

    @property
    def size(self) -> str:
        return self._layout.size

    @property
    def layout(self) -> ClassicLayout:
        return self._layout

    @property
    def authenticated(self) -> Authentication | None:
        return self._auth

    def dump(self) -> bytes:
        """The whole memory, real keys included (what a test inspects after a write)."""
        return bytes(self._memory)

    def block(self, number: int) -> bytes:
        """One raw block, real keys included."""
        return bytes(self._memory[number * BLOCK_SIZE : (number + 1) * BLOCK_SIZE])

    def access_conditions(self, sector: int) -> AccessConditions | None:
        """The sector's decoded access bits; None if they are invalid (the sector is blocked)."""
        return AccessConditions.from_bytes(self.block(self._layout.trailer_of(sector))[_ACCESS])

    def blocked_sectors(self) -> list[int]:
        return [s for s in range(self._layout.sectors) if self.access_conditions(s) is None]

    def power_on(self) -> None:
        # Decision: the key slots are reader memory and survive a card reset; the card forgets
        # its authentication.
        self._auth = None

    def process(self, apdu: bytes) -> bytes:
        response = super().process(apdu)
        # Decision: any failure ends the session, except GET DATA, which the reader answers
        # without talking to the card.
        if response[-2:] != SW_OK and apdu[:2] != bytes((CLA_PCSC, INS_GET_DATA)):
            self._auth = None
        return response

    # -- the reader's pseudo-APDUs --------------------------------------------------------

    def _process_pcsc(self, apdu: bytes) -> bytes:
        ins = apdu[1]
        if ins == INS_AUTHENTICATE_OBSOLETE:
            # FF 88 00 <block> <type> <slot>: byte 4 is the key type, not an Lc.
            if len(apdu) != 6:
                return sw(SW.WRONG_LENGTH)
            if apdu[2] != 0:
                return sw(SW.FAILED)
            return self._authenticate(apdu[3], apdu[4], apdu[5])
        cmd = CommandApdu.parse(apdu)
        if ins == INS_LOAD_KEYS:
            return self._load_keys(cmd)
        if ins == INS_GENERAL_AUTHENTICATE:
            return self._general_authenticate(cmd)
        if ins == INS_READ_BINARY:
            return self._read_binary(cmd)
        if ins == INS_UPDATE_BINARY:
            return self._update_binary(cmd)
        return sw(SW.FUNCTION_NOT_SUPPORTED)

    def _load_keys(self, cmd: CommandApdu | None) -> bytes:
        if cmd is None or len(cmd.data) != KEY_SIZE:
            return sw(SW.WRONG_LENGTH)
        if cmd.p1 != KEY_STRUCTURE_VOLATILE or cmd.p2 >= KEY_SLOTS:
            return sw(SW.NOT_ALLOWED)
        self._keys[cmd.p2] = cmd.data
        return SW_OK

    def _general_authenticate(self, cmd: CommandApdu | None) -> bytes:
        if cmd is None or len(cmd.data) != 5:
            return sw(SW.WRONG_LENGTH)
        version, block_msb, block_lsb, key_type, slot = cmd.data
        if cmd.p1 != 0 or cmd.p2 != 0 or version != GENERAL_AUTHENTICATE_VERSION or block_msb:
            return sw(SW.FAILED)
        return self._authenticate(block_lsb, key_type, slot)

    def _authenticate(self, block: int, key_type: int, slot: int) -> bytes:
        # Any authentication attempt ends the previous session, whether or not it succeeds.
        self._auth = None
        if block >= self._layout.blocks or key_type not in (KeyType.A, KeyType.B):
            return sw(SW.FAILED)
        key = self._keys[slot] if slot < KEY_SLOTS else None
        if key is None:
            return sw(SW.FAILED)
        sector = self._layout.sector_of(block)
        access = self.access_conditions(sector)
        if access is None:
            return sw(SW.FAILED)  # blocked for good
        kind = KeyType(key_type)
        if kind is KeyType.B and access.key_b_readable:
            return sw(SW.FAILED)
        trailer = self.block(self._layout.trailer_of(sector))
        if key != trailer[_KEY_A if kind is KeyType.A else _KEY_B]:
            return sw(SW.FAILED)
        self._auth = Authentication(sector, kind)
        return SW_OK

    def _session(self, block: int) -> tuple[KeyType, AccessConditions] | None:
        """The key type and access bits for ``block``, if its sector is the authenticated one."""
        sector = self._layout.sector_of(block)
        if self._auth is None or self._auth.sector != sector:
            return None
        # The chip checks the access bits on every access, so a sector blocked by a trailer
        # write inside this session stops working at once.
        access = self.access_conditions(sector)
        if access is None:
            return None
        return self._auth.key_type, access

    def _read_binary(self, cmd: CommandApdu | None) -> bytes:
        if cmd is None or cmd.data or cmd.le != BLOCK_SIZE:
            return sw(SW.WRONG_LENGTH)
        block = cmd.p2
        if cmd.p1 != 0 or block >= self._layout.blocks:
            return sw(SW.FAILED)
        session = self._session(block)
        if session is None:
            return sw(SW.FAILED)
        key_type, access = session
        raw = self.block(block)
        group = self._layout.group_of(block)
        if group != TRAILER_GROUP:
            if key_type not in access.data(group).read:
                return sw(SW.FAILED)
            return raw + SW_OK
        # A trailer read always succeeds but shows only what this key may read.
        rights = access.trailer
        shown = bytearray(BLOCK_SIZE)  # key A is never readable
        if key_type in rights.read_access:
            shown[_ACCESS_AND_GPB] = raw[_ACCESS_AND_GPB]
        if key_type in rights.read_key_b:
            shown[_KEY_B] = raw[_KEY_B]
        return bytes(shown) + SW_OK

    def _update_binary(self, cmd: CommandApdu | None) -> bytes:
        if cmd is None or len(cmd.data) != BLOCK_SIZE:
            return sw(SW.WRONG_LENGTH)
        block = cmd.p2
        if cmd.p1 != 0 or block >= self._layout.blocks or block == 0:
            return sw(SW.FAILED)  # block 0 is the read-only manufacturer block
        session = self._session(block)
        if session is None:
            return sw(SW.FAILED)
        key_type, access = session
        start = block * BLOCK_SIZE
        group = self._layout.group_of(block)
        if group != TRAILER_GROUP:
            if key_type not in access.data(group).write:
                return sw(SW.FAILED)
            self._memory[start : start + BLOCK_SIZE] = cmd.data
            return SW_OK
        rights = access.trailer
        fields = (
            (_KEY_A, rights.write_key_a),
            (_ACCESS_AND_GPB, rights.write_access),
            (_KEY_B, rights.write_key_b),
        )
        writable = [field for field, who in fields if key_type in who]
        if not writable:
            return sw(SW.FAILED)
        for field in writable:
            # Unchecked on purpose: invalid access bits are written and block the sector, as on
            # a genuine card. Checking them is the host's job; the test sees the damage.
            self._memory[start + field.start : start + field.stop] = cmd.data[field]
        return SW_OK
