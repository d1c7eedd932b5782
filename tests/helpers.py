# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the tests. No side effects at import: conftest.py owns the session set-up."""

from __future__ import annotations

import time
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
READER0, READER1 = "Virtual PCD 00 00", "Virtual PCD 00 01"


def wait_card(reader: str, present: bool, timeout: float = 3.0) -> bytes | None:
    """Wait (through PC/SC, as the production watcher does) until a card is or is not present."""
    from smartcard import scard

    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hr == 0, hex(hr)
    try:
        states = [(reader, scard.SCARD_STATE_UNAWARE)]
        deadline = time.monotonic() + timeout
        while True:
            ms = max(0, int((deadline - time.monotonic()) * 1000))
            hr, states = scard.SCardGetStatusChange(ctx, ms, states)
            if hr == scard.SCARD_E_TIMEOUT:
                raise TimeoutError(f"{reader}: present={present} not reached in {timeout} s")
            assert hr == 0, hex(hr & 0xFFFFFFFF)
            name, event, atr = states[0]
            if bool(event & scard.SCARD_STATE_PRESENT) == present:
                return bytes(atr) if present else None
            states = [(name, event & ~scard.SCARD_STATE_CHANGED)]
    finally:
        scard.SCardReleaseContext(ctx)


def fixture_card(name: str):
    from cardd.sim.cards.loader import load_card

    return load_card(FIXTURES / "cards" / name)


def wait_listening(proc, port: int, log_path: Path, timeout: float = 15.0) -> None:  # noqa: ANN001
    """Until a started daemon accepts connections on ``port``; its log if it exits first."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(log_path.read_text(errors="replace"))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
