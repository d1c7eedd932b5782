# SPDX-License-Identifier: Apache-2.0
"""The nfcpy device watcher's life cycle with a scripted frontend (the hardware seam).

What real USB does and the UDP simulation cannot: a reader that will not open (busy, no
permission, not plugged in) and one that goes away while polled (nfcpy catches the IOError and
``connect()`` returns False). The watcher must report it, keep nothing stale, and reopen.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from typing import Any

from cardd.readers.nfc import DeviceOpenError, NfcBackend, NfcDeviceWatcher
from cardd.readers.nfc_config import NfcConfig
from cardd.readers.types import ReaderEvent, ReaderEventKind

PATH = "usb:054c:06c3"


class ScriptedFrontend:
    """connect() plays one script step: sightings of targets, then unplug or wait for stop."""

    def __init__(self, sightings: list[Any], unplug: bool) -> None:
        self.sightings = sightings
        self.unplug = unplug
        self.closed = False
        #: set once every sighting has been handed to on-discover
        self.played = threading.Event()

    def connect(self, **options: Any) -> Any:
        rdwr, terminate = options["rdwr"], options["terminate"]
        assert rdwr["iterations"] == 1 and rdwr["beep-on-connect"] is False
        for target in self.sightings:
            assert rdwr["on-discover"](target) is False  # never activated
            if terminate():
                return None
        self.played.set()
        if self.unplug:
            return False  # what nfcpy returns after catching IOError(ENODEV)
        while not terminate():
            pass
        return None

    def close(self) -> None:
        self.closed = True


class Target:
    def __init__(self, uid: str) -> None:
        self.brty = "106A"
        self.sens_res = bytearray(b"\x04\x00")
        self.sel_res = bytearray(b"\x08")
        self.sdd_res = bytearray.fromhex(uid)


class Script:
    def __init__(self, steps: list[Any]) -> None:
        self.steps = list(steps)
        self.opened: list[ScriptedFrontend] = []
        self.done = threading.Event()

    def __call__(self, path: str) -> ScriptedFrontend:
        assert path == PATH
        step = self.steps.pop(0) if self.steps else ScriptedFrontend([], unplug=False)
        last = not self.steps
        if isinstance(step, Exception):
            if last:
                self.done.set()
            raise step
        if last:  # the script is played once the last frontend has shown all its tags
            step.played = self.done
        self.opened.append(step)
        return step


def run(script: Script, config: NfcConfig | None = None) -> list[ReaderEvent]:
    events: queue.Queue[ReaderEvent] = queue.Queue()
    w = NfcDeviceWatcher(PATH, config or NfcConfig(devices=(PATH,)), events.put, opener=script)
    w.BACKOFF_MIN = w.BACKOFF_MAX = 0.001  # the schedule is not under test here
    w.start()
    assert script.done.wait(10)
    w.stop()
    assert not w.alive
    out = []
    while not events.empty():
        out.append(events.get())
    return out


def kinds(events: list[ReaderEvent]) -> list[str]:
    return [e.kind.value for e in events]


def test_unplug_reports_removal_and_reopens():
    first = ScriptedFrontend([Target("93A131C0"), Target("93A131C0")], unplug=True)
    second = ScriptedFrontend([Target("93A131C0")], unplug=False)
    script = Script([first, DeviceOpenError(PATH, errno.ENODEV), second])
    events = run(script)
    assert kinds(events) == [
        "reader.added",
        "tag.tapped",
        "reader.removed",
        "reader.added",
        "tag.tapped",
    ]
    assert all(e.reader == f"nfcpy {PATH}" and e.backend == "nfc" for e in events)
    assert "stopped answering" in events[2].detail
    assert first.closed and second.closed
    # after a re-plug the card on it is a new tap: the presence state did not survive
    assert events[4].data is not None and events[4].data["uid"]["hex"] == "93A131C0"


def test_busy_device_is_logged_once_with_the_fix(caplog):
    busy = DeviceOpenError(PATH, errno.EBUSY)
    script = Script([busy, busy, busy, ScriptedFrontend([], unplug=False)])
    with caplog.at_level(logging.WARNING, logger="cardd.readers.nfc"):
        events = run(script)
    lines = [r.getMessage() for r in caplog.records if "busy" in r.getMessage()]
    assert len(lines) == 1 and "modprobe -r" in lines[0] and "[nfc] devices" in lines[0]
    assert kinds(events) == ["reader.added"]


def test_a_failing_sink_or_odd_target_does_not_stop_polling():
    class Odd:
        brty = "106A"
        sens_res = b"\x04\x00"
        sel_res = b"\x08"
        sdd_res = "not bytes"  # bytes() of it raises inside on-discover

    calls = []

    def sink(event: ReaderEvent) -> None:
        calls.append(event.kind)
        if event.kind is ReaderEventKind.TAG_TAPPED:
            raise RuntimeError("subscriber bug")

    script = Script(
        [ScriptedFrontend([Odd(), Target("93A131C0"), Target("04A1B2C3D4E5F6")], unplug=False)]
    )
    w = NfcDeviceWatcher(PATH, NfcConfig(devices=(PATH,)), sink, opener=script)
    w.start()
    assert script.done.wait(10)
    w.stop()
    assert calls.count(ReaderEventKind.TAG_TAPPED) == 2


def test_backend_is_up_after_first_attempts_and_refuses_connect():
    script = Script([DeviceOpenError(PATH, errno.ENODEV)])
    backend = NfcBackend(NfcConfig(devices=(PATH,)), opener=script)
    assert not backend.available
    backend.start_watcher(lambda e: None)
    try:
        backend.watchers[0].first_attempt.wait(10)
        assert backend.available and backend.watcher_alive
        assert backend.watchers[0].last_error is not None
    finally:
        backend.stop_watcher()
    assert backend.watchers == ()
