# SPDX-License-Identifier: Apache-2.0
"""Tell what card is in a reader from its ATR alone, before sending it any APDU.

Order of checks: the known-card table below (issuer-specific cards such as MOICA), then the
PC/SC Part 3 pseudo-ATR (contactless storage cards by their card-name code, other ISO-DEP cards),
then a generic verdict for contact cards. Nothing here raises: a card we cannot place comes back
as ``unknown`` together with its decoded ATR, so diag and the API can still show the bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from cardd.readers.atr import (
    Atr,
    ContactlessInfo,
    ContactlessKind,
    Convention,
    parse_atr,
    parse_contactless,
)


class CardType(StrEnum):
    MOICA_GEN1 = "moica_gen1"
    MOICA_GEN2 = "moica_gen2"
    MOICA_CONTACTLESS = "moica_contactless"
    MIFARE_CLASSIC_1K = "mifare_classic_1k"
    MIFARE_CLASSIC_4K = "mifare_classic_4k"
    MIFARE_ULTRALIGHT = "mifare_ultralight"
    MIFARE_MINI = "mifare_mini"
    FELICA = "felica"
    ISO14443_4 = "iso14443_4"  # an ISO-DEP card that is not in the known-card table
    CONTACTLESS_OTHER = "contactless_other"  # a storage card whose name code we do not map
    CONTACT_OTHER = "contact_other"  # a contact card with a clean ATR we do not know
    UNKNOWN = "unknown"


class MatchOn(StrEnum):
    """What part of the ATR a known-card entry compares."""

    HISTORICAL = "historical"  # the historical bytes, exactly
    HISTORICAL_CONTAINS = "historical_contains"  # the historical bytes contain the pattern


@dataclass(frozen=True)
class KnownCard:
    card_type: CardType
    label: str
    match: MatchOn
    pattern: bytes
    #: True: only a PC/SC contactless pseudo-ATR may match; False: only a contact ATR may.
    contactless: bool
    #: A full ATR seen in the field, for documentation and tests; matching does not use it.
    example_atr: bytes

    def matches(self, atr: Atr, contactless: bool) -> bool:
        if contactless != self.contactless:
            return False
        if self.match is MatchOn.HISTORICAL:
            return atr.historical_bytes == self.pattern
        return self.pattern in atr.historical_bytes


# Known cards. Source: the ATR list of pcsc-tools (smartcard_list.txt, Ludovic Rousseau), entries
# for the Taiwan MOICA citizen digital certificate card issued by Chunghwa Telecom ("CHT").
# We match on historical bytes rather than whole ATRs: card batches differ in TA1 (speed) and
# other interface bytes, while the issuer's name in the historical bytes stays put.
KNOWN_CARDS: tuple[KnownCard, ...] = (
    KnownCard(
        card_type=CardType.MOICA_GEN1,
        label="Citizen certificate card (MOICA) gen1",
        match=MatchOn.HISTORICAL_CONTAINS,
        pattern=b"CHTMOICA",
        contactless=False,
        example_atr=bytes.fromhex("3B B8 13 00 81 31 FA 52 43 48 54 4D 4F 49 43 41 A5"),
    ),
    KnownCard(
        card_type=CardType.MOICA_GEN2,
        label="Citizen certificate card (MOICA) gen2",
        match=MatchOn.HISTORICAL_CONTAINS,
        # Seen as "CHTGPKIJ"; the last letter is left out so sibling GPKI batches match too.
        pattern=b"CHTGPKI",
        contactless=False,
        example_atr=bytes.fromhex("3B D8 96 00 81 B1 FE 45 1F 07 43 48 54 47 50 4B 49 4A DD"),
    ),
    KnownCard(
        card_type=CardType.MOICA_CONTACTLESS,
        label="Citizen certificate card (MOICA), contactless",
        # Every PC/SC reader derives the same pseudo-ATR from the card's ATS, so comparing the
        # historical bytes exactly is as strict as comparing the ATR while ignoring a bad TCK.
        match=MatchOn.HISTORICAL,
        pattern=bytes.fromhex("00 31 C1 64 08 40 21 30 00 90 00"),
        contactless=True,
        example_atr=bytes.fromhex("3B 8B 80 01 00 31 C1 64 08 40 21 30 00 90 00 57"),
    ),
)

#: Storage-card name codes (C0 C1 of the PC/SC pseudo-ATR) we give a type of their own.
#: Ultralight C and EV1 share the Ultralight READ/WRITE page commands, so they ride along with
#: plain Ultralight; MIFARE Plus is left out on purpose (its 2K variants are not a Classic 1K).
STORAGE_TYPES: Mapping[int, CardType] = MappingProxyType(
    {
        0x0001: CardType.MIFARE_CLASSIC_1K,
        0x0002: CardType.MIFARE_CLASSIC_4K,
        0x0003: CardType.MIFARE_ULTRALIGHT,
        0x003A: CardType.MIFARE_ULTRALIGHT,
        0x003D: CardType.MIFARE_ULTRALIGHT,
        0x0026: CardType.MIFARE_MINI,
        0x003B: CardType.FELICA,
        0xF011: CardType.FELICA,
        0xF012: CardType.FELICA,
    }
)

#: SS byte for FeliCa: some readers put a generic name code there, the standard still tells.
_SS_FELICA = 0x11


@dataclass(frozen=True)
class CardIdentity:
    card_type: CardType
    label: str
    contactless: bool
    atr: Atr

    def to_dict(self) -> dict[str, Any]:
        return {
            "card_type": str(self.card_type),
            "label": self.label,
            "contactless": self.contactless,
            "atr": self.atr.to_dict(),
        }


def identify(atr: bytes) -> CardIdentity:
    """Identify a card from its ATR (or a reader's pseudo-ATR). Never raises."""
    return identify_parsed(parse_atr(atr))


def identify_parsed(parsed: Atr) -> CardIdentity:
    """Like :func:`identify` for an ATR that has already been parsed."""
    info = parse_contactless(parsed)
    contactless = info is not None
    # A garbled TS means we are not reading a real ATR; do not pin a card name on noise.
    if parsed.convention is not Convention.INVALID:
        for known in KNOWN_CARDS:
            if known.matches(parsed, contactless):
                return CardIdentity(known.card_type, known.label, contactless, parsed)
    if info is not None:
        return _identify_contactless(parsed, info)
    if parsed.valid:
        return CardIdentity(CardType.CONTACT_OTHER, "Unrecognised contact card", False, parsed)
    return CardIdentity(CardType.UNKNOWN, "Unknown card", False, parsed)


def _identify_contactless(parsed: Atr, info: ContactlessInfo) -> CardIdentity:
    if info.kind is ContactlessKind.ISO_DEP:
        return CardIdentity(CardType.ISO14443_4, "ISO 14443-4 (ISO-DEP) card", True, parsed)
    code = info.card_name_code
    card_type = STORAGE_TYPES.get(code) if code is not None else None
    if card_type is None and info.standard == _SS_FELICA:
        card_type = CardType.FELICA
    if card_type is None:
        card_type = CardType.CONTACTLESS_OTHER
    if info.card_name is not None:
        label = info.card_name
    elif card_type is CardType.FELICA:
        label = "FeliCa"
    else:
        name = "unknown" if code is None else f"{code:04X}"
        label = f"Contactless storage card (name code {name})"
    return CardIdentity(card_type, label, True, parsed)
