# SPDX-License-Identifier: Apache-2.0
"""How `cardd serve` tells its service manager what it is doing (systemd ``Type=notify``).

* **READY=1** once the API listens and the reader layer has had its first look (``serve`` waits
  up to 2 s for the backends). pcscd being down does not hold READY back: cardd then serves
  degraded and says so in STATUS, because a service that never gets ready is killed by
  ``TimeoutStartSec=`` and restarted in a loop, while the API could already tell pages
  "pcscd down".
* **STATUS=** a one-line summary, re-sent whenever it changes (reader added or removed, backend
  lost or restored, ...): ``listening on http://127.0.0.1:7420, 2 readers, pcscd up`` or
  ``..., 0 readers, pcscd down, retrying``. Other parts of cardd (the kiosk's ILS state) add
  their own piece with :meth:`ServiceStatus.add_part`; it is asked again after every event.
* **WATCHDOG=1** from a task on the asyncio loop every half interval, and only while every
  backend's watcher thread is alive: a blocked loop or a dead watcher stops the pings and
  systemd restarts the service (``WatchdogSec=`` in the unit).
* **STOPPING=1** first thing on SIGTERM; then :func:`drain_operations` lets card operations in
  flight finish (bounded), see ``cardd.daemon.serve``.

Test hook: with ``CARDD_TEST_HANG_SIGNAL=1`` in the environment, SIGUSR2 blocks the event loop
for good (``time.sleep`` inside the loop), which is what a hung loop looks like to the watchdog.
Nothing else enables it; the service unit never sets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from cardd.events import EventBus
from cardd.notify import Notifier
from cardd.readers.manager import ReaderManager

logger = logging.getLogger(__name__)

#: how backends are named to a technician reading `systemctl status cardd`
_BACKEND_LABELS = {"pcsc": "pcscd"}

#: environment variable that arms the SIGUSR2 "hang the loop" hook (tests only)
TEST_HANG_ENV = "CARDD_TEST_HANG_SIGNAL"


class ServiceStatus:
    """The STATUS= line: where cardd listens, how many readers, each backend's state."""

    def __init__(self, manager: ReaderManager, notifier: Notifier) -> None:
        self._manager = manager
        self._notifier = notifier
        self._parts: list[Callable[[], str | None]] = []
        self.url: str | None = None
        self.stopping = False
        self._last: str | None = None

    def add_part(self, part: Callable[[], str | None]) -> None:
        """Add a piece to the line (e.g. "ILS offline"); None or "" leaves it out."""
        self._parts.append(part)

    def text(self) -> str:
        if self.stopping:
            return "stopping"
        if self.url is None:
            return "starting: looking at the readers"
        pieces = [f"listening on {self.url}"]
        readers = self._manager.readers()
        pieces.append(f"{len(readers)} reader{'' if len(readers) == 1 else 's'}")
        busy = sum(r.busy for r in readers)
        if busy:
            pieces.append(f"{busy} busy")
        for name, state in sorted(self._manager.backend_states().items()):
            label = _BACKEND_LABELS.get(name, name)
            pieces.append(f"{label} up" if state == "up" else f"{label} down, retrying")
        for part in self._parts:
            try:
                extra = part()
            except Exception:  # noqa: BLE001 - a broken part must not silence the others
                logger.exception("status part failed")
                continue
            if extra:
                pieces.append(extra)
        return ", ".join(pieces)

    def refresh(self) -> None:
        """Send the line if it changed since the last send."""
        text = self.text()
        if text != self._last:
            self._last = text
            self._notifier.status(text)

    def mark_sent(self, text: str) -> None:
        self._last = text

    def follow(self, bus: EventBus) -> asyncio.Task[None]:
        """A task re-sending the line after every event (cancel it to stop).

        Subscribes now, before the caller sends READY, so no event falls between the two.
        """
        sub = bus.subscribe(maxsize=64)

        async def run() -> None:
            with sub:
                while True:
                    await sub.get()
                    # Take a burst (pcscd restarting announces every reader) in one go.
                    while sub.get_nowait() is not None:
                        pass
                    self.refresh()

        return asyncio.create_task(run(), name="cardd-status")


def backends_alive(backends: Sequence[Any]) -> bool:
    """True while every backend that can tell (``watcher_alive``) says its thread runs."""
    return all(getattr(b, "watcher_alive", True) for b in backends)


async def ping_watchdog(
    notifier: Notifier, interval: float, healthy: Callable[[], bool]
) -> None:
    """WATCHDOG=1 every ``interval / 2`` seconds while ``healthy()`` (sd_watchdog_enabled(3)).

    Runs on the event loop on purpose: if the loop hangs, the pings stop.
    """
    period = interval / 2
    warned = False
    while True:
        if healthy():
            notifier.watchdog()
            warned = False
        elif not warned:
            logger.error("a reader watcher thread died; withholding watchdog pings so systemd restarts cardd")
            warned = True
        await asyncio.sleep(period)


async def drain_operations(manager: ReaderManager, timeout: float) -> list[str]:
    """Wait (up to ``timeout``) until no reader is busy; return the readers still busy.

    A card exchange cannot be interrupted half-way (see the manager), so a stopping daemon
    lets running operations end; what is still running after the bound is cancelled by the
    HTTP server's shutdown, and the manager tells the operation through its cancel event.
    """

    def idle() -> bool:
        return not any(r.busy for r in manager.readers())

    if not idle():
        busy = [f"{r.name} ({r.busy_with})" for r in manager.readers() if r.busy]
        logger.info("stopping: waiting up to %g s for %s", timeout, ", ".join(busy))
        await manager.wait_until(idle, timeout)
    return [r.name for r in manager.readers() if r.busy]


def install_test_hang_hook(loop: asyncio.AbstractEventLoop) -> bool:
    """With ``CARDD_TEST_HANG_SIGNAL=1``: SIGUSR2 blocks the loop forever (tests only)."""
    if os.environ.get(TEST_HANG_ENV) != "1":
        return False

    def hang() -> None:
        logger.warning("SIGUSR2 with %s=1: blocking the event loop (test hook)", TEST_HANG_ENV)
        while True:
            time.sleep(3600)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGUSR2, hang)
        return True
    return False
