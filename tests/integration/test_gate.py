# SPDX-License-Identifier: Apache-2.0
"""The gate relay through a real pseudo-terminal: the bytes an LCUS board would receive.

The test plays the relay board on the pty master and records what cardd writes; GateRelay
opens the slave through pyserial (cardd.readers.serial.SerialLine) as in production.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardd.errors import GateUnavailable, ReaderBusy
from cardd.kiosk.gate import GateRelay, parse_gate_config
from cardd.readers.serial import SerialLine
from tests.serial_pty import PtyDevice

ON = bytes.fromhex("A00101A2")
OFF = bytes.fromhex("A00100A1")
PULSE = 0.3


@pytest.fixture
def board(tmp_path: Path) -> Iterator[PtyDevice]:
    dev = PtyDevice(tmp_path / "relay")
    dev.start_reading()
    yield dev
    dev.unplug()


def relay_for(link: Path, **keys: object) -> GateRelay:
    keys.setdefault("pulse", PULSE)
    return GateRelay(parse_gate_config({"port": str(link), **keys}, "[kiosk.gate]"))


async def wait_bytes(board: PtyDevice, expected: bytes) -> bytes:
    return await asyncio.to_thread(board.wait_received, expected)


async def test_off_at_start_pulse_on_then_off_and_off_at_close(board):
    relay = relay_for(board.link)
    await relay.start()
    assert await wait_bytes(board, OFF) == OFF

    t0 = time.monotonic()
    await relay.open()
    elapsed = time.monotonic() - t0
    assert await wait_bytes(board, OFF + ON + OFF) == OFF + ON + OFF
    # open() returns once the relay is off again, after the whole pulse (a lower bound only)
    assert elapsed >= PULSE
    assert relay.pulses == 1

    await relay.close()
    assert await wait_bytes(board, OFF + ON + OFF + OFF) == OFF + ON + OFF + OFF


async def test_overlapping_opens_extend_one_pulse(board):
    pulse = 1.0  # long enough that the second open surely lands inside the first pulse
    relay = relay_for(board.link, pulse=pulse)
    await relay.start()
    t0 = time.monotonic()
    first = asyncio.create_task(relay.open())
    await asyncio.to_thread(board.wait_received, OFF + ON)
    await asyncio.sleep(0.1)
    t1 = time.monotonic()
    await relay.open()  # a second patron while the gate is still open
    await first
    # one on/off cycle, extended to the second open's deadline
    assert await wait_bytes(board, OFF + ON + OFF) == OFF + ON + OFF
    assert relay.pulses == 1
    assert time.monotonic() - t1 >= pulse and t1 > t0
    # and a later open is a new pulse
    await relay.open()
    assert await wait_bytes(board, OFF + ON + OFF + ON + OFF) == OFF + ON + OFF + ON + OFF
    await relay.close()


async def test_cancelled_open_never_leaves_the_relay_on(board):
    relay = relay_for(board.link, pulse=1.0)
    await relay.start()
    task = asyncio.create_task(relay.open())
    await asyncio.to_thread(board.wait_received, OFF + ON)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the pulse runs on the relay's own thread: it still ends with OFF
    assert await wait_bytes(board, OFF + ON + OFF) == OFF + ON + OFF
    await relay.close()


async def test_close_during_a_pulse_switches_off(board):
    relay = relay_for(board.link, pulse=30)
    await relay.start()
    task = asyncio.create_task(relay.open())
    await asyncio.to_thread(board.wait_received, OFF + ON)
    await relay.close()
    await task  # the caller is released, not left hanging for 30 s
    got = await wait_bytes(board, OFF + ON + OFF + OFF)
    assert got.startswith(OFF + ON + OFF) and got.endswith(OFF) and ON not in got[len(OFF + ON) :]


async def test_channel_two_and_explicit_commands(tmp_path):
    for keys, on, off in [
        ({"channel": 2}, "A00201A3", "A00200A2"),
        ({"on": "FE 05 00 00 FF 00", "off": "FE 05 00 00 00 00"}, "FE050000FF00", "FE0500000000"),
    ]:
        board = PtyDevice(tmp_path / f"relay{len(on)}")
        board.start_reading()
        try:
            relay = relay_for(board.link, **keys)
            await relay.start()
            await relay.open()
            await relay.close()
            on_b, off_b = bytes.fromhex(on), bytes.fromhex(off)
            expected = off_b + on_b + off_b + off_b
            assert await wait_bytes(board, expected) == expected
        finally:
            board.unplug()


async def test_relay_unplugged_then_replugged(board):
    relay = relay_for(board.link)
    await relay.start()
    await wait_bytes(board, OFF)
    board.unplug()
    with pytest.raises(GateUnavailable) as e:
        await relay.open()
    assert e.value.code == "gate_unavailable"
    board.plug()
    board.start_reading()
    await relay.open()  # reopened at the next command, no restart
    assert await wait_bytes(board, ON + OFF) == ON + OFF
    await relay.close()


async def test_relay_missing_at_start_does_not_stop_the_kiosk(tmp_path):
    board = PtyDevice(tmp_path / "relay", plugged=False)
    relay = relay_for(board.link)
    await relay.start()  # logged, not raised
    with pytest.raises(GateUnavailable, match="does not exist"):
        await relay.open()
    board.plug()
    board.start_reading()
    try:
        await relay.open()
        assert await wait_bytes(board, ON + OFF) == ON + OFF
        await relay.close()
    finally:
        board.unplug()


async def test_relay_port_is_held_exclusively(board):
    relay = relay_for(board.link)
    await relay.start()
    await wait_bytes(board, OFF)
    with pytest.raises(ReaderBusy):
        SerialLine.open(str(board.link))
    await relay.close()
    # released at close: another program may now have it
    SerialLine.open(str(board.link)).close()


async def test_no_gate_driver_is_a_no_op():
    relay = GateRelay(parse_gate_config({}, "[kiosk.gate]"))
    assert not relay.enabled
    await relay.start()
    await relay.open()
    await relay.close()
    assert relay.pulses == 0


async def test_open_before_start_is_refused(board):
    relay = relay_for(board.link)
    with pytest.raises(GateUnavailable, match="not started"):
        await relay.open()
