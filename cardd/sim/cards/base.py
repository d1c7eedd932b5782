# SPDX-License-Identifier: Apache-2.0
"""What a virtual card is: something with an ATR that turns command APDUs into response APDUs.

The vpcd link (cardd.sim.vpcd) calls these methods from one thread per card, so a card model
needs no locking of its own.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

SW_OK = b"\x90\x00"


@runtime_checkable
class VirtualCard(Protocol):
    """The contract between the vpcd link and a card model."""

    #: a short kind name, e.g. "uid", "mifare-classic-1k", "moica-gen1"
    kind: str

    @property
    def atr(self) -> bytes:
        """The ATR the reader reports (for contactless cards the PC/SC pseudo-ATR)."""
        ...

    def power_on(self) -> None:
        """Cold or warm reset: forget volatile state (authentication, selected file)."""
        ...

    def process(self, apdu: bytes) -> bytes:
        """Answer one command APDU with response data followed by SW1 SW2."""
        ...


def sw(value: int) -> bytes:
    return value.to_bytes(2, "big")
