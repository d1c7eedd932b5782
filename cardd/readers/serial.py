# SPDX-License-Identifier: Apache-2.0
"""Serial adapter over pyserial: the only module in cardd that imports pyserial.

=========================  =========  ==========================================================
Function                   Supported  Remarks
=========================  =========  ==========================================================
discovery                  yes        ``comports()``: USB VID/PID/serial number from sysfs, or a
                                      configured fixed path (by-path, /dev/cardd link, pty)
exclusive open             yes        ``exclusive=True`` (flock): a second opener gets
                                      ``reader_busy``, and cardd never reads a port another
                                      program holds
EM4100 readers             yes        RDM6300, Parallax and explicit framings (framing.py);
                                      repeats debounced: again only after ``rearm_after`` absent
barcode scanners           yes        suffix CR/LF/CRLF/TAB/none, STX/ETX, prefix strip, LRC;
                                      same text within ``duplicate_window`` ignored
unplug / replug            yes        ``reader.removed`` at the first failed read, reopened
                                      with backoff (0.05 s doubling to 2 s) when it returns
hotplug notification       no         polling with backoff instead of pyudev (one less dep)
card operations            no         these readers report reads; ``connect()`` refuses
writing (relays)           yes        :class:`SerialLine` for the kiosk gate relay
=========================  =========  ==========================================================

One thread per configured device reads, frames and debounces, and reports through the same
sink as the PC/SC watcher (``TAG_TAPPED`` / ``BARCODE_SCANNED`` / ``READER_ADDED`` /
``READER_REMOVED``). pyserial's exceptions never leave this module: they become cardd errors.
Barcode text can hold a library number (national ID + suffix), so it is never logged.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial
from serial.tools import list_ports

from cardd.errors import CardError, NoReader, ReaderBusy, ReaderUnavailable, UsageError
from cardd.readers.framing import DecoderStats, Em4100Id, FrameDecoder, RepeatFilter
from cardd.readers.serial_config import PortMatch, SerialDeviceConfig
from cardd.readers.types import ReaderEvent, ReaderEventKind, ReaderKind

logger = logging.getLogger(__name__)

BACKEND = "serial"
EventSink = Callable[[ReaderEvent], None]

_GONE = {errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.EIO}
_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY}
_DENIED = {errno.EACCES, errno.EPERM}


# -- discovery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SerialPortInfo:
    """One serial port the system knows, as ``cardd diag`` shows it."""

    device: str
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    location: str | None = None
    description: str | None = None

    @property
    def usb_id(self) -> str | None:
        if self.vid is None or self.pid is None:
            return None
        return f"{self.vid:04x}:{self.pid:04x}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "usb": self.usb_id,
            "serialNumber": self.serial_number,
            "manufacturer": self.manufacturer,
            "product": self.product,
            "location": self.location,
            "description": self.description,
        }


def list_serial_ports() -> list[SerialPortInfo]:
    """Serial ports present now (built-in, USB serial, CDC-ACM), with their USB identity."""
    out = []
    for p in list_ports.comports():
        out.append(
            SerialPortInfo(
                device=p.device,
                vid=p.vid,
                pid=p.pid,
                serial_number=p.serial_number,
                manufacturer=p.manufacturer,
                product=p.product,
                location=p.location,
                description=p.description if p.description != "n/a" else None,
            )
        )
    return sorted(out, key=lambda p: p.device)


def matching_ports(match: PortMatch, ports: list[SerialPortInfo]) -> list[SerialPortInfo]:
    if match.port:
        return [p for p in ports if os.path.realpath(match.port) == os.path.realpath(p.device)]
    return [
        p
        for p in ports
        if p.vid == match.vid
        and p.pid == match.pid
        and (match.serial_number is None or p.serial_number == match.serial_number)
    ]


def resolve_port(match: PortMatch, ports: list[SerialPortInfo] | None = None) -> str:
    """The device path for ``match`` now.

    :raises NoReader: nothing matches (the device is unplugged)
    :raises UsageError: several devices match VID/PID and no serial number tells them apart
    """
    if match.port:
        if not os.path.exists(match.port):
            raise NoReader(f"{match.port} does not exist")
        return match.port
    found = matching_ports(match, list_serial_ports() if ports is None else ports)
    if not found:
        raise NoReader(f"no serial device {match.describe()} is plugged in")
    if len(found) > 1:
        raise UsageError(
            f"{len(found)} devices match {match.describe()} ({', '.join(p.device for p in found)}): "
            "add serial_number, or use a /dev/serial/by-path/ port"
        )
    return found[0].device


# -- one open port -----------------------------------------------------------------------------


def _open_error(path: str, e: Exception) -> CardError:
    code = getattr(e, "errno", None)
    if code in _BUSY:
        return ReaderBusy(f"{path} is held by another program (exclusive lock)")
    if code in _DENIED:
        return ReaderUnavailable(
            f"no permission to open {path}: add the service user to the device's group "
            "(cardd's udev rules set GROUP=cardd)"
        )
    if code in _GONE:
        return ReaderUnavailable(f"{path} is not present")
    return ReaderUnavailable(f"cannot open {path}: {e}")


class SerialLine:
    """One exclusively opened serial port; blocking reads with a timeout, writes, close.

    Every pyserial and OS error becomes :class:`ReaderUnavailable` (device gone or not
    accessible) or :class:`ReaderBusy` (another program holds the exclusive lock).
    """

    def __init__(self, port: Any, path: str) -> None:
        self._port = port
        self.path = path

    @classmethod
    def open(cls, path: str, baudrate: int = 9600) -> SerialLine:
        try:
            port = serial.Serial(
                path, baudrate=baudrate, timeout=0.5, write_timeout=2.0, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as e:
            raise _open_error(path, e) from None
        line = cls(port, path)
        try:
            # Bytes queued before we opened belong to nobody's frame (a scan from before a restart).
            port.reset_input_buffer()
        except (serial.SerialException, OSError, ValueError) as e:
            line.close()
            raise _open_error(path, e) from None
        return line

    @classmethod
    def open_match(cls, match: PortMatch, baudrate: int = 9600) -> SerialLine:
        return cls.open(resolve_port(match), baudrate)

    def read(self, timeout: float) -> bytes:
        """What has arrived, waiting up to ``timeout`` seconds for the first byte."""
        try:
            self._port.timeout = timeout
            data: bytes = self._port.read(1)
            if data:
                waiting = self._port.in_waiting
                if waiting:
                    data += self._port.read(waiting)
            return data
        except (serial.SerialException, OSError, TypeError) as e:
            # TypeError: pyserial's read on a port closed by another thread (fd None)
            raise ReaderUnavailable(f"{self.path} went away: {e}") from None

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError, TypeError) as e:
            raise ReaderUnavailable(f"cannot write to {self.path}: {e}") from None

    def cancel_read(self) -> None:
        """Wake a read blocked in another thread (pyserial's abort pipe)."""
        try:
            self._port.cancel_read()
        except (serial.SerialException, OSError):
            pass

    def close(self) -> None:
        try:
            self._port.close()
        except (serial.SerialException, OSError):
            pass

    def __enter__(self) -> SerialLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the backend ---------------------------------------------------------------------------------


class _DeviceReader:
    """The thread of one configured device: find, open, read, frame, debounce, report; repeat."""

    BACKOFF_MIN = 0.05
    BACKOFF_MAX = 2.0

    def __init__(self, device: SerialDeviceConfig, sink: EventSink) -> None:
        self.device = device
        self._sink = sink
        self._stop = threading.Event()
        self._line: SerialLine | None = None
        self._line_lock = threading.Lock()
        self.decoder = FrameDecoder(device.spec)
        rfid = device.role == "rfid"
        self._filter = RepeatFilter(
            device.rearm_after if rfid else device.duplicate_window, extend=rfid
        )
        #: the path open now (None while the device is absent), for diag
        self.open_path: str | None = None
        #: why the device is not open (last error code), for diag
        self.problem: str | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"cardd-serial[{device.name}]", daemon=True
        )

    @property
    def stats(self) -> DecoderStats:
        return self.decoder.stats

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._line_lock:
            if self._line is not None:
                self._line.cancel_read()
        self._thread.join(timeout)

    def _emit(self, kind: ReaderEventKind, data: dict[str, Any] | None = None) -> None:
        try:
            self._sink(ReaderEvent(kind=kind, backend=BACKEND, reader=self.device.name, data=data))
        except Exception:  # a broken subscriber must not kill the reader
            logger.exception("event sink failed")

    def _run(self) -> None:
        backoff = self.BACKOFF_MIN
        last_problem: str | None = None
        while not self._stop.is_set():
            try:
                line = SerialLine.open_match(self.device.match, self.device.baudrate)
            except CardError as e:
                # Say each new reason once; an unplugged reader is normal, not worth a warning.
                if e.message != last_problem:
                    level = logging.INFO if isinstance(e, NoReader) else logging.WARNING
                    logger.log(level, "serial reader %s: %s", self.device.name, e.message)
                    last_problem = e.message
                self.problem = e.code
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.BACKOFF_MAX)
                continue
            with self._line_lock:
                self._line = line
            if self._stop.is_set():
                line.close()
                break
            last_problem, self.problem, backoff = None, None, self.BACKOFF_MIN
            self.open_path = line.path
            logger.info("serial reader %s open on %s", self.device.name, line.path)
            self._emit(
                ReaderEventKind.READER_ADDED,
                {"kind": ReaderKind.SERIAL.value, "role": self.device.role, "port": line.path},
            )
            try:
                self._read_until_gone(line)
            except ReaderUnavailable as e:
                logger.warning("serial reader %s: %s", self.device.name, e.message)
                self.problem = e.code
            except Exception:  # noqa: BLE001 - a bug must not end the reader for good
                logger.exception("serial reader %s failed; reopening", self.device.name)
                self.problem = "internal_error"
                self._stop.wait(self.BACKOFF_MAX)
            finally:
                with self._line_lock:
                    self._line = None
                line.close()
                self.open_path = None
                self.decoder = FrameDecoder(self.device.spec, stats=self.decoder.stats)
                self._emit(ReaderEventKind.READER_REMOVED)
        logger.debug("serial reader %s stopped", self.device.name)

    def _read_until_gone(self, line: SerialLine) -> None:
        # Short enough that the idle rule fires on time, long enough not to spin.
        wait = min(0.5, self.device.spec.idle_timeout / 2)
        while not self._stop.is_set():
            chunk = line.read(wait)
            now = time.monotonic()
            frames = self.decoder.feed(chunk, now) if chunk else self.decoder.poll(now)
            for payload in frames:
                self._report(payload, now)

    def _report(self, payload: bytes, now: float) -> None:
        if self.device.role == "rfid":
            try:
                tag = Em4100Id.from_hex(payload)
            except ValueError:
                self.decoder.stats.malformed += 1
                logger.debug("serial reader %s: frame is not an EM4100 ID", self.device.name)
                return
            if self._filter.accept(tag.hex, now):
                self._emit(ReaderEventKind.TAG_TAPPED, {"kind": "em4100", "em4100": tag.to_dict()})
            return
        text = payload.decode(self.device.encoding, "replace").strip("\r\n")
        if not text:
            return
        if self._filter.accept(text, now):
            # The text may be a library number (national ID + suffix): log its length only.
            logger.debug("barcode on %s (%d characters)", self.device.name, len(text))
            self._emit(ReaderEventKind.BARCODE_SCANNED, {"text": text})


class SerialBackend:
    """Configured serial readers as the reader manager sees them (``[[serial.devices]]``)."""

    name = BACKEND

    def __init__(self, devices: tuple[SerialDeviceConfig, ...] | list[SerialDeviceConfig]) -> None:
        self.devices = tuple(devices)
        self._readers: list[_DeviceReader] = []

    def start_watcher(self, sink: EventSink) -> None:
        self._readers = [_DeviceReader(d, sink) for d in self.devices]
        for r in self._readers:
            r.start()

    def stop_watcher(self) -> None:
        for r in self._readers:
            r._stop.set()
        for r in self._readers:
            r.stop()
        self._readers = []

    @property
    def available(self) -> bool:
        # No service stands between cardd and a tty: the stack is up once the threads run;
        # each device comes and goes as its own reader.
        return bool(self._readers)

    def connect(self, reader: str) -> Any:
        raise UsageError(
            f"{reader!r} is a serial reader: it reports tag and barcode reads as events "
            "and holds no card to connect to"
        )

    def release_thread_context(self) -> None:
        pass

    def status(self) -> list[dict[str, Any]]:
        """Per device: open port, last problem and decoder counters (diag, support)."""
        return [
            {
                "name": r.device.name,
                "role": r.device.role,
                "match": r.device.match.describe(),
                "open": r.open_path,
                "problem": r.problem,
                "stats": r.stats.to_dict(),
            }
            for r in self._readers
        ]
