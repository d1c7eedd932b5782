# SPDX-License-Identifier: Apache-2.0
"""Serial RFID readers and barcode scanners through real pseudo-terminals and pyserial.

Each test plays the device on a pty master; cardd's SerialBackend opens the slave (through a
symlink, as production opens a udev link) inside a real ReaderManager, and the test watches the
EventBus: reader.added/removed, tag.tapped, barcode.scanned.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from cardd.errors import NoReader, ReaderBusy, UsageError
from cardd.events import Event, EventBus, Subscription
from cardd.readers.framing import PRESETS, Em4100Id, encode_frame
from cardd.readers.manager import ReaderManager
from cardd.readers.serial import (
    SerialBackend,
    SerialLine,
    SerialPortInfo,
    list_serial_ports,
    resolve_port,
)
from cardd.readers.serial_config import PortMatch, SerialDeviceConfig, parse_device
from cardd.readers.types import ReaderKind
from tests.serial_pty import PtyDevice

TAG = b"62E3086CED"
TAG2 = b"0415A2B3C4"
RDM = PRESETS["rdm6300"].spec


def device(link: Path, name: str = "door", **keys: Any) -> SerialDeviceConfig:
    keys.setdefault("preset", "rdm6300")
    return parse_device({"name": name, "port": str(link), **keys}, "test")


class Rig:
    def __init__(self, manager: ReaderManager, backend: SerialBackend, sub: Subscription) -> None:
        self.manager, self.backend, self.sub = manager, backend, sub

    async def next(self, type_: str, timeout: float = 10.0) -> Event:
        """The next event of ``type_`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                ev = await self.sub.get()
                if ev.type == type_:
                    return ev

    async def until(
        self, type_: str, stop: Callable[[Event], bool], timeout: float = 10.0
    ) -> list[Event]:
        """Every ``type_`` event up to and including the first one ``stop`` accepts."""
        seen = []
        while True:
            ev = await self.next(type_, timeout)
            seen.append(ev)
            if stop(ev):
                return seen


@pytest.fixture
async def rig() -> AsyncIterator[Callable[..., Any]]:
    made: list[ReaderManager] = []

    async def start(*devices: SerialDeviceConfig) -> Rig:
        bus = EventBus()
        sub = bus.subscribe()
        backend = SerialBackend(devices)
        manager = ReaderManager([backend], bus)
        await manager.start()
        made.append(manager)
        return Rig(manager, backend, sub)

    yield start
    for m in made:
        await m.stop()


@pytest.fixture
def pty(tmp_path: Path) -> AsyncIterator[PtyDevice]:
    dev = PtyDevice(tmp_path / "reader")
    yield dev
    dev.unplug()


def tag_of(ev: Event) -> str:
    return ev.data["em4100"]["hex"]


# -- presets end to end --------------------------------------------------------------------------

SAMPLES = {
    "rdm6300": TAG,
    "parallax": TAG,
    "barcode-cr": b"A12345678901",
    "barcode-lf": b"9789860000001",
    "barcode-crlf": b"LIB 0042",
    "barcode-stxetx": b"31234000123456",
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
async def test_every_preset_through_a_pty(rig, pty, preset):
    r = await rig(device(pty.link, preset=preset))
    added = await r.next("reader.added")
    assert added.data == {"backend": "serial", "reader": "door", "kind": "serial"}
    info = r.manager.reader("door")
    assert info.kind is ReaderKind.SERIAL and info.to_dict()["kind"] == "serial"
    frame = encode_frame(PRESETS[preset].spec, SAMPLES[preset])
    for b in frame:  # one byte per write: one read is never one frame
        pty.write(bytes([b]))
    if PRESETS[preset].role == "rfid":
        ev = await r.next("tag.tapped")
        assert ev.data == {
            "backend": "serial",
            "reader": "door",
            "kind": "em4100",
            "em4100": Em4100Id.from_hex(SAMPLES[preset]).to_dict(),
        }
        assert ev.data["em4100"] == {
            "hex": "62E3086CED",
            "decimal10": "3808980205",
            "wiegand": "008,27885",
        }
    else:
        ev = await r.next("barcode.scanned")
        assert ev.data == {"backend": "serial", "reader": "door", "text": SAMPLES[preset].decode()}


async def test_garbage_partial_frames_and_bad_checksums_on_the_wire(rig, pty):
    r = await rig(device(pty.link))
    await r.next("reader.added")
    good = encode_frame(RDM, TAG)
    stream = (
        b"\xff\x00noise"
        + good[5:]  # powered up mid-frame
        + good[:7]  # cut off by the next frame
        + b"\x02"
        + TAG
        + b"FF\x03"  # wrong checksum
        + good
    )
    rng = random.Random(7)
    i = 0
    while i < len(stream):
        n = rng.randint(1, 5)
        pty.write(stream[i : i + n])
        i += n
    ev = await r.next("tag.tapped")
    assert tag_of(ev) == "62E3086CED"
    (status,) = r.backend.status()
    assert status["stats"]["bad_checksum"] == 1 and status["stats"]["frames"] == 1
    assert status["stats"]["garbage_bytes"] > 0 and status["stats"]["malformed"] >= 1
    # the reader is still alive and reads on
    pty.write(encode_frame(RDM, TAG2))
    assert tag_of(await r.next("tag.tapped")) == "0415A2B3C4"


# -- unplug and replug ---------------------------------------------------------------------------


async def test_device_that_disappears_and_returns(rig, pty):
    r = await rig(device(pty.link))
    await r.next("reader.added")
    pty.write(encode_frame(RDM, TAG))
    assert tag_of(await r.next("tag.tapped")) == "62E3086CED"

    pty.unplug()
    removed = await r.next("reader.removed")
    assert removed.data["reader"] == "door"
    assert r.manager.readers() == []
    with pytest.raises(NoReader):
        r.manager.reader("door")
    assert r.backend.status()[0]["problem"] in ("reader_unavailable", "no_reader")

    pty.plug()  # back, behind the same link, on a new pty
    added = await r.next("reader.added")
    assert added.data["reader"] == "door"
    pty.write(encode_frame(RDM, TAG2))
    assert tag_of(await r.next("tag.tapped")) == "0415A2B3C4"
    assert [i.name for i in r.manager.readers()] == ["door"]


async def test_device_missing_at_start_is_opened_when_it_appears(rig, tmp_path):
    dev = PtyDevice(tmp_path / "late", plugged=False)
    try:
        r = await rig(device(dev.link))
        # wait until the reader thread has looked and found nothing
        for _ in range(500):
            if r.backend.status()[0]["problem"] == "no_reader":
                break
            await asyncio.sleep(0.01)
        assert r.backend.status()[0]["problem"] == "no_reader"
        dev.plug()
        await r.next("reader.added")
        dev.write(encode_frame(RDM, TAG))
        assert tag_of(await r.next("tag.tapped")) == "62E3086CED"
    finally:
        dev.unplug()


# -- debounce ------------------------------------------------------------------------------------


async def test_repeating_rdm6300_reported_once_then_again_after_absence(rig, pty):
    r = await rig(device(pty.link, rearm_after=0.5))
    await r.next("reader.added")
    # the tag held on the reader: the frame repeats; then another tag
    pty.write(encode_frame(RDM, TAG) * 8 + encode_frame(RDM, TAG2))
    taps = await r.until("tag.tapped", lambda ev: tag_of(ev) == "0415A2B3C4")
    assert [tag_of(e) for e in taps] == ["62E3086CED", "0415A2B3C4"]
    # TAG2 taken away for longer than rearm_after, then back: a new tap
    await asyncio.sleep(0.8)
    pty.write(encode_frame(RDM, TAG2) * 3)
    pty.write(encode_frame(RDM, TAG))
    taps = await r.until("tag.tapped", lambda ev: tag_of(ev) == "62E3086CED")
    assert [tag_of(e) for e in taps] == ["0415A2B3C4", "62E3086CED"]


async def test_barcode_duplicate_window_and_no_text_in_the_log(rig, pty, caplog):
    caplog.set_level(logging.DEBUG)
    r = await rig(device(pty.link, preset="barcode-crlf", duplicate_window=30))
    await r.next("reader.added")
    library_number = "A12345678901"  # national ID + suffix
    pty.write(f"{library_number}\r\n{library_number}\r\n".encode())
    pty.write(b"B2\r\n")
    pty.write(f"{library_number}\r\nEND\r\n".encode())
    scans = await r.until("barcode.scanned", lambda ev: ev.data["text"] == "END")
    assert [e.data["text"] for e in scans] == [library_number, "B2", library_number, "END"]
    assert library_number not in caplog.text and "A123456789" not in caplog.text


# -- exclusive open ------------------------------------------------------------------------------


async def test_exclusive_open_refused_for_a_second_opener(rig, pty):
    r = await rig(device(pty.link))
    await r.next("reader.added")
    with pytest.raises(ReaderBusy) as e:
        SerialLine.open(str(pty.link))
    assert e.value.code == "reader_busy" and "another program" in e.value.message


async def test_port_held_by_another_program_is_opened_once_released(rig, pty):
    holder = SerialLine.open(str(pty.link))
    try:
        r = await rig(device(pty.link))
        for _ in range(500):
            if r.backend.status()[0]["problem"] == "reader_busy":
                break
            await asyncio.sleep(0.01)
        assert r.backend.status()[0]["problem"] == "reader_busy"
        assert r.manager.readers() == []
    finally:
        holder.close()
    await r.next("reader.added")
    pty.write(encode_frame(RDM, TAG))
    assert tag_of(await r.next("tag.tapped")) == "62E3086CED"


# -- the backend contract ------------------------------------------------------------------------


async def test_serial_reader_has_no_card_to_connect_to(rig, pty):
    r = await rig(device(pty.link))
    await r.next("reader.added")
    with pytest.raises(UsageError, match="serial reader"):
        await r.manager.run("door", lambda conn, cancel: None, timeout=5)
    assert r.manager.backend_states() == {"serial": "up"}


async def test_two_devices_report_under_their_own_names(rig, tmp_path):
    a, b = PtyDevice(tmp_path / "a"), PtyDevice(tmp_path / "b")
    try:
        r = await rig(device(a.link, "door"), device(b.link, "desk", preset="barcode-cr"))
        names = {(await r.next("reader.added")).data["reader"] for _ in range(2)}
        assert names == {"door", "desk"}
        a.write(encode_frame(RDM, TAG))
        b.write(b"HELLO\r")
        got = set()
        async with asyncio.timeout(10):
            while len(got) < 2:
                ev = await r.sub.get()
                if ev.type in ("tag.tapped", "barcode.scanned"):
                    got.add((ev.type, ev.data["reader"]))
        assert got == {("tag.tapped", "door"), ("barcode.scanned", "desk")}
    finally:
        a.unplug()
        b.unplug()


# -- discovery -----------------------------------------------------------------------------------


def test_discovery_by_vid_pid_and_serial_number(tmp_path):
    ports = [
        SerialPortInfo("/dev/ttyUSB0", 0x1A86, 0x7523, None),
        SerialPortInfo("/dev/ttyUSB1", 0x1A86, 0x7523, None),
        SerialPortInfo("/dev/ttyACM0", 0x0C2E, 0x0B61, "21034B2A44"),
        SerialPortInfo("/dev/ttyS0"),
    ]
    assert resolve_port(PortMatch(vid=0x0C2E, pid=0x0B61), ports) == "/dev/ttyACM0"
    assert (
        resolve_port(PortMatch(vid=0x0C2E, pid=0x0B61, serial_number="21034B2A44"), ports)
        == "/dev/ttyACM0"
    )
    with pytest.raises(NoReader):
        resolve_port(PortMatch(vid=0x0C2E, pid=0x0B61, serial_number="other"), ports)
    with pytest.raises(UsageError, match="serial_number"):
        resolve_port(PortMatch(vid=0x1A86, pid=0x7523), ports)
    with pytest.raises(NoReader):
        resolve_port(PortMatch(port=str(tmp_path / "absent")), ports)
    assert ports[2].to_dict()["usb"] == "0c2e:0b61"
    # the real system's list: whatever is there, it is typed and sorted
    real = list_serial_ports()
    assert [p.device for p in real] == sorted(p.device for p in real)


# -- cardd diag ------------------------------------------------------------------------------------


def test_diag_serial_section_configured_found_missing_and_shared(tmp_path, pty):
    from cardd.cli.diag_serial import serial_section
    from cardd.config import parse_config

    config = parse_config(
        {
            "serial": {
                "devices": [
                    {"name": "door", "port": str(pty.link), "preset": "rdm6300"},
                    {
                        "name": "desk",
                        "vid": "0c2e",
                        "pid": "0b61",
                        "serial_number": "X1",
                        "preset": "barcode-cr",
                    },
                ]
            },
        }
    )
    s = serial_section({"config": config})
    (details,) = s.details
    configured = {c["user"]: c for c in details["configured"]}
    assert configured["serial reader 'door' (rfid)"]["found"] == [str(pty.link.resolve())]
    assert configured["serial reader 'desk' (barcode)"]["found"] == []
    assert s.status == "warn"
    assert any("0c2e:0b61 serial X1 is not plugged in" in step for step in s.next_steps)
    # the same port given to two users is an error a technician must fix
    shared = parse_config(
        {
            "serial": {
                "devices": [
                    {"name": "a", "port": str(pty.link), "preset": "rdm6300"},
                    {"name": "b", "port": str(pty.link), "preset": "barcode-cr"},
                ]
            }
        }
    )
    s = serial_section({"config": shared})
    assert s.status == "fail" and any("belongs to one user only" in step for step in s.next_steps)


# -- the daemon ------------------------------------------------------------------------------------


@pytest.mark.pcsc
async def test_cardd_serve_reports_serial_readers_on_the_api(pcscd, tmp_path, pty):
    """`cardd serve` with [[serial.devices]]: kind "serial" in /v1/readers, taps and scans on SSE."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import aiohttp

    from tests.integration.test_serve import Sse, free_port

    scanner = PtyDevice(tmp_path / "scanner")
    port = free_port()
    config = tmp_path / "cardd.toml"
    config.write_text(
        f"[api]\nport = {port}\n"
        f'[[serial.devices]]\nname = "door"\nport = "{pty.link}"\npreset = "rdm6300"\n'
        f'[[serial.devices]]\nname = "desk"\nport = "{scanner.link}"\npreset = "barcode-cr"\n'
    )
    env = dict(os.environ, CARDD_STATE_DIR=str(tmp_path / "state"))
    log = open(tmp_path / "cardd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "cardd.cli.main", "--config", str(config), "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (tmp_path / "cardd.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        auth = {"Authorization": "Bearer " + (tmp_path / "state" / "token").read_text().strip()}
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/v1/events", headers=auth) as r:
                sse = Sse(r)
                await sse.next()  # hello
                # both serial readers appear (possibly before we subscribed: then via /v1/readers)
                for _ in range(100):
                    async with s.get(url + "/v1/readers", headers=auth) as rr:
                        listed = (await rr.json())["readers"]
                    serial = {x["name"]: x for x in listed if x["backend"] == "serial"}
                    if set(serial) == {"door", "desk"}:
                        break
                    await asyncio.sleep(0.05)
                assert serial["door"]["kind"] == "serial" and serial["desk"]["kind"] == "serial"
                pty.write(encode_frame(RDM, TAG))
                _, data = await sse.until(lambda t, d: t == "tag.tapped" and d["reader"] == "door")
                assert data["em4100"] == Em4100Id.from_hex(TAG).to_dict()
                assert data["backend"] == "serial" and data["kind"] == "em4100"
                scanner.write(b"A12345678901\r")
                _, data = await sse.until(lambda t, d: t == "barcode.scanned")
                assert data == {**data, "reader": "desk", "text": "A12345678901"}
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
        log.close()
        scanner.unplug()
    # a library number never reaches the log in clear
    assert "A12345678901" not in (tmp_path / "cardd.log").read_text()
