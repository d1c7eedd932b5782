# SPDX-License-Identifier: Apache-2.0
"""The small transport contract card logic talks to, and the APDU processors above it.

Card sessions (MOICA, MIFARE Classic, ...) take a :class:`SmartCardConnection` and never see
pyscard. A connection sends one command APDU and returns the response data and the status word
as one integer. Test fakes satisfy the protocol without inheriting from anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cardd.errors import ApduError

SW_SUCCESS = 0x9000


@runtime_checkable
class SmartCardConnection(Protocol):
    """One open connection to one card."""

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        """Send a command APDU; return (response data, SW) with SW as ``(sw1 << 8) | sw2``."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Apdu:
    """A short command APDU (ISO 7816-4 cases 1-4)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None  # None: no Le field; 0 means 256

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            if not 0 <= getattr(self, name) <= 0xFF:
                raise ValueError(f"{name} out of range")
        if len(self.data) > 255:
            raise ValueError("short APDU data longer than 255 bytes")
        if self.le is not None and not 0 <= self.le <= 256:
            raise ValueError("Le out of range")

    def __bytes__(self) -> bytes:
        out = bytes((self.cla, self.ins, self.p1, self.p2))
        if self.data:
            out += bytes((len(self.data),)) + self.data
        if self.le is not None:
            out += bytes((self.le & 0xFF,))
        return out


def transceive(
    connection: SmartCardConnection, apdu: bytes | Apdu, *, get_response_cla: int = 0x00
) -> tuple[bytes, int]:
    """Send an APDU and follow ``61xx`` (GET RESPONSE) and ``6Cxx`` (resend with Le=xx).

    Returns the joined data and the final SW without judging it.
    """
    raw = bytes(apdu)
    data, sw = connection.send_and_receive(raw)
    if sw >> 8 == 0x6C and len(raw) >= 5:
        # Wrong Le: the card tells the exact length; resend once with it (Le is the last byte).
        raw = raw[:-1] + bytes((sw & 0xFF,))
        data, sw = connection.send_and_receive(raw)
    chunks = [data]
    rounds = 0
    while sw >> 8 == 0x61:
        rounds += 1
        if rounds > 64:  # a card that never stops offering bytes is broken, not generous
            raise ApduError(sw, b"".join(chunks), "card kept answering 61xx")
        data, sw = connection.send_and_receive(bytes((get_response_cla, 0xC0, 0x00, 0x00, sw & 0xFF)))
        chunks.append(data)
    return b"".join(chunks), sw


def send_expect(
    connection: SmartCardConnection, apdu: bytes | Apdu, expect: int = SW_SUCCESS
) -> bytes:
    """Send an APDU (with response chaining) and raise :class:`ApduError` unless SW == expect."""
    data, sw = transceive(connection, apdu)
    if sw != expect:
        raise ApduError(sw, data)
    return data
