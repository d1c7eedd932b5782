# SPDX-License-Identifier: Apache-2.0
"""UID forms (product.md "UID forms", contactless.md §2).

One UID, every form library systems use. The canonical form is ``hex``: the bytes in the order
``FF CA 00 00 00`` returns them (UID0 first). ``decLE`` is the EasyCard chip number (內碼): the
bytes read as a little-endian integer, verified against EasyCard's own terminal code. ``decBE``
and ``hexReversed`` are what other readers and systems (many Arduino sketches, UBike) store; they
matter when registrations made elsewhere are migrated.

Decimal padding: 10 digits for 4-byte UIDs and 17 for 7-byte UIDs (the contract); for 10-byte
(triple-size) UIDs, a decision: 25 digits, the width of the largest 80-bit value
(2**80 - 1 = 1208925819614629174706175). The rule for all three is the same: as many digits as the
largest value of that length has, so a padded form never changes width within one length.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from cardd.errors import InvalidInput

#: the UID lengths ISO 14443-3 defines: single, double and triple size
UID_LENGTHS: tuple[int, ...] = (4, 7, 10)

#: zero-padding width of decLE / decBE for each UID length (digits of 256**n - 1)
DECIMAL_WIDTH: Mapping[int, int] = MappingProxyType({n: len(str(256**n - 1)) for n in UID_LENGTHS})

# A 4-byte UID starting 08 is an NXP random ID (NXP AN10927): it changes at every power-up.
_RANDOM_UID_FIRST_BYTE = 0x08

_HEX = frozenset(string.hexdigits)
_DIGITS = frozenset(string.digits)
# Separators people type or paste between hex bytes: "93 A1 31 C0", "93:A1:31:C0", "93-a1-31-c0".
_HEX_SEPARATORS = str.maketrans("", "", " :-")
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}


class UidForm(StrEnum):
    """The forms an operator may type a chip number in; values are the API's JSON keys."""

    HEX = "hex"
    HEX_REVERSED = "hexReversed"
    DEC_LE = "decLE"
    DEC_BE = "decBE"


def _check_length(n: int) -> None:
    if n not in UID_LENGTHS:
        raise InvalidInput(f"a UID is 4, 7 or 10 bytes long (got {n})")


@dataclass(frozen=True)
class UidForms:
    """Every form of one UID. Build it with :func:`uid_forms`."""

    hex: str
    hex_reversed: str
    dec_le: str
    dec_be: str
    length: int

    @property
    def uid(self) -> bytes:
        """The UID bytes in reader order."""
        return bytes.fromhex(self.hex)

    def to_dict(self) -> dict[str, str | int]:
        """The API's JSON shape: keys exactly ``hex``, ``hexReversed``, ``decLE``, ``decBE``, ``length``."""
        return {
            UidForm.HEX.value: self.hex,
            UidForm.HEX_REVERSED.value: self.hex_reversed,
            UidForm.DEC_LE.value: self.dec_le,
            UidForm.DEC_BE.value: self.dec_be,
            "length": self.length,
        }


def uid_forms(uid: bytes) -> UidForms:
    """All forms of a UID as returned by ``FF CA 00 00 00`` (first byte first).

    :raises InvalidInput: for lengths other than 4, 7 and 10 bytes.
    """
    u = bytes(uid)
    _check_length(len(u))
    width = DECIMAL_WIDTH[len(u)]
    return UidForms(
        hex=u.hex().upper(),
        hex_reversed=u[::-1].hex().upper(),
        dec_le=str(int.from_bytes(u, "little")).zfill(width),
        dec_be=str(int.from_bytes(u, "big")).zfill(width),
        length=len(u),
    )


def is_random_uid(uid: bytes) -> bool:
    """True for an NXP random ID: such a card cannot be bound by its UID."""
    return len(uid) == 4 and uid[0] == _RANDOM_UID_FIRST_BYTE


def _infer_length(digits: int) -> int:
    """UID length from the number of decimal digits typed (leading zeros count)."""
    for n in UID_LENGTHS:
        if digits <= DECIMAL_WIDTH[n]:
            return n
    raise InvalidInput(
        f"a decimal UID has at most {DECIMAL_WIDTH[UID_LENGTHS[-1]]} digits (got {digits})"
    )


def parse_uid_text(text: str, form: UidForm | str, length: int | None = None) -> bytes:
    """The UID bytes (reader order) for a chip number typed in one of the forms.

    For the inverse direction: an operator types a number from another system.

    :param form: ``hex``, ``hexReversed``, ``decLE`` or ``decBE``.
    :param length: UID length in bytes. For hex forms it is checked if given. For decimal forms
        it is inferred from the number of digits if not given (up to 10 digits: 4 bytes, up to
        17: 7 bytes, up to 25: 10 bytes); give it when the other system strips leading zeros
        from 7-byte chip numbers.
    :raises InvalidInput: with the reason.
    """
    try:
        kind = UidForm(form)
    except ValueError:
        choices = ", ".join(f.value for f in UidForm)
        raise InvalidInput(f"unknown UID form {form!r}; use one of {choices}") from None
    if length is not None:
        _check_length(length)
    if not isinstance(text, str):
        raise InvalidInput("the UID must be given as text")
    s = text.translate(_FULLWIDTH).strip()
    if not s:
        raise InvalidInput("the UID is empty")

    if kind in (UidForm.HEX, UidForm.HEX_REVERSED):
        h = s.translate(_HEX_SEPARATORS)
        if h[:2] in ("0x", "0X"):
            h = h[2:]
        if not h or not all(c in _HEX for c in h):
            raise InvalidInput(
                "a hex UID may contain only 0-9 and A-F (spaces, ':' and '-' between bytes are ignored)"
            )
        if len(h) % 2:
            raise InvalidInput(f"a hex UID needs two digits per byte (got {len(h)} digits)")
        raw = bytes.fromhex(h)
        _check_length(len(raw))
        if length is not None and len(raw) != length:
            raise InvalidInput(f"the UID has {len(raw)} bytes, not the {length} given")
        return raw if kind is UidForm.HEX else raw[::-1]

    if not all(c in _DIGITS for c in s):
        raise InvalidInput("a decimal UID may contain only the digits 0-9")
    n = length if length is not None else _infer_length(len(s))
    value = int(s)
    if value >= 256**n:
        raise InvalidInput(
            f"the number is too large for a {n}-byte UID (at most {256**n - 1}); "
            "give the UID length if the chip has a longer UID"
        )
    return value.to_bytes(n, "little" if kind is UidForm.DEC_LE else "big")
