# SPDX-License-Identifier: Apache-2.0
"""What a kiosk read: a library number, a chip number, an EM4100 tag, a barcode.

Every input the kiosk gets (kiosk.md §4) becomes one :class:`Token`, pure and without I/O:

================== ======================================================= ===================
kind               from                                                    asked about as
================== ======================================================= ===================
``library_number`` a student card's record sector (read with the key file)  the 12 characters
                   or a barcode holding ID number + 2-digit suffix
``uid``            EasyCard / iPass / any contactless UID (PC/SC or NFC)     the site's UID form
``em4100``         a 125 kHz tag on a serial reader                        the site's EM4100
                                                                           form
``virtual_card``   a printed virtual interlibrary card (seeds/003,          the number as
                   e.g. ``CUTE-1-20131107112934``)                          printed
``barcode``        any other barcode matching the site's patron patterns   the text
``unknown``        a random UID, an unreadable record, a barcode that       (never asked)
                   matches nothing
================== ======================================================= ===================

``value`` is the patron identifier the library system is asked about (SIP2 ``AA``). Which UID
form that is depends on what the library system stores (contactless.md §2): ``dec10_le``, the
EasyCard 內碼 (little-endian decimal, 10 digits for 4-byte UIDs and 17 for 7-byte ones, as the
UID contract pads them) is the default; ``dec10_le_last10`` is the truncation some EasyCard
integrations apply to 7-byte UIDs; ``dec_be``, ``hex`` and ``hex_reversed`` are what other
readers and systems store.

The virtual interlibrary card's number ends in the time of its application
(``YYYYMMDDhhmmss``, local time): the seed's example, applied 2013-11-07, reads "使用期限至
2013-11-10", so a card is valid through the end of the day ``days`` (3) after that date.

Masking (tokens go into events, logs and the audit): a library number keeps what
``cardd.rfid.idnumber.mask_id`` keeps (``A12*****8901``); every other value keeps its last four
characters (``******8099``), enough for a librarian to match a card in hand, too little to copy
one. A virtual card keeps its school prefix as well (it names no person).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from cardd.errors import ConfigError, InvalidInput
from cardd.rfid.idnumber import LIBRARY_NUMBER_LENGTH, LibraryNumber, mask_id, parse_library_number
from cardd.rfid.uid import is_random_uid, uid_forms


class TokenKind(StrEnum):
    LIBRARY_NUMBER = "library_number"
    UID = "uid"
    EM4100 = "em4100"
    VIRTUAL_CARD = "virtual_card"
    BARCODE = "barcode"
    UNKNOWN = "unknown"


class TokenSource(StrEnum):
    """Where the token came from (the page and the audit say "card", "barcode", ...)."""

    CARD_RECORD = "card_record"  # the student-card record sector
    CHIP = "chip"  # a contactless UID
    EM4100 = "em4100"
    BARCODE = "barcode"


#: UID forms a site may send to its library system, by configuration name
UID_FORMS: tuple[str, ...] = ("dec10_le", "dec10_le_last10", "dec_be", "hex", "hex_reversed")
#: EM4100 forms (the serial backend's keys): 10-digit decimal of the 4 tag bytes, 10 hex, AAA,BBBBB
EM4100_FORMS: tuple[str, ...] = ("decimal10", "hex", "wiegand")

#: The seed's virtual interlibrary card: school code, a serial, the application time.
DEFAULT_VIRTUAL_CARD_PATTERN = (
    r"(?P<school>[A-Z]{2,10})-(?P<serial>[0-9]{1,6})-(?P<applied>[0-9]{14})"
)
#: Printed patron barcodes that are neither library numbers nor virtual cards: digits only.
DEFAULT_BARCODE_PATTERNS: tuple[str, ...] = (r"[0-9]{8,14}",)

_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_PRINTABLE = frozenset(string.printable) - frozenset("\r\n\t\x0b\x0c")
#: a barcode line longer than this is not a card (a scanner misread, or someone's QR payload)
MAX_BARCODE_LENGTH = 64


@dataclass(frozen=True)
class TokenRules:
    """The site's choices for turning reads into patron identifiers ([kiosk] configuration)."""

    uid_form: str = "dec10_le"
    em4100_form: str = "decimal10"
    barcode_patterns: tuple[str, ...] = DEFAULT_BARCODE_PATTERNS
    virtual_card_pattern: str = DEFAULT_VIRTUAL_CARD_PATTERN
    #: days a virtual card stays valid after the day of its application
    virtual_card_days: int = 3
    _compiled: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _virtual: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.uid_form not in UID_FORMS:
            raise ConfigError(f"kiosk.uid_form must be one of {', '.join(UID_FORMS)}")
        if self.em4100_form not in EM4100_FORMS:
            raise ConfigError(f"kiosk.em4100_form must be one of {', '.join(EM4100_FORMS)}")
        if self.virtual_card_days < 0:
            raise ConfigError("kiosk.virtual_card_days cannot be negative")
        compiled = []
        for pattern in self.barcode_patterns:
            compiled.append(_compile(pattern, "kiosk.barcode_patterns"))
        virtual = _compile(self.virtual_card_pattern, "kiosk.virtual_card_pattern")
        if "applied" not in virtual.groupindex:
            raise ConfigError(
                "kiosk.virtual_card_pattern needs a group (?P<applied>YYYYMMDDhhmmss)"
            )
        object.__setattr__(self, "_compiled", tuple(compiled))
        object.__setattr__(self, "_virtual", virtual)


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{where}: {pattern!r} is not a regular expression ({e})") from None


@dataclass(frozen=True, repr=False)
class Token:
    """One read, classified. ``value`` is what the library system is asked about."""

    kind: TokenKind
    source: TokenSource
    value: str
    #: the contactless UID (hex, reader order) when the read came from a chip: the ledger's key
    uid_hex: str | None = None
    reader: str | None = None
    #: why a read is ``unknown`` (a stable code: random_uid, record_corrupt, unknown_barcode, ...)
    problem: str | None = None
    #: a virtual card's application time (local)
    applied: datetime | None = None

    @property
    def masked(self) -> str:
        if self.kind is TokenKind.LIBRARY_NUMBER:
            return mask_id(self.value)
        if self.kind is TokenKind.VIRTUAL_CARD and "-" in self.value:
            school, rest = self.value.split("-", 1)
            return f"{school}-{_mask_tail(rest)}"
        if not self.value and self.uid_hex:
            return _mask_tail(self.uid_hex)
        return _mask_tail(self.value)

    @property
    def key(self) -> tuple[str, str]:
        """Identity for debouncing: the same card read twice has the same key."""
        if self.kind is TokenKind.UNKNOWN:
            return (f"unknown:{self.problem}", self.value or self.uid_hex or "")
        return (self.kind.value, self.value)

    def to_event(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind.value,
            "source": self.source.value,
            "masked": self.masked,
        }
        if self.reader:
            out["reader"] = self.reader
        return out

    def __repr__(self) -> str:  # tokens end up in debug logs and tracebacks: masked only
        return f"Token({self.kind.value}, {self.masked!r}, source={self.source.value})"


def _mask_tail(text: str, keep: int = 4) -> str:
    if len(text) <= keep:
        return "*" * len(text)
    return "*" * (len(text) - keep) + text[-keep:]


def _fold(text: str) -> str:
    return text.translate(_FULLWIDTH).strip()


# -- classification ------------------------------------------------------------------------


def uid_value(uid: bytes, form: str) -> str:
    """The patron identifier for a UID in one of :data:`UID_FORMS`."""
    forms = uid_forms(uid)
    if form == "dec10_le":
        return forms.dec_le
    if form == "dec10_le_last10":
        return forms.dec_le[-10:]
    if form == "dec_be":
        return forms.dec_be
    if form == "hex":
        return forms.hex
    if form == "hex_reversed":
        return forms.hex_reversed
    raise ConfigError(f"unknown UID form {form!r}")


def from_record(number: LibraryNumber, uid: bytes | None, reader: str | None = None) -> Token:
    """A student card whose record sector held a valid library number."""
    return Token(
        TokenKind.LIBRARY_NUMBER,
        TokenSource.CARD_RECORD,
        str(number),
        uid_hex=uid.hex().upper() if uid else None,
        reader=reader,
    )


def unreadable(problem: str, uid: bytes | None = None, reader: str | None = None) -> Token:
    """A read that identifies nobody (``problem`` is the stable reason code)."""
    return Token(
        TokenKind.UNKNOWN,
        TokenSource.CHIP,
        "",
        uid_hex=uid.hex().upper() if uid else None,
        reader=reader,
        problem=problem,
    )


def from_tap(data: Mapping[str, Any], rules: TokenRules) -> Token:
    """A ``tag.tapped`` event: PC/SC and NFC taps carry UID forms, serial EM4100 taps their ID.

    :raises InvalidInput: for an event that is neither shape (a bug in a backend, not a card).
    """
    reader = data.get("reader")
    reader = reader if isinstance(reader, str) else None
    if data.get("kind") == "em4100":
        em = data.get("em4100")
        if not isinstance(em, Mapping) or not isinstance(em.get(rules.em4100_form), str):
            raise InvalidInput(f"an EM4100 tap without its {rules.em4100_form!r} form")
        return Token(
            TokenKind.EM4100, TokenSource.EM4100, str(em[rules.em4100_form]), reader=reader
        )
    forms = data.get("uid")
    hex_uid = forms.get("hex") if isinstance(forms, Mapping) else None
    if not isinstance(hex_uid, str):
        raise InvalidInput("a tap without a UID")
    try:
        uid = bytes.fromhex(hex_uid)
    except ValueError:
        raise InvalidInput("a tap whose UID is not hex") from None
    if data.get("randomUid") or is_random_uid(uid):
        # A random ID changes at every power-up: it cannot name anyone (contactless.md §1).
        return unreadable("random_uid", uid, reader)
    return Token(
        TokenKind.UID,
        TokenSource.CHIP,
        uid_value(uid, rules.uid_form),
        uid_hex=uid.hex().upper(),
        reader=reader,
    )


def from_barcode(text: object, rules: TokenRules, reader: str | None = None) -> Token:
    """A scanned line: a library number, a virtual interlibrary card, a patron barcode, or
    ``unknown`` (which the kiosk refuses without asking the library system)."""
    if not isinstance(text, str):
        return Token(
            TokenKind.UNKNOWN, TokenSource.BARCODE, "", reader=reader, problem="unknown_barcode"
        )
    folded = _fold(text)
    if not folded or len(folded) > MAX_BARCODE_LENGTH or not set(folded) <= _PRINTABLE:
        return Token(
            TokenKind.UNKNOWN, TokenSource.BARCODE, "", reader=reader, problem="unknown_barcode"
        )
    if len(folded) == LIBRARY_NUMBER_LENGTH and folded[:1].isalpha():
        try:
            number = parse_library_number(folded)
        except InvalidInput:
            pass  # a 12-character code that is not a library number may still be a barcode
        else:
            return Token(TokenKind.LIBRARY_NUMBER, TokenSource.BARCODE, str(number), reader=reader)
    m = rules._virtual.fullmatch(folded.upper())
    if m is not None:
        applied = _timestamp(m.group("applied"))
        if applied is not None:
            return Token(
                TokenKind.VIRTUAL_CARD,
                TokenSource.BARCODE,
                folded.upper(),
                reader=reader,
                applied=applied,
            )
    for pattern in rules._compiled:
        if pattern.fullmatch(folded):
            return Token(TokenKind.BARCODE, TokenSource.BARCODE, folded, reader=reader)
    return Token(
        TokenKind.UNKNOWN, TokenSource.BARCODE, folded, reader=reader, problem="unknown_barcode"
    )


def _timestamp(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S")
    except ValueError:
        return None


def virtual_card_valid(token: Token, today: date, days: int) -> bool:
    """A virtual interlibrary card is valid through the end of the ``days``-th day after the day
    it was applied for (seeds/003: applied 2013-11-07 → "使用期限至 2013-11-10")."""
    if token.applied is None:
        return False
    applied_day = token.applied.date()
    return applied_day <= today <= applied_day + timedelta(days=days)
