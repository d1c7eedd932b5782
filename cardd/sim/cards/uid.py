# SPDX-License-Identifier: Apache-2.0
"""A card that only has a UID: what an EasyCard is to a library that identifies it by 內碼.

The reader answers GET DATA with the UID; nothing else works. By default it presents the
MIFARE Classic 1K pseudo-ATR, because EasyCards are Classic cards (contactless.md §1) and host
code must classify them exactly as it classifies a real EasyCard. Use :class:`MifareClassic` when
sector access matters.
"""

from __future__ import annotations

import random

from cardd.sim.cards.contactless import CARD_NAME_CLASSIC_1K, ContactlessCard, storage_atr

#: UID0 of a 4-byte random ID (NXP AN10927): the card draws a new UID at every power-up.
RANDOM_UID0 = 0x08


class UidCard(ContactlessCard):
    """A plain ISO 14443-3 card: GET DATA only; ``6A 81`` for other FF commands, else ``6E 00``."""

    kind = "uid"

    def __init__(
        self,
        uid: bytes,
        atr: bytes | None = None,
        *,
        card_name: bytes = CARD_NAME_CLASSIC_1K,
        random_id: bool = False,
        seed: int | None = None,
    ) -> None:
        """
        :param uid: UID0 first; 4, 7 or 10 bytes
        :param atr: the ATR to report; default the pseudo-ATR for ``card_name``
        :param card_name: C0 C1 of the pseudo-ATR when ``atr`` is not given
        :param random_id: behave like a random-ID card: draw a new ``08 xx xx xx`` UID at every
            :meth:`power_on` (``uid`` is the one before the first power-up)
        :param seed: seeds the random-ID generator, for reproducible tests
        """
        super().__init__(uid, storage_atr(card_name) if atr is None else atr)
        if random_id and (len(self.uid) != 4 or self.uid[0] != RANDOM_UID0):
            raise ValueError("a random-ID card has a 4-byte UID starting with 08")
        self._random_id = random_id
        # Not secrets: this is test data, and a seed must make it reproducible.
        self._rng = random.Random(seed)

    @property
    def random_id(self) -> bool:
        return self._random_id

    def power_on(self) -> None:
        if self._random_id:
            self._uid = bytes((RANDOM_UID0,)) + self._rng.randbytes(3)
