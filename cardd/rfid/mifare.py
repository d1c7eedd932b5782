# SPDX-License-Identifier: Apache-2.0
"""MIFARE Classic 1K/4K through PC/SC Part 3 pseudo-APDUs (contactless.md §3 and §6).

:class:`MifareClassicSession` talks to the reader's firmware (CLA ``FF``) over any
:class:`~cardd.readers.transport.SmartCardConnection`; it never sees pyscard.

=====================  ==============================  =============================================
operation              APDU                            notes
=====================  ==============================  =============================================
UID                    ``FF CA 00 00 00``              answered by the reader, no authentication
LOAD KEYS              ``FF 82 <struct> <slot> 06 K``  skipped when the slot already holds K
GENERAL AUTHENTICATE   ``FF 86 00 00 05 01 00 b t s``  skipped when the sector is authenticated
READ BINARY            ``FF B0 00 <block> 10``         one 16-byte block
UPDATE BINARY          ``FF D6 00 <block> 10 <data>``  one data block; never block 0 or a trailer
=====================  ==============================  =============================================

APDU economy matters (a burn must fit in 8 APDUs): keys are loaded once per slot and session,
a sector is authenticated once until something fails or another sector is needed, and the
read-back after a write can be turned off and done separately. Every APDU sent is counted in
:attr:`MifareClassicSession.apdu_count`.

Status words (ACS readers answer ``63 00`` for nearly every failure):

* ``63 00`` / ``69 82`` on GENERAL AUTHENTICATE: :class:`~cardd.errors.AuthenticationFailed`
* ``63 00`` / ``69 82`` on READ / UPDATE BINARY: :class:`~cardd.errors.AccessDenied`
* ``69 86`` / ``6A 81``: :class:`~cardd.errors.CardNotSupported` (the reader lacks the command or
  the key structure)
* anything else: :class:`~cardd.errors.ApduError`

Any failure, and any transport exception, forgets the authenticated sector: the card drops to
HALT after a refused command and must be authenticated again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from cardd.errors import (
    AccessDenied,
    ApduError,
    AuthenticationFailed,
    CardDataInvalid,
    CardError,
    CardNotSupported,
    InvalidInput,
    UnsafeTrailer,
    UsageError,
    WriteVerificationFailed,
)
from cardd.readers.transport import SW_SUCCESS, SmartCardConnection, transceive
from cardd.rfid.access import (
    KEY_SIZE,
    STUDENT_POLICY,
    TRAILER_GROUP,
    AccessBits,
    KeyType,
    SectorTrailer,
    TrailerPolicy,
    check_trailer_safe,
    decode_access,
)
from cardd.rfid.keys import SectorKeys

logger = logging.getLogger(__name__)

__all__ = [
    "BLOCK_SIZE",
    "KEY_STRUCTURE_NON_VOLATILE",
    "KEY_STRUCTURE_VOLATILE",
    "KeyType",
    "MifareClassicSession",
    "access_group",
    "blocks_in_sector",
    "first_block",
    "is_trailer",
    "sector_of",
    "trailer_block",
]

CLA_PCSC = 0xFF
INS_GET_DATA = 0xCA
INS_LOAD_KEYS = 0x82
INS_GENERAL_AUTHENTICATE = 0x86
INS_READ_BINARY = 0xB0
INS_UPDATE_BINARY = 0xD6
P1_GET_DATA_UID = 0x00

#: LOAD KEYS key structure: volatile reader memory (ACR122U, ACR1252U: slots 00-01).
KEY_STRUCTURE_VOLATILE = 0x00
#: LOAD KEYS key structure: non-volatile reader memory (ACR128: slots 00-1F).
KEY_STRUCTURE_NON_VOLATILE = 0x20
#: GENERAL AUTHENTICATE data byte 0
GENERAL_AUTHENTICATE_VERSION = 0x01

SW_FAILED = 0x6300
SW_SECURITY_NOT_SATISFIED = 0x6982
SW_NOT_ALLOWED = 0x6986
SW_FUNCTION_NOT_SUPPORTED = 0x6A81
_NOT_SUPPORTED = frozenset({SW_NOT_ALLOWED, SW_FUNCTION_NOT_SUPPORTED})
_REFUSED = frozenset({SW_FAILED, SW_SECURITY_NOT_SATISFIED})

BLOCK_SIZE = 16
#: sectors 0-31 have 4 blocks; 4K sectors 32-39 have 16
SMALL_SECTORS = 32
SMALL_SECTOR_BLOCKS = 4
LARGE_SECTOR_BLOCKS = 16
SECTORS: dict[str, int] = {"1k": 16, "4k": 40}
BLOCKS: dict[str, int] = {"1k": 64, "4k": 256}
_SMALL_AREA = SMALL_SECTORS * SMALL_SECTOR_BLOCKS  # 128 blocks
#: a 16-block sector shares each data-block group among 5 blocks: 0-4, 5-9, 10-14
_LARGE_GROUP_BLOCKS = 5

CardSize = Literal["1k", "4k"]


# -- geometry --------------------------------------------------------------------------------


def _check_block(block: int, size: CardSize = "4k") -> None:
    if not 0 <= block < BLOCKS[size]:
        raise InvalidInput(f"block {block} does not exist on a {size} card")


def _check_sector(sector: int, size: CardSize = "4k") -> None:
    if not 0 <= sector < SECTORS[size]:
        raise InvalidInput(f"sector {sector} does not exist on a {size} card")


def sector_of(block: int) -> int:
    """The sector holding ``block`` (1K and 4K number blocks the same way up to block 127)."""
    _check_block(block)
    if block < _SMALL_AREA:
        return block // SMALL_SECTOR_BLOCKS
    return SMALL_SECTORS + (block - _SMALL_AREA) // LARGE_SECTOR_BLOCKS


def first_block(sector: int) -> int:
    _check_sector(sector)
    if sector < SMALL_SECTORS:
        return SMALL_SECTOR_BLOCKS * sector
    return _SMALL_AREA + LARGE_SECTOR_BLOCKS * (sector - SMALL_SECTORS)


def blocks_in_sector(sector: int) -> int:
    _check_sector(sector)
    return SMALL_SECTOR_BLOCKS if sector < SMALL_SECTORS else LARGE_SECTOR_BLOCKS


def trailer_block(sector: int) -> int:
    """The sector trailer: the last block of the sector."""
    return first_block(sector) + blocks_in_sector(sector) - 1


def is_trailer(block: int) -> bool:
    return block == trailer_block(sector_of(block))


def access_group(block: int) -> int:
    """Which C1C2C3 group of its sector governs ``block`` (3 = the trailer)."""
    sector = sector_of(block)
    index = block - first_block(sector)
    if blocks_in_sector(sector) == SMALL_SECTOR_BLOCKS:
        return index
    return TRAILER_GROUP if index == LARGE_SECTOR_BLOCKS - 1 else index // _LARGE_GROUP_BLOCKS


# -- the session -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Authenticated:
    sector: int
    key_type: KeyType
    slot: int


class MifareClassicSession:
    """One MIFARE Classic card through a PC/SC reader's Part 3 pseudo-APDUs.

    Not thread-safe: one reader belongs to one worker thread (style.md §6).
    """

    def __init__(
        self,
        connection: SmartCardConnection,
        *,
        key_slot_a: int = 0,
        key_slot_b: int = 1,
        key_structure: int = KEY_STRUCTURE_VOLATILE,
        size: CardSize | None = None,
    ) -> None:
        """
        :param connection: an open connection to the card
        :param key_slot_a: reader key slot used for key A
        :param key_slot_b: reader key slot used for key B
        :param key_structure: LOAD KEYS P1. ``00`` (volatile) works on the ACR122U and ACR1252U;
            the ACR128 needs ``0x20`` (non-volatile, slots ``00``-``1F``). There is no silent
            fallback on ``69 86`` (cardpeek has one): writing keys into non-volatile reader
            memory is a decision about where secrets persist, so the caller makes it.
        :param size: ``"1k"`` or ``"4k"`` to refuse blocks the card does not have before
            sending; None accepts every 4K address and lets the card refuse
        """
        for slot in (key_slot_a, key_slot_b):
            if not 0 <= slot <= 0xFF:
                raise InvalidInput("key slots are one byte")
        if key_slot_a == key_slot_b:
            raise InvalidInput("key A and key B need different reader key slots")
        if not 0 <= key_structure <= 0xFF:
            raise InvalidInput("the key structure is one byte")
        if size is not None and size not in SECTORS:
            raise InvalidInput('card size is "1k" or "4k"')
        self._conn = connection
        self._slots = {KeyType.A: key_slot_a, KeyType.B: key_slot_b}
        self.key_structure = key_structure
        self.size: CardSize | None = size
        #: APDUs sent through this session (the burn benchmark's budget is 8)
        self.apdu_count = 0
        # Keyed digests of what each slot holds, not the keys: a session object can end up in a
        # debugger or a crash dump, and equality is all the cache needs.
        self._salt = os.urandom(16)
        self._loaded: dict[int, bytes] = {}
        self._auth: _Authenticated | None = None

    # -- bookkeeping -----------------------------------------------------------------------

    def slot_for(self, key_type: KeyType) -> int:
        return self._slots[key_type]

    @property
    def authenticated_sector(self) -> int | None:
        return self._auth.sector if self._auth else None

    def forget(self) -> None:
        """Forget the authenticated sector and the loaded keys (e.g. after a reader reset)."""
        self._auth = None
        self._loaded.clear()

    def _digest(self, key: bytes) -> bytes:
        return hmac.new(self._salt, key, hashlib.sha256).digest()

    def _send(self, apdu: bytes) -> tuple[bytes, int]:
        self.apdu_count += 1
        try:
            return self._conn.send_and_receive(apdu)
        except BaseException:
            # Card removed, reader gone, pcscd restarted: nothing we knew still holds.
            self.forget()
            raise

    def _limit_block(self, block: int) -> None:
        _check_block(block, self.size or "4k")

    def _limit_sector(self, sector: int) -> None:
        _check_sector(sector, self.size or "4k")

    def _require_auth(self, block: int, what: str) -> None:
        sector = sector_of(block)
        if self._auth is None or self._auth.sector != sector:
            # Sending would only fetch a 63 00; this is a caller bug, say so.
            raise UsageError(f"authenticate sector {sector} before {what} block {block}")

    def _refused(self, sw: int, data: bytes, what: str) -> CardError:
        """The error for a failed READ/UPDATE BINARY, after the session state was dropped."""
        self._auth = None
        if sw in _REFUSED:
            return AccessDenied(sw, data, f"{what}: the access bits do not allow this")
        if sw in _NOT_SUPPORTED:
            return _not_supported(sw, what)
        return ApduError(sw, data, f"{what}: card answered SW={sw:04X}")

    # -- commands --------------------------------------------------------------------------

    def uid(self) -> bytes:
        """The UID as the reader reports it (UID0 first): ``FF CA 00 00 00``."""
        self.apdu_count += 1
        try:
            # transceive: some readers answer GET DATA with 6C xx (exact length) first.
            data, sw = transceive(
                self._conn, bytes((CLA_PCSC, INS_GET_DATA, P1_GET_DATA_UID, 0, 0))
            )
        except BaseException:
            self.forget()
            raise
        if sw != SW_SUCCESS:
            if sw in _NOT_SUPPORTED:
                raise _not_supported(sw, "GET DATA (UID)")
            raise ApduError(sw, data)
        if len(data) not in (4, 7, 10):
            raise CardDataInvalid(f"the reader returned a {len(data)}-byte UID")
        return data

    def load_key(self, slot: int, key: bytes) -> None:
        """Put a key into a reader slot: ``FF 82 <structure> <slot> 06 <key>``.

        Not sent when this session already loaded the same key into that slot.

        :raises CardNotSupported: ``69 86``: the reader does not take this key structure or
            slot (the ACR128 needs ``key_structure=0x20``)
        """
        if not 0 <= slot <= 0xFF:
            raise InvalidInput("key slots are one byte")
        key = bytes(key)
        if len(key) != KEY_SIZE:
            raise InvalidInput(f"MIFARE keys are {KEY_SIZE} bytes")
        digest = self._digest(key)
        if self._loaded.get(slot) == digest:
            return
        # The slot changes (or its content is unknown): an authentication made with it no
        # longer says anything about the new key.
        self._loaded.pop(slot, None)
        if self._auth is not None and self._auth.slot == slot:
            self._auth = None
        apdu = bytes((CLA_PCSC, INS_LOAD_KEYS, self.key_structure, slot, KEY_SIZE)) + key
        data, sw = self._send(apdu)
        if sw != SW_SUCCESS:
            self._auth = None
            if sw == SW_NOT_ALLOWED:
                raise CardNotSupported(
                    f"the reader refused LOAD KEYS with key structure {self.key_structure:02X} "
                    f"into slot {slot:02X} (SW=6986); readers such as the ACR128 keep keys in "
                    "non-volatile structure 20 (key_structure=0x20), the ACR122U only in "
                    "volatile structure 00, slots 00-01"
                )
            if sw == SW_FUNCTION_NOT_SUPPORTED:
                raise _not_supported(sw, "LOAD KEYS")
            raise ApduError(sw, data, f"LOAD KEYS into slot {slot:02X}: card answered SW={sw:04X}")
        self._loaded[slot] = digest

    def load_keys(
        self, keys: SectorKeys, key_types: Iterable[KeyType] = (KeyType.A, KeyType.B)
    ) -> None:
        """Load the key file's keys into this session's slots for A and B."""
        for key_type in key_types:
            self.load_key(self.slot_for(key_type), keys.key(key_type))

    def authenticate(self, block: int, key_type: KeyType, slot: int | None = None) -> None:
        """Authenticate the sector of ``block``:
        ``FF 86 00 00 05 01 00 <block> <key type> <slot>``.

        Not sent when the same sector is already authenticated with the same key type and slot.

        :param slot: default: this session's slot for ``key_type``
        :raises AuthenticationFailed: ``63 00`` (or ``69 82``): wrong key, or a key B that the
            access bits make readable
        """
        self._limit_block(block)
        key_type = KeyType(key_type)
        slot = self.slot_for(key_type) if slot is None else slot
        if not 0 <= slot <= 0xFF:
            raise InvalidInput("key slots are one byte")
        sector = sector_of(block)
        wanted = _Authenticated(sector, key_type, slot)
        if self._auth == wanted:
            return
        self._auth = None
        apdu = bytes(
            (CLA_PCSC, INS_GENERAL_AUTHENTICATE, 0x00, 0x00, 0x05, GENERAL_AUTHENTICATE_VERSION)
        ) + bytes((block >> 8, block & 0xFF, key_type, slot))
        data, sw = self._send(apdu)
        if sw == SW_SUCCESS:
            self._auth = wanted
            logger.debug("authenticated sector %d with key %s", sector, key_type.name)
            return
        if sw in _REFUSED:
            raise AuthenticationFailed(
                sw,
                data,
                f"sector {sector} refused key {key_type.name} from slot {slot:02X} "
                "(wrong key, or a key B the access bits make readable)",
            )
        if sw in _NOT_SUPPORTED:
            raise _not_supported(sw, "GENERAL AUTHENTICATE")
        raise ApduError(sw, data, f"authenticating sector {sector}: card answered SW={sw:04X}")

    def authenticate_sector(self, sector: int, key_type: KeyType, slot: int | None = None) -> None:
        self._limit_sector(sector)
        self.authenticate(first_block(sector), key_type, slot)

    def read_block(self, block: int) -> bytes:
        """One block: ``FF B0 00 <block> 10``. Its sector must be authenticated.

        A trailer reads with key A as zeros (and key B too unless the bits make it readable).

        :raises AccessDenied: the access bits do not let the authenticated key read it
        :raises CardDataInvalid: the reader returned something other than 16 bytes
        """
        self._limit_block(block)
        self._require_auth(block, "reading")
        data, sw = self._send(bytes((CLA_PCSC, INS_READ_BINARY, 0x00, block, BLOCK_SIZE)))
        if sw != SW_SUCCESS:
            raise self._refused(sw, data, f"reading block {block}")
        if len(data) != BLOCK_SIZE:
            self._auth = None
            raise CardDataInvalid(f"block {block}: the reader returned {len(data)} bytes, not 16")
        return data

    def write_block(self, block: int, data: bytes, *, verify: bool = True) -> None:
        """Write one data block: ``FF D6 00 <block> 10 <data>``. Its sector must be authenticated.

        Refused before sending: block 0 (manufacturer block), any sector trailer (only
        :meth:`write_trailer` writes those, after its checks), and data other than 16 bytes.

        :param verify: read the block back and compare (one more APDU); turn off to batch the
            read-backs of several writes
        :raises AccessDenied: the access bits do not let the authenticated key write it
        :raises WriteVerificationFailed: the read-back differs
        """
        self._limit_block(block)
        if block == 0:
            raise InvalidInput("block 0 is the read-only manufacturer block")
        if is_trailer(block):
            raise UnsafeTrailer(
                f"block {block} is the sector trailer of sector {sector_of(block)}; trailers "
                "are written only through write_trailer(), which checks the access bits and keys"
            )
        data = bytes(data)
        if len(data) != BLOCK_SIZE:
            raise InvalidInput(f"a block is {BLOCK_SIZE} bytes, not {len(data)}")
        self._require_auth(block, "writing")
        self._update(block, data)
        if verify and self.read_block(block) != data:
            # No data in the message: blocks carry library numbers (national IDs).
            raise WriteVerificationFailed(
                f"block {block} reads back different from what was written"
            )

    def _update(self, block: int, data: bytes) -> None:
        apdu = bytes((CLA_PCSC, INS_UPDATE_BINARY, 0x00, block, BLOCK_SIZE)) + data
        answer, sw = self._send(apdu)
        if sw != SW_SUCCESS:
            raise self._refused(sw, answer, f"writing block {block}")

    def read_sector(
        self,
        sector: int,
        key_type: KeyType,
        *,
        slot: int | None = None,
        include_trailer: bool = False,
    ) -> list[bytes]:
        """Authenticate (if needed) and read the sector's data blocks, in order.

        :param include_trailer: also read the trailer (keys masked by the card) as the last item
        """
        self.authenticate_sector(sector, key_type, slot)
        first = first_block(sector)
        count = blocks_in_sector(sector) - (0 if include_trailer else 1)
        return [self.read_block(b) for b in range(first, first + count)]

    def read_access(self, sector: int) -> tuple[AccessBits | None, int]:
        """The sector's access bits (None: invalid, the sector is blocked) and its GPB.

        Needs an authenticated sector; every key that can authenticate may read the access bits.
        """
        raw = self.read_block(trailer_block(sector))
        return decode_access(raw[6:9]), raw[9]

    def write_trailer(
        self,
        sector: int,
        trailer: SectorTrailer,
        *,
        writer_key: KeyType,
        keys_we_hold: Iterable[KeyType],
        policy: TrailerPolicy = STUDENT_POLICY,
        current_key: bytes | None = None,
    ) -> None:
        """Change a sector's keys and access bits, the one irreversible MIFARE operation.

        1. :func:`~cardd.rfid.access.check_trailer_safe` on the new trailer (no APDU yet);
        2. authenticate with ``writer_key`` (its *current* value) and read the current access
           bits; refuse if the card would write the trailer only in part;
        3. write the trailer;
        4. authenticate with a *new* key we hold and read the access bits back to confirm.

        Typically 7 APDUs: load current key, auth, read, write, load new key, auth, read.

        :param writer_key: the key type that writes the trailer
        :param keys_we_hold: the key types whose new values (in ``trailer``) we keep
        :param current_key: the writer key's current value, loaded into its slot; None if the
            caller loaded it already
        :raises UnsafeTrailer: refused before anything was written
        :raises WriteVerificationFailed: written, but the new key or the bits do not check out
        """
        self._limit_sector(sector)
        writer_key = KeyType(writer_key)
        held = frozenset(keys_we_hold)
        check_trailer_safe(trailer, writer_key=writer_key, keys_we_hold=held, policy=policy)
        block = trailer_block(sector)

        if current_key is not None:
            self.load_key(self.slot_for(writer_key), current_key)
        self.authenticate(block, writer_key)
        now = self.read_block(block)
        check_trailer_safe(
            trailer, writer_key=writer_key, keys_we_hold=held, policy=policy, current=now[6:10]
        )

        logger.info(
            "writing the trailer of sector %d: access bits %s", sector, trailer.access.hex().upper()
        )
        self._update(block, trailer.to_bytes())
        # The keys on the card changed under the slot we authenticated with.
        self._auth = None

        bits = trailer.bits
        usable = bits.usable(held)
        verify_key = writer_key if writer_key in usable else min(usable)
        self.load_key(self.slot_for(verify_key), trailer.key(verify_key))
        try:
            self.authenticate(block, verify_key)
        except AuthenticationFailed as exc:
            raise WriteVerificationFailed(
                f"the trailer of sector {sector} was written, but the sector does not answer to "
                f"the new key {verify_key.name}; try the old and the new keys before using the card"
            ) from exc
        back = self.read_block(block)
        if back[6:10] != trailer.access + bytes((trailer.gpb,)):
            raise WriteVerificationFailed(
                f"the trailer of sector {sector} was written, but its access bits read back as "
                f"{back[6:9].hex(' ').upper()}, not {trailer.access.hex(' ').upper()}"
            )


def _not_supported(sw: int, what: str) -> CardNotSupported:
    return CardNotSupported(
        f"{what}: the reader or card does not support this command (SW={sw:04X}); "
        "it needs a PC/SC Part 3 reader and a MIFARE Classic card"
    )
