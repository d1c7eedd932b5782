# SPDX-License-Identifier: Apache-2.0
"""A DESFire-like ISO-DEP (ISO 14443-4) card, so host code can prove it is not taken for Classic.

It answers what the reader answers for any ISO-DEP card (GET DATA for UID and ATS) and, as a
card with no application the host knows, ``6A 82`` to every SELECT and ``6D 00`` to everything
else. DESFire native commands are not modelled.
"""

from __future__ import annotations

from cardd.sim.cards.base import sw
from cardd.sim.cards.contactless import (
    INS_SELECT,
    SW,
    CommandApdu,
    ContactlessCard,
    isodep_atr,
)

#: T0 TA1 TB1 TC1 of a DESFire EV1 ATS: TA/TB/TC present, FSCI 5 (64-byte frames); bit rates,
#: frame waiting time and CID support as the EV1 reports them.
DESFIRE_ATS_INTERFACE = bytes.fromhex("75778102")


def default_ats(historical: bytes) -> bytes:
    """A DESFire-EV1-shaped ATS carrying ``historical``: ``TL 75 77 81 02 <historical>``."""
    body = DESFIRE_ATS_INTERFACE + historical
    return bytes((len(body) + 1,)) + body


class IsoDepCard(ContactlessCard):
    """An ISO-DEP card: ATR ``3B 8N 80 01 <historical> TCK``, GET DATA UID and ATS."""

    kind = "iso-dep"

    def __init__(self, uid: bytes, historical: bytes = b"\x80", ats: bytes | None = None) -> None:
        """
        :param uid: UID0 first; 4, 7 or 10 bytes (DESFire: 7)
        :param historical: the ATS historical bytes, which the reader copies into the ATR
        :param ats: the full ATS including TL, without CRC; default :func:`default_ats`
        """
        historical = bytes(historical)
        if ats is None:
            ats = default_ats(historical)
        elif not ats or ats[0] != len(ats):
            raise ValueError("ATS must start with its own length (TL)")
        super().__init__(uid, isodep_atr(historical), ats=ats)

    def _process_card(self, apdu: bytes) -> bytes:
        cmd = CommandApdu.parse(apdu)
        if cmd is None:
            return sw(SW.WRONG_LENGTH)
        if cmd.ins == INS_SELECT:
            # No application the host could be looking for is on this card.
            return sw(SW.FILE_NOT_FOUND)
        return sw(SW.INS_NOT_SUPPORTED)
