# SPDX-License-Identifier: Apache-2.0
"""National ID and resident certificate numbers, library numbers, masking.

The rules are product.md "Card number rules":

- national ID (國民身分證): a letter, ``1`` or ``2``, 8 digits;
- old resident certificate (舊式統一證號): two letters (the second ``A``-``D``), 8 digits;
- new resident certificate (新式統一證號, since 2021): a letter, ``8`` or ``9``, 8 digits.

All three share one checksum: the first letter becomes its two-digit code from the official
table, giving 11 digits that are weighted 1,9,8,7,6,5,4,3,2,1,1; the sum must be divisible by 10.

A library number is the ID number followed by a two-digit suffix (``00`` first issue, then the
next value on each reissue; 99 cannot be followed).

Input normalisation (a decision; product.md is silent): surrounding whitespace is trimmed,
lowercase is upper-cased, and the full-width forms U+FF01..U+FF5E are folded to ASCII, because a
clerk typing with a Traditional Chinese IME in full-width mode produces ``Ａ１２３...`` and the
intent is unambiguous. We deliberately do *not* apply NFKC: it would also turn superscripts,
circled digits and Roman numerals (``Ⅸ`` -> ``IX``, changing the length) into "valid" input,
which no keyboard produces by accident. Any other non-ASCII character is refused with a reason.

Error messages never contain a full number: they name the rule that failed and, where the input
has the right length, show it masked (``A12*****89``), the same pattern ``cardd.log`` uses.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from cardd.errors import IdNumberInvalid, LibraryNumberInvalid, SuffixExhausted

ID_LENGTH = 10
SUFFIX_LENGTH = 2
LIBRARY_NUMBER_LENGTH = ID_LENGTH + SUFFIX_LENGTH
MAX_SUFFIX = 99

#: The official letter codes (product.md). Not alphabetical: I, O, W and Z were added to the
#: scheme after the others, hence I=34, O=35, W=32, Z=33.
LETTER_CODES: Mapping[str, int] = MappingProxyType(
    {
        "A": 10, "B": 11, "C": 12, "D": 13, "E": 14, "F": 15, "G": 16, "H": 17,
        "I": 34, "J": 18, "K": 19, "L": 20, "M": 21, "N": 22, "O": 35, "P": 23,
        "Q": 24, "R": 25, "S": 26, "T": 27, "U": 28, "V": 29, "W": 32, "X": 30,
        "Y": 31, "Z": 33,
    }
)  # fmt: skip

_WEIGHTS = (1, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1)
_DIGITS = frozenset(string.digits)
_ALNUM = frozenset(string.ascii_letters + string.digits)
# Full-width ASCII variants (what an IME in full-width mode types) -> ASCII.
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}

_SECOND_CHAR_REASON = (
    "the second character must be 1 or 2 "
    "(8 or 9 for a new resident certificate, A to D for an old one)"
)


class IdKind(StrEnum):
    NATIONAL = "national"
    RESIDENT_OLD = "resident_old"
    RESIDENT_NEW = "resident_new"

    @property
    def description(self) -> str:
        """A short English name for people (CLI output, diag)."""
        return _KIND_DESCRIPTIONS[self]


_KIND_DESCRIPTIONS: Mapping[IdKind, str] = MappingProxyType(
    {
        IdKind.NATIONAL: "national ID number",
        IdKind.RESIDENT_OLD: "resident certificate number (old format)",
        IdKind.RESIDENT_NEW: "resident certificate number (new format)",
    }
)


class _Rejected(Exception):
    """Internal: carries the reason a candidate failed, before it is worded for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _fold(text: str) -> str:
    """Trim and fold full-width characters; case and content are checked later."""
    return text.strip().translate(_FULLWIDTH).strip()


def _normalize(text: object) -> str:
    """Trimmed, folded, upper-cased ASCII letters and digits, or _Rejected."""
    if not isinstance(text, str):
        # The API hands us JSON values; a number or null must be refused, not crash.
        raise _Rejected("it must be given as text")
    folded = _fold(text)
    if not folded:
        raise _Rejected("it is empty")
    if not all(c in _ALNUM for c in folded):
        raise _Rejected(
            "it may contain only the letters A to Z and the digits 0 to 9 (no spaces or punctuation)"
        )
    # upper() only after the ASCII check: on other scripts it can change the length ("ß" -> "SS").
    return folded.upper()


def _kind_of(value: str) -> IdKind:
    """Format and checksum of an upper-case ASCII candidate; raises _Rejected."""
    kind = _format_kind(value)
    if _weighted_sum(value, kind) % 10 != 0:
        raise _Rejected("the check digit does not match; look for a typing error")
    return kind


def _format_kind(value: str) -> IdKind:
    """Everything but the checksum: length, letters, digits; which kind the shape says."""
    if len(value) != ID_LENGTH:
        raise _Rejected(f"it must be {ID_LENGTH} characters (got {len(value)})")
    if value[0] not in LETTER_CODES:
        raise _Rejected("the first character must be a letter A to Z")
    second = value[1]
    if second in "12":
        kind = IdKind.NATIONAL
    elif second in "89":
        kind = IdKind.RESIDENT_NEW
    elif second in "ABCD":
        kind = IdKind.RESIDENT_OLD
    else:
        raise _Rejected(_SECOND_CHAR_REASON)
    if not all(c in _DIGITS for c in value[2:]):
        raise _Rejected("the characters after the second must all be digits")
    return kind


def _code_digits(value: str, kind: IdKind) -> list[int]:
    """The 11 digits the weights apply to (the check digit last)."""
    code = LETTER_CODES[value[0]]
    head = [code // 10, code % 10]
    if kind is IdKind.RESIDENT_OLD:
        # Old resident certificates: the second letter (A/B/C/D) counts as the last digit of its
        # own letter code, A=10 -> 0, B=11 -> 1, C=12 -> 2, D=13 -> 3, at weight 8. This is the
        # rule of the published validators (guanting112/taiwan-id-validator twid.go:
        # `(genderWeight % 10) * 8`; enylin/taiwan-id-validator), and it accepts their sample
        # numbers AA00000009 and AC01234567, which our tests check by hand.
        return [*head, LETTER_CODES[value[1]] % 10, *(int(c) for c in value[2:])]
    return [*head, *(int(c) for c in value[1:])]


def _weighted_sum(value: str, kind: IdKind) -> int:
    return sum(w * d for w, d in zip(_WEIGHTS, _code_digits(value, kind), strict=True))


def _parse_id(text: object) -> tuple[str, IdKind]:
    try:
        value = _normalize(text)
        return value, _kind_of(value)
    except _Rejected as e:
        shown = (
            f" {mask_id(text)}" if isinstance(text, str) and len(_fold(text)) == ID_LENGTH else ""
        )
        raise IdNumberInvalid(f"ID number{shown} is not valid: {e.reason}") from None


def mask_id(value: str) -> str:
    """Mask a single ID number or library number for API answers and messages.

    Keeps the first three characters and the last two of the ID (plus the suffix of a library
    number): ``A123456789`` -> ``A12*****89``, ``A12345678901`` -> ``A12*****8901``; the same
    visible pattern as ``cardd.log.mask_id`` so a log line and an API answer can be matched.
    Anything that is neither 10 nor 12 characters is starred entirely: it is not a number we
    know the shape of, so we cannot tell which part is safe to show.
    """
    folded = _fold(value) if isinstance(value, str) else ""
    if len(folded) in (ID_LENGTH, LIBRARY_NUMBER_LENGTH):
        return f"{folded[:3]}{'*' * 5}{folded[8:]}".upper()
    return "*" * len(folded)


@dataclass(frozen=True, repr=False)
class IdNumber:
    """A checked national ID or resident certificate number. Build it with :func:`validate_id`."""

    value: str
    kind: IdKind

    def __post_init__(self) -> None:
        # Direct construction is checked too, so every IdNumber in the program is a valid one.
        value, kind = _parse_id(self.value)
        if value != self.value or kind is not self.kind:
            raise IdNumberInvalid(
                f"ID number {self.masked} does not match kind {self.kind!s}; build it with validate_id()"
            )

    @property
    def masked(self) -> str:
        return mask_id(self.value)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        # reprs end up in tracebacks and debug logs, which the log filter does not rewrite
        return f"IdNumber({self.masked!r}, {self.kind.value})"


def validate_id(text: str) -> IdNumber:
    """Check a national ID / resident certificate number and say which kind it is.

    :param text: as typed or scanned; whitespace, lowercase and full-width forms are accepted.
    :raises IdNumberInvalid: with a reason a desk clerk understands; never the full number.
    """
    value, kind = _parse_id(text)
    return IdNumber(value, kind)


def check_digit(prefix: str) -> int:
    """The check digit that completes a 9-character prefix (letter + 8 characters).

    For simulators and test rosters that need valid synthetic numbers.

    :raises IdNumberInvalid: when the prefix cannot start an ID number.
    """
    try:
        value = _normalize(prefix)
        if len(value) != ID_LENGTH - 1:
            raise _Rejected(f"a prefix must be {ID_LENGTH - 1} characters (got {len(value)})")
        kind = _format_kind(value + "0")
    except _Rejected as e:
        raise IdNumberInvalid(f"ID number prefix is not valid: {e.reason}") from None
    # The check digit has weight 1, so it is whatever brings the sum up to a multiple of 10.
    return -_weighted_sum(value + "0", kind) % 10


@dataclass(frozen=True, order=True, repr=False)
class LibraryNumber:
    """An ID number and a two-digit suffix; ``str()`` gives the 12 characters burned on a card."""

    id_number: str
    suffix: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.suffix, bool) or not isinstance(self.suffix, int):
            raise LibraryNumberInvalid("the suffix must be a whole number from 0 to 99")
        if not 0 <= self.suffix <= MAX_SUFFIX:
            raise LibraryNumberInvalid(
                f"the suffix must be from 0 to {MAX_SUFFIX} (got {self.suffix})"
            )
        value, _kind = _parse_id(self.id_number)
        # store the canonical form so equal numbers compare and hash equal
        object.__setattr__(self, "id_number", value)

    @classmethod
    def first(cls, id_number: str | IdNumber) -> LibraryNumber:
        """The first issue for an ID: suffix 00."""
        return cls(str(id_number), 0)

    def next(self) -> LibraryNumber:
        """The number for the next reissue.

        :raises SuffixExhausted: at suffix 99; suffixes are never reused, so a person decides.
        """
        if self.suffix >= MAX_SUFFIX:
            raise SuffixExhausted(
                f"library number {self.masked} has suffix {MAX_SUFFIX}, which cannot be followed: "
                "no suffix is left for another reissue and used suffixes are never given again. "
                "The issuing office must resolve it."
            )
        return LibraryNumber(self.id_number, self.suffix + 1)

    @property
    def id(self) -> IdNumber:
        return validate_id(self.id_number)

    @property
    def kind(self) -> IdKind:
        return self.id.kind

    @property
    def masked(self) -> str:
        return mask_id(str(self))

    def __str__(self) -> str:
        return f"{self.id_number}{self.suffix:0{SUFFIX_LENGTH}d}"

    def __repr__(self) -> str:
        return f"LibraryNumber({self.masked!r})"


def parse_library_number(text: str) -> LibraryNumber:
    """Parse 12 characters: the ID number (checksum checked) and a two-digit suffix.

    :raises LibraryNumberInvalid: with the reason; never the full number.
    """
    shown = ""
    try:
        value = _normalize(text)
        if len(value) == LIBRARY_NUMBER_LENGTH:
            shown = f" {mask_id(value)}"
        if len(value) != LIBRARY_NUMBER_LENGTH:
            hint = (
                "; this looks like an ID number without its 2-digit suffix"
                if len(value) == ID_LENGTH
                else ""
            )
            raise _Rejected(
                f"it must be {LIBRARY_NUMBER_LENGTH} characters, the {ID_LENGTH}-character ID "
                f"number and a {SUFFIX_LENGTH}-digit suffix (got {len(value)}){hint}"
            )
        id_part, suffix = value[:ID_LENGTH], value[ID_LENGTH:]
        if not all(c in _DIGITS for c in suffix):
            raise _Rejected("the last two characters (the suffix) must be digits")
        try:
            _kind_of(id_part)
        except _Rejected as e:
            raise _Rejected(f"its ID number part is not valid: {e.reason}") from None
    except _Rejected as e:
        raise LibraryNumberInvalid(f"library number{shown} is not valid: {e.reason}") from None
    return LibraryNumber(id_part, int(suffix))
