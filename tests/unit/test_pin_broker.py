# SPDX-License-Identifier: Apache-2.0
"""PIN operations (cardd.api.pinbroker) and loopback origins for signing: pure logic.

The end-to-end behaviour (the page, the card, the browser) is in tests/browser/.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from cardd.api.pinbroker import PinBroker
from cardd.errors import (
    CardRemoved,
    InvalidInput,
    OperationCancelled,
    OperationTimeout,
    OriginMismatch,
)
from cardd.moica.token import validate_origin

OP = "A" * 22


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def register(broker: PinBroker, op: str = OP, timeout: float = 120.0):
    return broker.register(
        op, "https://library.example.tw", "Reader 0", action="authenticate", timeout=timeout
    )


async def in_thread(fn):
    return await asyncio.get_running_loop().run_in_executor(None, fn)


@pytest.mark.parametrize("op", ["", "short", "A" * 65, "A" * 21 + "!", None, 123])
async def test_operation_ids_must_be_random_looking(op) -> None:
    with pytest.raises(InvalidInput):
        register(PinBroker(), op)


async def test_an_id_cannot_be_registered_twice() -> None:
    broker = PinBroker()
    register(broker)
    with pytest.raises(InvalidInput):
        register(broker)


async def test_the_submitted_pin_reaches_the_waiting_worker() -> None:
    broker = PinBroker()
    op = register(broker)
    op.card_ready("王小明")
    assert op.snapshot().state == "waiting_pin"
    assert op.snapshot().holder_name == "王小明"
    cancel = threading.Event()
    waiter = asyncio.ensure_future(in_thread(lambda: op.next_pin(cancel)))
    await asyncio.sleep(0)
    op.submit(bytearray(b"246810"))
    assert await waiter == bytearray(b"246810")
    assert op.state == "checking"
    # after a wrong PIN the page is asked again, with the error and tries left
    op.wrong_pin(2)
    snap = op.snapshot()
    assert (snap.state, snap.error, snap.tries_left) == ("waiting_pin", "pin_incorrect", 2)


async def test_a_pin_is_refused_and_wiped_when_none_is_expected() -> None:
    op = register(PinBroker())
    buffer = bytearray(b"246810")
    with pytest.raises(InvalidInput):
        op.submit(buffer)  # still reading the card
    assert buffer == bytearray(6)


async def test_abort_wakes_the_worker_and_wipes_an_uncollected_pin() -> None:
    op = register(PinBroker())
    op.card_ready(None)
    buffer = bytearray(b"246810")
    op.submit(buffer)
    assert op.abort(CardRemoved("pulled"))
    assert buffer == bytearray(6)
    assert not op.abort(CardRemoved("again"))  # the first reason wins
    with pytest.raises(CardRemoved):
        await in_thread(lambda: op.next_pin(threading.Event()))


async def test_the_worker_stops_on_cancel_and_on_the_deadline() -> None:
    clock = Clock()
    broker = PinBroker(clock=clock)
    op = register(broker, timeout=120)
    op.card_ready(None)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(OperationCancelled):
        await in_thread(lambda: op.next_pin(cancel))
    clock.now += 121
    with pytest.raises(OperationTimeout):
        await in_thread(lambda: op.next_pin(threading.Event()))


async def test_state_changes_wake_long_polls() -> None:
    op = register(PinBroker())
    first = op.snapshot()
    poll = asyncio.ensure_future(op.changed_since(first.version, 30))
    await asyncio.sleep(0)
    await in_thread(lambda: op.card_ready("王小明"))  # from the worker thread
    snap = await asyncio.wait_for(poll, 5)
    assert snap.version > first.version and snap.state == "waiting_pin"


async def test_page_secrets_are_per_load() -> None:
    op = register(PinBroker())
    assert not op.secret_ok("anything")  # no page yet
    first = op.open_page()
    assert op.secret_ok(first) and not op.secret_ok(first[:-1] + "x") and not op.secret_ok(None)
    second = op.open_page()  # a reload replaces the old page's secret
    assert op.secret_ok(second) and not op.secret_ok(first)


async def test_finished_operations_are_kept_a_while_then_dropped() -> None:
    clock = Clock()
    broker = PinBroker(clock=clock, keep_finished=60)
    op = register(broker)
    op.finish("user_cancelled")
    assert broker.get(OP) is op and op.snapshot().error == "user_cancelled"
    op.finish(None)  # finishing twice changes nothing
    assert op.snapshot().state == "failed"
    clock.now += 61
    assert broker.get(OP) is None


async def test_the_page_may_load_before_the_call_registers() -> None:
    broker = PinBroker()
    waiting = asyncio.ensure_future(broker.wait_for(OP, 5))
    await asyncio.sleep(0)
    op = register(broker)
    assert await waiting is op
    assert await broker.wait_for("B" * 22, 0.05) is None


@pytest.mark.parametrize(
    "origin",
    ["http://127.0.0.1:8080", "http://localhost:3000", "http://[::1]:8443", "http://localhost"],
)
def test_loopback_http_origins_can_be_signed_for(origin: str) -> None:
    assert validate_origin(origin) == origin


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.2:8080",  # only the exact loopback names
        "http://localhost.evil.tw:8080",
        "http://127.0.0.1:80",  # browsers omit the default port
        "http://127.0.0.1:08080",
        "http://127.0.0.1:8080/",
        "http://LOCALHOST:8080",
        "http://library.example.tw",
    ],
)
def test_other_http_origins_are_still_refused(origin: str) -> None:
    with pytest.raises(OriginMismatch):
        validate_origin(origin)
