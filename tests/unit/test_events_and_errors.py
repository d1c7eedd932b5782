# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import asyncio
import threading

import pytest

from cardd import errors as E
from cardd.api.errors import from_card_error, status_for
from cardd.cli.main import EXIT_CODES
from cardd.cli.readers_cmd import parse_apdu_arg, resolve_reader
from cardd.events import EventBus


async def test_bus_delivers_in_order_and_from_threads():
    bus = EventBus(asyncio.get_running_loop())
    with bus.subscribe() as sub:
        bus.publish("a", {"n": 1})
        t = threading.Thread(target=lambda: [bus.publish_threadsafe("b", {"n": i}) for i in range(3)])
        t.start()
        t.join()
        got = [await sub.get(timeout=1) for _ in range(4)]
    assert [e.type for e in got] == ["a", "b", "b", "b"]
    assert [e.seq for e in got] == sorted(e.seq for e in got)
    assert bus.subscriber_count == 0


async def test_slow_subscriber_drops_oldest_and_counts():
    bus = EventBus(asyncio.get_running_loop())
    sub = bus.subscribe(maxsize=3)
    for i in range(10):
        bus.publish("x", {"i": i})
    assert sub.dropped == 7
    assert [(await sub.get()).data["i"] for _ in range(3)] == [7, 8, 9]


def test_every_error_class_has_a_unique_stable_code_and_status():
    classes = E.all_error_classes()
    # a subclass may refine a class and keep its code; a class that names a code owns it
    owned = [c.code for c in classes if "code" in vars(c)]
    assert len(owned) == len(set(owned)), owned
    codes = set(owned)
    for cls in classes:
        assert cls.code.islower() and " " not in cls.code
    for code in ["no_reader", "no_card", "card_removed", "reader_busy", "pcsc_unavailable", "apdu_failed"]:
        assert code in codes
    assert status_for(E.ReaderBusy()) == 409
    assert status_for(E.PcscUnavailable()) == 503
    assert status_for(E.ApduError(0x6A82)) == 502
    assert set(EXIT_CODES) <= set(codes)


def test_http_error_hides_internal_detail():
    resp = from_card_error(E.PcscUnavailable("cannot reach pcscd: Service not available (0x8010001D)"))
    assert resp.status == 503
    assert b"0x8010001D" not in resp.body and b"pcsc_unavailable" in resp.body


@pytest.mark.parametrize(
    ("arg", "apdu", "ok", "bad"),
    [
        ("00A4040000", "00A4040000", 0x6A82, None),
        ("00A40400 00=9000", "00A4040000", 0x9000, 0x6A82),
        ("FF:CA:00:00:00=90xx", "FFCA000000", 0x9001, 0x6300),
    ],
)
def test_apdu_argument_syntax(arg, apdu, ok, bad):
    spec = parse_apdu_arg(arg)
    assert spec.apdu == bytes.fromhex(apdu)
    assert spec.matches(ok)
    if bad is not None:
        assert not spec.matches(bad)


@pytest.mark.parametrize("arg", ["", "00A4", "00A40=9000", "zz", "00A4040000=90"])
def test_bad_apdu_arguments(arg):
    with pytest.raises(E.InvalidInput):
        parse_apdu_arg(arg)


def test_reader_resolution():
    names = ["ACS ACR122U PICC 00 00", "Virtual PCD 00 00", "Virtual PCD 00 01"]
    assert resolve_reader("1", names) == "Virtual PCD 00 00"
    assert resolve_reader("acr", names) == names[0]
    with pytest.raises(E.UsageError):
        resolve_reader("Virtual", names)
    with pytest.raises(E.UsageError):
        resolve_reader(None, names)
    with pytest.raises(E.NoReader):
        resolve_reader("x", names)
    with pytest.raises(E.NoReader):
        resolve_reader(None, [])
