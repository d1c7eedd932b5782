# SPDX-License-Identifier: Apache-2.0
"""Pieces every contactless card model shares: the reader's view of a contactless card.

A contactless card behind a PC/SC reader (ACR122U-like) looks like this to the host:

* an ATR the *reader* invents (contactless.md §4): the PC/SC pseudo-ATR for storage cards, or
  ``3B 8N 80 01 <historical bytes> TCK`` for ISO-DEP cards;
* pseudo-APDUs with CLA ``FF`` that the *reader firmware* executes (contactless.md §3). GET DATA
  (``FF CA``) is answered from what the reader learnt during anticollision, so every model
  answers it the same way, here;
* every other CLA is passed to the card (ISO-DEP) or refused (storage cards: ``6E 00``).

:class:`ContactlessCard` implements that dispatch; the models override two hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, unique
from functools import reduce

from cardd.sim.cards.base import SW_OK, sw

CLA_PCSC = 0xFF

INS_GET_DATA = 0xCA
INS_LOAD_KEYS = 0x82
INS_GENERAL_AUTHENTICATE = 0x86
#: PC/SC 2.01 AUTHENTICATE, still sent by older host code: ``FF 88 00 <block> <type> <slot>``.
INS_AUTHENTICATE_OBSOLETE = 0x88
INS_READ_BINARY = 0xB0
INS_UPDATE_BINARY = 0xD6
INS_SELECT = 0xA4
INS_GET_RESPONSE = 0xC0

#: GET DATA P1: what to return.
GET_DATA_UID = 0x00
GET_DATA_ATS = 0x01


@unique
class SW(IntEnum):
    """Status words the models answer (contactless.md §3 table)."""

    OK = 0x9000
    END_OF_DATA = 0x6282
    FAILED = 0x6300
    WRONG_LENGTH = 0x6700
    NOT_ALLOWED = 0x6986
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00


#: SW1 of "wrong Le, SW2 = exact length" and of "SW2 more bytes available".
SW1_WRONG_LE = 0x6C
SW1_BYTES_AVAILABLE = 0x61

# Card names (C0 C1) in the PC/SC pseudo-ATR (contactless.md §4).
CARD_NAME_CLASSIC_1K = b"\x00\x01"
CARD_NAME_CLASSIC_4K = b"\x00\x02"
CARD_NAME_ULTRALIGHT = b"\x00\x03"
CARD_NAME_MINI = b"\x00\x26"

#: SS byte of the pseudo-ATR: ISO 14443 A part 3.
STANDARD_ISO14443A_3 = 0x03
#: Registered application provider ID of the PC/SC workgroup.
PCSC_RID = bytes.fromhex("A000000306")

#: The ISO 14443-3 cascade tag: announces that more UID bytes follow in the next cascade level,
#: so it can never be the first byte of the last level.
CASCADE_TAG = 0x88
UID_LENGTHS = (4, 7, 10)


def xor_all(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


def storage_atr(card_name: bytes, *, standard: int = STANDARD_ISO14443A_3) -> bytes:
    """The pseudo-ATR a PC/SC reader reports for a storage card.

    ``3B 8F 80 01 | 80 4F 0C A0 00 00 03 06 SS C0 C1 00 00 00 00 | TCK``

    :param card_name: the two card-name bytes C0 C1, e.g. :data:`CARD_NAME_CLASSIC_1K`
    :param standard: the SS byte
    """
    if len(card_name) != 2:
        raise ValueError("card name must be 2 bytes")
    if not 0 <= standard <= 0xFF:
        raise ValueError("standard must be one byte")
    aid = PCSC_RID + bytes((standard,)) + card_name + bytes(4)
    historical = bytes((0x80, 0x4F, len(aid))) + aid
    return _atr_with_tck(historical)


def isodep_atr(historical: bytes) -> bytes:
    """The ATR a PC/SC reader reports for an ISO 14443-4 type A card: ``3B 8N 80 01 <hist> TCK``.

    :param historical: the historical bytes of the card's ATS (at most 15)
    """
    return _atr_with_tck(historical)


def _atr_with_tck(historical: bytes) -> bytes:
    if len(historical) > 15:
        raise ValueError("at most 15 historical bytes fit in an ATR")
    # T0 = 8K: TD1 present, K historical bytes. TD1 = 80: TD2 present, T=0. TD2 = 01: T=1.
    # Offering T=1 obliges a TCK, which covers T0 up to the last historical byte.
    body = bytes((0x80 | len(historical), 0x80, 0x01)) + historical
    return b"\x3b" + body + bytes((xor_all(body),))


def validate_uid(uid: bytes, *, lengths: tuple[int, ...] = UID_LENGTHS) -> bytes:
    """Check an ISO 14443-3 UID and return it as immutable bytes.

    :param uid: UID0 first, as ``FF CA 00 00 00`` returns it
    :param lengths: the sizes allowed (single 4, double 7, triple 10)
    :raises ValueError: wrong length, or the cascade tag where the last cascade level starts
    """
    uid = bytes(uid)
    if len(uid) not in lengths:
        allowed = ", ".join(str(n) for n in lengths)
        raise ValueError(f"UID must be {allowed} bytes, not {len(uid)}")
    # The last cascade level starts at UID0 (4 bytes), UID3 (7) or UID6 (10); a cascade tag there
    # would tell the reader to run another level, so no real card can have one.
    last_level = {4: 0, 7: 3, 10: 6}[len(uid)]
    if uid[last_level] == CASCADE_TAG:
        raise ValueError(f"UID byte {last_level} cannot be the cascade tag 88")
    return uid


def bcc(uid4: bytes) -> int:
    """Block check character of a cascade level: the XOR of its four bytes."""
    return xor_all(uid4)


@dataclass(frozen=True)
class CommandApdu:
    """A short command APDU (ISO 7816-4 cases 1-4), parsed leniently from what the host sent."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    #: the Le byte as sent, None without one; 0 means "everything available, up to 256"
    le: int | None = None

    @property
    def ne(self) -> int | None:
        """The maximum response length the host asked for."""
        if self.le is None:
            return None
        return 256 if self.le == 0 else self.le

    @classmethod
    def parse(cls, apdu: bytes) -> CommandApdu | None:
        """Parse a short APDU; None if it is malformed or extended (neither reader supports those).

        :param apdu: the raw command
        """
        if len(apdu) < 4:
            return None
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0])
        lc = body[0]
        if lc == 0:  # an extended length field
            return None
        if len(body) == 1 + lc:
            return cls(cla, ins, p1, p2, data=bytes(body[1:]))
        if len(body) == 2 + lc:
            return cls(cla, ins, p1, p2, data=bytes(body[1:-1]), le=body[-1])
        return None


def answer_with_le(data: bytes, le: int | None) -> bytes:
    """Answer ``data`` to a command with Le the way ACS readers answer GET DATA.

    Le absent or 00 returns everything; Le equal to the length too. A shorter Le gets
    ``6C <length>`` (retry with this Le); a longer one gets the data and ``62 82`` (end of data
    reached before Le bytes).
    """
    if le is None or le == 0 or le == len(data):
        return data + SW_OK
    if le < len(data):
        return bytes((SW1_WRONG_LE, len(data)))
    return data + sw(SW.END_OF_DATA)


class ContactlessCard:
    """A contactless card as seen through a PC/SC reader.

    Subclasses set :attr:`kind` and override :meth:`_process_pcsc` (the reader's CLA ``FF``
    commands other than GET DATA) and :meth:`_process_card` (any other CLA).
    """

    kind: str = "contactless"

    def __init__(self, uid: bytes, atr: bytes, *, ats: bytes | None = None) -> None:
        """
        :param uid: UID0 first; 4, 7 or 10 bytes
        :param atr: the ATR the reader reports
        :param ats: the ATS for GET DATA P1=01; None for cards without ISO 14443-4
        """
        self._uid = validate_uid(uid)
        self._atr = bytes(atr)
        self._ats = None if ats is None else bytes(ats)

    @property
    def uid(self) -> bytes:
        return self._uid

    @property
    def atr(self) -> bytes:
        return self._atr

    @property
    def ats(self) -> bytes | None:
        return self._ats

    def power_on(self) -> None:
        """Nothing volatile here; subclasses with session state override this."""

    def process(self, apdu: bytes) -> bytes:
        """Answer one command APDU (data + SW1 SW2)."""
        if len(apdu) < 4:
            return sw(SW.WRONG_LENGTH)
        if apdu[0] != CLA_PCSC:
            return self._process_card(apdu)
        if apdu[1] == INS_GET_DATA:
            return self._get_data(apdu)
        return self._process_pcsc(apdu)

    def _get_data(self, apdu: bytes) -> bytes:
        cmd = CommandApdu.parse(apdu)
        if cmd is None or cmd.data:
            return sw(SW.WRONG_LENGTH)
        if cmd.p2 != 0:
            return sw(SW.FUNCTION_NOT_SUPPORTED)
        if cmd.p1 == GET_DATA_UID:
            return answer_with_le(self._uid, cmd.le)
        if cmd.p1 == GET_DATA_ATS and self._ats is not None:
            return answer_with_le(self._ats, cmd.le)
        # ATS of a card without ISO 14443-4, or an unknown P1 (ACS: "6A 81")
        return sw(SW.FUNCTION_NOT_SUPPORTED)

    def _process_pcsc(self, apdu: bytes) -> bytes:
        """A CLA ``FF`` command other than GET DATA. Default: the reader does not know it."""
        return sw(SW.FUNCTION_NOT_SUPPORTED)

    def _process_card(self, apdu: bytes) -> bytes:
        """Any other CLA. Default: a storage card has no APDU interface to pass it to."""
        return sw(SW.CLA_NOT_SUPPORTED)
