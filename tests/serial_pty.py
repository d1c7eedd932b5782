# SPDX-License-Identifier: Apache-2.0
"""A serial device played by the test through a pseudo-terminal pair (simulation.md §8).

cardd opens ``link`` (a symlink to the pty's slave, like a udev ``/dev/cardd/...`` link) with
pyserial exactly as in production; the test writes what the device sends to the master and
reads what cardd sent. :meth:`unplug` closes the master and removes the link (a USB unplug:
reads fail, the path is gone); :meth:`plug` makes a new pair behind the same link.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from pathlib import Path


class PtyDevice:
    def __init__(self, link: Path, *, plugged: bool = True) -> None:
        self.link = link
        self.master: int | None = None
        self._slave: int | None = None
        self._received: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stop_reading = threading.Event()
        if plugged:
            self.plug()

    def plug(self) -> None:
        self.master, self._slave = os.openpty()
        with self._lock:
            self._received.clear()  # a new device has received nothing yet
        # raw from the start, so nothing is echoed or translated before cardd opens it
        tty.setraw(self._slave)
        os.symlink(os.ttyname(self._slave), self.link)

    def unplug(self) -> None:
        self.stop_reading()
        if self.link.is_symlink():
            self.link.unlink()
        for fd in (self.master, self._slave):
            if fd is not None:
                os.close(fd)
        self.master = self._slave = None

    def write(self, data: bytes) -> None:
        assert self.master is not None, "unplugged"
        os.write(self.master, data)

    # -- what cardd sent (relays) -------------------------------------------------------------

    def start_reading(self) -> None:
        """Collect what cardd writes, with the time each piece arrived, on a thread."""
        self._stop_reading.clear()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def stop_reading(self) -> None:
        self._stop_reading.set()
        if self._reader is not None:
            self._reader.join(2)
            self._reader = None

    def _read_loop(self) -> None:
        master = self.master
        assert master is not None
        while not self._stop_reading.is_set():
            ready, _, _ = select.select([master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            with self._lock:
                self._received.append((time.monotonic(), data))

    @property
    def received(self) -> bytes:
        with self._lock:
            return b"".join(d for _, d in self._received)

    def wait_received(self, expected: bytes, timeout: float = 5.0) -> bytes:
        """Wait until cardd has sent at least ``expected`` (a prefix check by the caller)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received
            if len(got) >= len(expected):
                return got
            time.sleep(0.01)
        return self.received
