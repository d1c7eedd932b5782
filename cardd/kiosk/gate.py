# SPDX-License-Identifier: Apache-2.0
"""The entrance gate: a relay pulsed once per granted entry (kiosk.md §6).

Driver ``serial-relay`` drives the common LCUS USB relay boards (CH340, ``1a86:7523``,
9600 8N1): ``A0 <channel> <01 on | 00 off> <sum & FF>``, so channel 1 is ``A0 01 01 A2`` /
``A0 01 00 A1``; other boards take explicit ``on`` / ``off`` byte strings. Driver ``none`` is a
kiosk without a gate (a display at a door that staff open).

Rules (kiosk.md §6 "suggested", decided here):

- :meth:`GateRelay.open` is a pulse: on, ``pulse`` seconds, off. The pulse runs on the relay's
  own thread, so a cancelled or timed-out caller can never leave the relay energised.
- Overlapping opens extend the pulse (the later deadline wins) instead of stacking on/off
  cycles; every caller returns when the relay is off again.
- The relay is switched off at :meth:`start` and at :meth:`close`; a crash is covered by the
  watchdog restart, which calls :meth:`start` again.
- A relay that cannot be driven raises :class:`~cardd.errors.GateUnavailable`; the port is
  reopened at the next command, so a replugged relay works without a restart.
- The serial I/O goes through :class:`cardd.readers.serial.SerialLine` (the only pyserial
  user), imported when the relay is first used.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cardd.errors import CardError, ConfigError, GateUnavailable
from cardd.readers.serial_config import PortMatch, parse_port_match

if TYPE_CHECKING:
    from cardd.readers.serial import SerialLine

logger = logging.getLogger(__name__)

DRIVERS = ("serial-relay", "none")
_KEYS = {
    "driver",
    "port",
    "vid",
    "pid",
    "serial_number",
    "baudrate",
    "channel",
    "on",
    "off",
    "pulse",
}


def lcus_command(channel: int, on: bool) -> bytes:
    """An LCUS relay board command: ``A0 <channel> <state> <checksum>``."""
    head = bytes([0xA0, channel, 0x01 if on else 0x00])
    return head + bytes([sum(head) & 0xFF])


@dataclass(frozen=True)
class GateConfig:
    driver: str = "none"
    match: PortMatch | None = None
    baudrate: int = 9600
    channel: int = 1
    on_command: bytes = lcus_command(1, True)
    off_command: bytes = lcus_command(1, False)
    #: seconds the relay stays energised for one entry
    pulse: float = 1.0


def parse_gate_config(table: dict[str, Any], where: str) -> GateConfig:
    """Parse ``[kiosk.gate]``.

    Keys: ``driver`` ("serial-relay" | "none"; default "serial-relay" when the table names a
    device with ``port`` or ``vid``/``pid``, else "none"), the device (as in
    ``[[serial.devices]]``), ``baudrate`` (9600), ``channel`` (1, builds the LCUS commands),
    ``on`` / ``off`` (hex byte strings for other boards; both or neither, and not with
    ``channel``), ``pulse`` (seconds, 1.0; 0.1 to 30).
    """
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    names_device = any(k in table for k in ("port", "vid", "pid"))
    driver = table.get("driver", "serial-relay" if names_device else "none")
    if driver not in DRIVERS:
        raise ConfigError(f"{where}.driver must be one of {', '.join(DRIVERS)}, got {driver!r}")

    pulse = table.get("pulse", 1.0)
    if isinstance(pulse, bool) or not isinstance(pulse, (int, float)) or not 0.1 <= pulse <= 30:
        raise ConfigError(
            f"{where}.pulse must be a number of seconds from 0.1 to 30, got {pulse!r}"
        )
    baudrate = table.get("baudrate", 9600)
    if isinstance(baudrate, bool) or not isinstance(baudrate, int) or baudrate <= 0:
        raise ConfigError(f"{where}.baudrate must be a positive integer, got {baudrate!r}")
    channel = table.get("channel", 1)
    if isinstance(channel, bool) or not isinstance(channel, int) or not 1 <= channel <= 255:
        raise ConfigError(f"{where}.channel must be an integer from 1 to 255, got {channel!r}")
    if ("on" in table) != ("off" in table):
        raise ConfigError(f"{where}: give both on and off commands, or neither")
    if "on" in table:
        if "channel" in table:
            raise ConfigError(f"{where}: on/off commands replace channel; give one or the other")
        on, off = _hex(table, "on", where), _hex(table, "off", where)
        if on == off:
            raise ConfigError(f"{where}: the on and off commands must differ")
    else:
        on, off = lcus_command(channel, True), lcus_command(channel, False)

    if driver == "none":
        # The device keys may stay in the file while the gate is switched off.
        return GateConfig(driver="none", pulse=float(pulse))
    if not names_device:
        raise ConfigError(f"{where}: driver serial-relay needs the relay's port or vid/pid")
    return GateConfig(
        driver=driver,
        match=parse_port_match(table, where),
        baudrate=baudrate,
        channel=channel,
        on_command=on,
        off_command=off,
        pulse=float(pulse),
    )


def _hex(table: dict[str, Any], key: str, where: str) -> bytes:
    value = table[key]
    try:
        data = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        data = b""
    if not data:
        raise ConfigError(f'{where}.{key}: expected hex bytes like "A0 01 01 A2", got {value!r}')
    return data


class GateRelay:
    """One gate relay. Use from asyncio: ``await start()``, ``await open()``, ``await close()``."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self._line: SerialLine | None = None
        self._io = threading.Lock()  # one command on the wire at a time
        self._cond = threading.Condition()
        self._deadline: float | None = None  # monotonic end of the pulse asked for
        self._waiters: list[Future[None]] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        #: pulses carried out (one per on/off cycle, however many opens it covered)
        self.pulses = 0

    @property
    def enabled(self) -> bool:
        return self.config.driver != "none"

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Switch the relay off (it may have been left on by a crash) and start its thread.

        A relay that is missing at start is logged, not raised: the kiosk runs, and each
        :meth:`open` reports ``gate_unavailable`` until the relay is back.
        """
        if not self.enabled:
            return
        self._closing = False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cardd-gate", daemon=True)
            self._thread.start()
        try:
            await self.off()
        except GateUnavailable as e:
            logger.warning("gate relay not available at start: %s", e.message)

    async def open(self) -> None:
        """Pulse the relay: on, ``pulse`` seconds, off. Returns once it is off again.

        :raises GateUnavailable: the relay could not be switched (on or off)
        """
        if not self.enabled:
            logger.info("gate open (no gate relay configured)")
            return
        if self._thread is None or self._closing:
            raise GateUnavailable("the gate relay is not started")
        done: Future[None] = Future()
        with self._cond:
            deadline = time.monotonic() + self.config.pulse
            self._deadline = max(self._deadline or 0.0, deadline)
            self._waiters.append(done)
            self._cond.notify_all()
        # shield: a caller that gives up must not cancel the pulse other callers share
        await asyncio.shield(asyncio.wrap_future(done))

    async def off(self) -> None:
        """Switch the relay off now (outside a pulse). :raises GateUnavailable:"""
        if self.enabled:
            await asyncio.to_thread(self._send, self.config.off_command)

    async def close(self) -> None:
        """End a pulse early, switch off, release the port. Never raises (shutdown path)."""
        if not self.enabled:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
        try:
            await self.off()
        except GateUnavailable as e:
            logger.warning("gate relay not switched off at shutdown: %s", e.message)
        with self._io:
            if self._line is not None:
                self._line.close()
                self._line = None

    # -- the relay thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._deadline is None and not self._closing:
                    self._cond.wait()
                if self._deadline is None:  # closing, nothing asked
                    return
            error: CardError | None = None
            try:
                self._send(self.config.on_command)
            except CardError as e:
                error = e
            with self._cond:
                # Wait out the (possibly extended) pulse; then take the waiters it covers under
                # the same lock, so an open() arriving after this starts a new pulse.
                while error is None and not self._closing:
                    remaining = (self._deadline or 0.0) - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                waiters, self._waiters, self._deadline = self._waiters, [], None
            try:
                self._send(self.config.off_command)
            except CardError as e:
                error = error or e
            self.pulses += 1
            for w in waiters:
                if w.done():  # cancelled by its caller
                    continue
                if error is None:
                    w.set_result(None)
                else:
                    w.set_exception(error)

    def _send(self, command: bytes) -> None:
        """Write one command, opening (or reopening) the port as needed."""
        from cardd.readers.serial import SerialLine

        assert self.config.match is not None
        with self._io:
            try:
                if self._line is None:
                    self._line = SerialLine.open_match(self.config.match, self.config.baudrate)
                self._line.write(command)
            except CardError as e:
                if self._line is not None:
                    self._line.close()
                    self._line = None
                raise GateUnavailable(
                    f"gate relay {self.config.match.describe()}: {e.message}"
                ) from None
