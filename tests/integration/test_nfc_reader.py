# SPDX-License-Identifier: Apache-2.0
"""nfcpy readers end to end over nfcpy's UDP driver: no mocks on either side.

The card is a separate process (``python -m cardd.sim.nfc_card``) answering through nfcpy's own
Type A / FeliCa listener; the reader is the real NfcBackend in this process, under a real
ReaderManager publishing on a real EventBus (and, in the last test, inside `cardd serve`).
Killing the card process takes the card off the reader; starting it again puts one down.

No timed assertions: "the card stayed and was not reported again" is proven by counting the
reader's complete selections of the card (the card process prints each one) and by the order of
the events (a duplicate would arrive before the next card's tap).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cardd.errors import UsageError
from cardd.events import EventBus, Subscription
from cardd.readers.manager import ReaderManager
from cardd.readers.nfc import NfcBackend
from cardd.readers.nfc_config import NfcConfig
from cardd.readers.types import ReaderKind

UID4 = "93A131C0"  # contactless.md §2: 內碼 3224478099
UID7 = "04A1B2C3D4E5F6"
WAIT = 20.0  # upper bound for waits that normally take well under a second (a loaded CI box)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CardProcess:
    """One simulated card on the reader: python -m cardd.sim.nfc_card."""

    def __init__(self, device: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cardd.sim.nfc_card", "--device", device, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.selections = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def _next(self) -> str:
        line = self.lines.get(timeout=WAIT)
        if line is None:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"card process ended: {err}")
        return line

    async def ready(self) -> CardProcess:
        line = await asyncio.to_thread(self._next)
        assert line == "ready", line
        return self

    async def wait_selections(self, n: int) -> None:
        """Until the reader has completely selected this card ``n`` times in all."""
        while self.selections < n:
            line = await asyncio.to_thread(self._next)
            assert line.startswith("selected "), line
            self.selections = int(line.split()[1])

    def remove(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()


@pytest.fixture
def device() -> str:
    return f"udp:localhost:{free_udp_port()}"


@pytest.fixture
def cards():
    started: list[CardProcess] = []

    def put(device: str, *args: str) -> CardProcess:
        card = CardProcess(device, *args)
        started.append(card)
        return card

    yield put
    for card in started:
        if card.proc.poll() is None:
            card.remove()


async def nfc_manager(
    device: str, targets: tuple[str, ...] = ("106A",)
) -> tuple[ReaderManager, EventBus, NfcBackend]:
    bus = EventBus()
    backend = NfcBackend(NfcConfig(devices=(device,), targets=targets))
    manager = ReaderManager([backend], bus)
    await manager.start()
    assert await manager.wait_until(lambda: bool(manager.readers()), WAIT)
    return manager, bus, backend


@pytest.fixture
async def nfc(device) -> AsyncIterator[tuple[ReaderManager, EventBus, NfcBackend]]:
    manager, bus, backend = await nfc_manager(device)
    yield manager, bus, backend
    await manager.stop()


async def next_tap(sub: Subscription) -> dict[str, Any]:
    while True:
        ev = await sub.get(timeout=WAIT)
        if ev.type == "tag.tapped":
            return dict(ev.data)


def expected_tap(device: str, uid: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {
        "backend": "nfc",
        "reader": f"nfcpy {device}",
        "uid": uid,
        "randomUid": False,
        "atr": None,
        "cardType": "mifare_classic_1k",
        "cardLabel": "MIFARE Classic 1K",
        "technology": "106A",
        **kw,
    }


UID4_FORMS = {
    "hex": "93A131C0",
    "hexReversed": "C031A193",
    "decLE": "3224478099",
    "decBE": "2476814784",
    "length": 4,
}
UID7_FORMS = {
    "hex": "04A1B2C3D4E5F6",
    "hexReversed": "F6E5D4C3B2A104",
    "decLE": "69495546249912580",
    "decBE": "01303689068602870",
    "length": 7,
}


async def test_reader_is_announced_as_contactless_without_card(nfc, device):
    manager, _bus, _backend = nfc
    [info] = manager.readers()
    assert (info.name, info.backend, info.kind) == (
        f"nfcpy {device}",
        "nfc",
        ReaderKind.CONTACTLESS,
    )
    assert not info.card_present  # taps are events, never a card held in the reader


async def test_one_tap_per_presence_4_and_7_byte_uids(nfc, device, cards):
    manager, bus, backend = nfc
    with bus.subscribe() as sub:
        first = await cards(device, "--uid", UID4).ready()
        assert await next_tap(sub) == expected_tap(device, UID4_FORMS)
        # The card stays: the reader selects it again and again and reports nothing more.
        await first.wait_selections(first.selections + 6)
        first.remove()

        # Same card, put down again after it was away: a new tap.
        again = await cards(device, "--uid", UID4).ready()
        assert await next_tap(sub) == expected_tap(device, UID4_FORMS)
        await again.wait_selections(again.selections + 6)
        again.remove()

        # A 7-byte UID (double-size, cascade level 2), with its own ATQA.
        seven = await cards(device, "--uid", UID7, "--atqa", "4400").ready()
        assert await next_tap(sub) == expected_tap(device, UID7_FORMS)
        await seven.wait_selections(seven.selections + 6)

        # Everything published so far: exactly those three taps, in that order. A repeat during
        # a presence would sit between them (the reader thread publishes in order).
        taps = []
        while (ev := sub.get_nowait()) is not None:
            if ev.type == "tag.tapped":
                taps.append(ev.data["uid"]["hex"])
        assert taps == []
    # at least 5 of each card's 6 counted selections reached the reader before the check
    assert backend.watchers[0].sightings >= 15


async def test_random_uid_and_iso_dep_card(nfc, device, cards):
    _manager, bus, _backend = nfc
    with bus.subscribe() as sub:
        await cards(device, "--uid", "08A1B2C3", "--sak", "20").ready()
        tap = await next_tap(sub)
    assert tap["uid"]["hex"] == "08A1B2C3" and tap["randomUid"] is True
    assert (tap["cardType"], tap["cardLabel"]) == ("iso14443_4", "ISO 14443-4 (ISO-DEP) card")


async def test_felica_idm_is_the_identifier(device, cards):
    manager, bus, _backend = await nfc_manager(device, targets=("106A", "212F"))
    try:
        with bus.subscribe() as sub:
            await cards(device, "--felica", "012E4CD2A3B4C5D6").ready()
            tap = await next_tap(sub)
    finally:
        await manager.stop()
    assert tap["uid"] == {
        "hex": "012E4CD2A3B4C5D6",
        "hexReversed": "D6C5B4A3D24C2E01",
        "decLE": "15475974310229454337",
        "decBE": "00085089910539994582",
        "length": 8,
    }
    assert (tap["cardType"], tap["technology"], tap["atr"]) == ("felica", "212F", None)


async def test_card_operations_are_refused_with_a_clear_error(nfc, device):
    manager, _bus, _backend = nfc
    ran = []
    with pytest.raises(UsageError, match="reports taps"):
        await manager.run(f"nfcpy {device}", lambda conn, cancel: ran.append(conn), name="x")
    assert ran == []


def nfc_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cardd-nfc[")]


async def test_stop_ends_the_reader_thread_with_and_without_a_card(device, cards):
    # Without a card the thread sits in nfcpy's receive timeout; with one it polls busily.
    for with_card in (False, True):
        manager, bus, _backend = await nfc_manager(device)
        assert len(nfc_threads()) == 1
        if with_card:
            with bus.subscribe() as sub:
                card = await cards(device, "--uid", UID4).ready()
                await next_tap(sub)
        await manager.stop()
        assert nfc_threads() == []
        if with_card:
            card.remove()


async def test_simulated_card_refuses_a_busy_port_and_a_10_byte_uid(device, cards):
    first = await cards(device, "--uid", UID4).ready()
    second = cards(device, "--uid", UID7)
    assert second.proc.wait(WAIT) == 1
    assert "in use" in (second.proc.stderr.read() if second.proc.stderr else "")
    ten = cards(device, "--uid", "04" * 10)
    assert ten.proc.wait(WAIT) == 2  # argparse usage error: nfcpy's UDP listener cannot do it
    first.remove()


# -- inside `cardd serve` ---------------------------------------------------------------------


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_daemon_publishes_nfc_taps_over_the_api(tmp_path: Path, device, cards):
    port = free_tcp_port()
    config = tmp_path / "cardd.toml"
    config.write_text(f'[api]\nport = {port}\n[nfc]\ndevices = ["{device}"]\ntargets = ["106A"]\n')
    env = dict(os.environ, CARDD_STATE_DIR=str(tmp_path / "state"))
    log = open(tmp_path / "cardd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardd.cli.main", "--config", str(config), "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert proc.poll() is None, (tmp_path / "cardd.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "cardd.log").read_text()
                await asyncio.sleep(0.05)
        token = (tmp_path / "state" / "token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.get(f"{url}/v1/readers") as r:
                body = await r.json()
            readers = body["readers"] if isinstance(body, dict) else body
            nfc_reader = [x for x in readers if x["backend"] == "nfc"]
            assert [(x["name"], x["kind"]) for x in nfc_reader] == [
                (f"nfcpy {device}", "contactless")
            ]
            async with http.get(
                f"{url}/v1/events", timeout=aiohttp.ClientTimeout(total=WAIT * 2)
            ) as events:
                card = await cards(device, "--uid", UID7, "--atqa", "4400").ready()
                event_type = ""
                async for raw in events.content:
                    line = raw.decode().strip()
                    if line.startswith("event:"):
                        event_type = line[6:].strip()
                    elif line.startswith("data:") and event_type == "tag.tapped":
                        data = json.loads(line[5:])
                        break
            card.remove()
        assert data["reader"] == f"nfcpy {device}" and data["backend"] == "nfc"
        assert data["uid"] == UID7_FORMS and data["atr"] is None
    finally:
        proc.terminate()
        assert proc.wait(WAIT) == 0, (tmp_path / "cardd.log").read_text()
        log.close()
