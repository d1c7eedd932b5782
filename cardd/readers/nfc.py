# SPDX-License-Identifier: Apache-2.0
"""nfcpy adapter: the only module in cardd that imports nfcpy (``nfc``).

=====================  =========  ==============================================================
Function               Supported  Remarks
=====================  =========  ==============================================================
readers                yes        only the devices ``[nfc] devices`` lists, one thread each
taps                   yes        ``tag.tapped`` once per presence, UID from anticollision /
                                  polling (Type A, B, FeliCa); the tag is never activated
unplug / re-plug       yes        ``reader.removed``, then reopened with backoff
busy / no permission   yes        logged once with the fix (kernel driver, pcscd, udev rule)
card operations        no         ``connect()`` raises :class:`~cardd.errors.UsageError`
card emulation         sim only   Type A (chosen UID, ATQA, SAK) and FeliCa (chosen IDm) over
                                  nfcpy's UDP driver, for cardd.sim.nfc_card
=====================  =========  ==============================================================

Why taps are *reported* and never connected to: nfcpy owns the reader through libusb and drives
it from one thread in ``ContactlessFrontend.connect()``; its drivers are not thread-safe, and
what a card operation needs (ISO 7816 APDUs, MIFARE Classic authentication for student cards)
is either out of nfcpy's reach (no CRYPTO1: nfcpy issue #133) or has a PC/SC path already. So an
nfcpy reader is a tap source, like a serial RFID reader: the manager publishes its TAG_TAPPED
events, and reading or burning cards needs a PC/SC reader.

How a device is polled: ``connect(rdwr=...)`` with ``iterations=1`` so that one call of
``terminate`` falls between two poll rounds over the configured technologies. The
``on-discover`` callback gets every sensed target, hands its bytes to
:func:`cardd.readers.nfc_targets.sensed_tag` and returns False, so nfcpy does not activate the
tag (activation sends tag commands a MIFARE Classic card does not answer) and goes straight on
polling; ``terminate`` ends the round in the :class:`PresenceTracker` (tap once per presence),
paces rounds to :attr:`NfcDeviceWatcher.ROUND_MIN` and says whether to stop. ``connect()``
returns False when nfcpy caught an ``IOError`` (USB unplug): the device is closed, reported
removed and reopened with backoff. Stopping takes one poll round: milliseconds on USB readers,
at most about a second per silent technology on the UDP simulation (its receive timeout).

nfcpy 1.0.4 runs unpatched on Python 3.11 for everything used here (checked by the tests through
the UDP driver). Two things are worked around, both in the UDP simulation only: nfcpy's UDP
sockets listen on all interfaces (the card side binds 0.0.0.0, the reader side is bound
implicitly by its first sendto), so both sides here bind the configured loopback host instead;
and its Type A listener compares the cascade level 3 SEL_REQ with the level 2 command code, so a
10-byte UID cannot be selected over UDP (the emulator refuses such UIDs; 4- and 7-byte UIDs work).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import nfc
import nfc.clf
import nfc.clf.udp

from cardd.errors import UsageError
from cardd.readers.nfc_config import NfcConfig
from cardd.readers.nfc_targets import (
    BACKEND,
    PresenceTracker,
    SensedTag,
    explain_open_error,
    reader_name,
    sensed_tag,
)
from cardd.readers.types import ReaderEvent, ReaderEventKind

logger = logging.getLogger(__name__)

EventSink = Callable[[ReaderEvent], None]


class DeviceOpenError(Exception):
    """nfcpy could not open a device; ``message`` says why and what to do."""

    def __init__(self, path: str, err: int | None, detail: str = "") -> None:
        self.path = path
        self.errno = err
        self.message = explain_open_error(path, err, detail)
        super().__init__(self.message)


class Frontend(Protocol):
    """What the watcher needs of nfcpy's ContactlessFrontend (a seam for the unit tests)."""

    def connect(self, **options: Any) -> Any: ...
    def close(self) -> None: ...


def open_frontend(path: str) -> Frontend:
    """An open ContactlessFrontend on ``path``.

    :raises DeviceOpenError: not found, busy (EBUSY), no permission (EACCES), ...
    """
    clf = nfc.ContactlessFrontend()
    try:
        if path.startswith("udp:"):
            _, host, port = path.split(":")
            clf.device = _LoopbackReaderDevice(host, int(port))
            found = True
        else:
            found = clf.open(path)
    except OSError as e:
        raise DeviceOpenError(path, e.errno, e.strerror or str(e)) from None
    except Exception as e:  # noqa: BLE001 - libusb and driver init raise anything
        raise DeviceOpenError(path, None, f"{type(e).__name__}: {e}") from None
    if not found:
        raise DeviceOpenError(path, errno.ENODEV)
    return clf


class _LoopbackReaderDevice(nfc.clf.udp.Device):  # type: ignore[misc]
    """nfcpy's UDP reader side, its socket bound to the loopback host it talks to.

    nfcpy leaves the socket to be bound implicitly to 0.0.0.0 by the first sendto, and accepts
    answers from any sender: anyone on the network who guessed the port could forge taps.
    """

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._path = f"udp:{host}:{port}"
        self._vendor_name = "cardd"
        self._device_name = "simulated RF (UDP)"
        self._chipset_name = "UDP"

    def _create_socket(self) -> None:
        if self.socket is None:
            super()._create_socket()
            sock: Any = self.socket  # created just now
            sock.bind((self.addr[0], 0))


def _target_tag(target: Any) -> SensedTag | None:
    """nfcpy's RemoteTarget (whose attributes are None when absent) as cardd's SensedTag."""

    def raw(name: str) -> bytes | None:
        value = getattr(target, name, None)
        return bytes(value) if value is not None else None

    return sensed_tag(
        str(target.brty),
        sens_res=raw("sens_res"),
        sel_res=raw("sel_res"),
        sdd_res=raw("sdd_res"),
        rid_res=raw("rid_res"),
        sensb_res=raw("sensb_res"),
        sensf_res=raw("sensf_res"),
    )


class NfcDeviceWatcher:
    """One configured device: open, poll, report, reopen. One thread, which alone touches nfcpy."""

    #: shortest poll round (seconds): paces the loop when a reader answers at once
    ROUND_MIN = 0.1
    #: reopen backoff bounds (seconds); USB re-enumeration after a re-plug takes about a second
    BACKOFF_MIN = 0.5
    BACKOFF_MAX = 5.0

    def __init__(
        self,
        path: str,
        config: NfcConfig,
        sink: EventSink,
        *,
        opener: Callable[[str], Frontend] = open_frontend,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.reader = reader_name(path)
        self._config = config
        self._sink = sink
        self._opener = opener
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cardd-nfc[{path}]", daemon=True)
        #: True while the device is open and polled
        self.open = False
        #: set once the first open attempt has finished, successfully or not
        self.first_attempt = threading.Event()
        #: why the device is not open (None while it is)
        self.last_error: str | None = None
        #: poll rounds and sightings since start (diagnostics and tests)
        self.rounds = 0
        self.sightings = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("nfc reader %s did not stop within %g s", self.path, timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _emit(self, kind: ReaderEventKind, **kw: Any) -> None:
        try:
            self._sink(ReaderEvent(kind=kind, backend=BACKEND, reader=self.reader, **kw))
        except Exception:  # a broken subscriber must not kill the watcher
            logger.exception("event sink failed")

    def _run(self) -> None:
        backoff = self.BACKOFF_MIN
        while not self._stop.is_set():
            try:
                clf = self._opener(self.path)
            except DeviceOpenError as e:
                self._note_error(e.message)
                self.first_attempt.set()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.BACKOFF_MAX)
                continue
            if self.last_error is not None:
                logger.info("nfc reader %s open again", self.path)
            else:
                logger.info("nfc reader %s open", self.path)
            self.last_error = None
            self.open = True
            self._emit(ReaderEventKind.READER_ADDED, data={"kind": "contactless"})
            self.first_attempt.set()
            try:
                reason = self._poll(clf)
            finally:
                self.open = False
                try:
                    clf.close()
                except Exception:  # noqa: BLE001 - a vanished device may fail to close
                    logger.debug("closing %s failed", self.path, exc_info=True)
            if self._stop.is_set():
                break
            self._emit(ReaderEventKind.READER_REMOVED, detail=reason)
            self._note_error(f"{self.path}: {reason}; reopening")
            # A device that opened and then failed is usually being unplugged: start small.
            backoff = self.BACKOFF_MIN
            self._stop.wait(backoff)
        logger.debug("nfc reader %s stopped", self.path)

    def _note_error(self, message: str) -> None:
        # Once per distinct cause: a reader left unplugged must not fill the log every 5 s.
        if message != self.last_error:
            logger.warning("nfc reader %s", message)
        self.last_error = message

    def _poll(self, clf: Frontend) -> str:
        """Poll until stopped (returns "stopped") or the device fails (returns why)."""
        tracker = PresenceTracker(self._config.debounce)
        round_started = self._clock()

        def on_discover(target: Any) -> bool:
            try:
                tag = _target_tag(target)
                if tag is not None:
                    self.sightings += 1
                    if tracker.seen(tag.identifier, self._clock()):
                        logger.debug(
                            "tap on %s (%s, %d-byte id)",
                            self.reader,
                            tag.technology,
                            len(tag.identifier),
                        )
                        self._emit(ReaderEventKind.TAG_TAPPED, data=tag.tap_data(self.reader))
            except Exception:  # noqa: BLE001 - never let one odd target end the polling
                logger.exception("nfc reader %s: cannot use a sensed target", self.path)
            return False  # do not activate: the UID is all a tap needs

        def terminate() -> bool:
            nonlocal round_started
            now = self._clock()
            tracker.round_done(now)
            self.rounds += 1
            rest = self.ROUND_MIN - (now - round_started)
            if rest > 0 and self._stop.wait(rest):
                return True
            round_started = self._clock()
            return self._stop.is_set()

        try:
            result = clf.connect(
                rdwr={
                    "targets": list(self._config.targets),
                    "on-discover": on_discover,
                    "iterations": 1,
                    "interval": 0,
                    "beep-on-connect": False,
                },
                terminate=terminate,
            )
        except Exception as e:  # noqa: BLE001 - nfcpy lets non-IOError driver errors escape
            return f"the reader failed: {type(e).__name__}: {e}"
        if self._stop.is_set():
            return "stopped"
        if result is False:
            # nfcpy caught an IOError and only logged it: the device went away or stopped
            # answering. Typical cause: the USB reader was unplugged.
            said = _NFCPY_ERRORS.last.pop(threading.get_ident(), None)
            return "the reader stopped answering (unplugged?)" + (f": {said}" if said else "")
        return f"nfcpy ended polling unexpectedly ({result!r})"


class NfcBackend:
    """The nfcpy stack as the reader manager sees it: one watcher per configured device."""

    name = BACKEND

    def __init__(
        self, config: NfcConfig, *, opener: Callable[[str], Frontend] = open_frontend
    ) -> None:
        # A snapshot: devices and polling are fixed for the daemon's life (a reload that changes
        # [nfc] needs a restart), even when ``config`` reads through to a live configuration.
        self._config = NfcConfig(
            tuple(config.devices), tuple(config.targets), float(config.debounce)
        )
        self._opener = opener
        self._watchers: list[NfcDeviceWatcher] = []

    def start_watcher(self, sink: EventSink) -> None:
        _quiet_nfcpy_logger()
        self._watchers = [
            NfcDeviceWatcher(path, self._config, sink, opener=self._opener)
            for path in self._config.devices
        ]
        for w in self._watchers:
            w.start()

    def stop_watcher(self) -> None:
        # Stop all at once: each needs up to one poll round to notice.
        watchers, self._watchers = self._watchers, []
        for w in watchers:
            w._stop.set()
        for w in watchers:
            w.stop()

    @property
    def watchers(self) -> tuple[NfcDeviceWatcher, ...]:
        return tuple(self._watchers)

    @property
    def available(self) -> bool:
        """Up once every device had its first open attempt (an absent reader is a missing
        reader, as with PC/SC, not a stack that is down)."""
        return bool(self._watchers) and all(w.first_attempt.is_set() for w in self._watchers)

    @property
    def watcher_alive(self) -> bool:
        """Every device thread runs (a device may be unplugged: it retries); the watchdog asks."""
        return bool(self._watchers) and all(w.alive for w in self._watchers)

    def connect(self, reader: str) -> Any:
        raise UsageError(
            f"{reader!r} is an nfcpy reader: it reports taps (tag.tapped) but cannot run card "
            "operations; read or burn cards on a PC/SC reader"
        )

    def release_thread_context(self) -> None:
        pass


class _NfcpyErrors(logging.Handler):
    """nfcpy's last error message per thread: the watcher's report of why a device failed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: dict[int | None, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.last[record.thread] = record.getMessage()


_NFCPY_ERRORS = _NfcpyErrors()


def _quiet_nfcpy_logger() -> None:
    # nfcpy sets its own logger to INFO and logs every failed open at error level ("no reader
    # available on path ..."): at each backoff retry that would flood the log. The watcher logs
    # each cause once, with the fix, and takes nfcpy's error text from _NFCPY_ERRORS; nfcpy's
    # own lines reach cardd's log only when cardd logs at debug level.
    nfc_logger = logging.getLogger("nfc")
    if _NFCPY_ERRORS not in nfc_logger.handlers:
        nfc_logger.addHandler(_NFCPY_ERRORS)
    debug = logger.isEnabledFor(logging.DEBUG)
    nfc_logger.setLevel(logging.DEBUG if debug else logging.ERROR)
    nfc_logger.propagate = debug


# -- USB discovery for diag --------------------------------------------------------------------


def usb_device_drivers() -> dict[tuple[int, int], str]:
    """nfcpy's own (vendor, product) -> driver table."""
    from nfc.clf import device

    return dict(device.usb_device_map)


def list_usb_devices() -> list[tuple[int, int, int, int]]:
    """(vendor, product, bus, address) of every USB device, as nfcpy finds them through libusb."""
    from nfc.clf import transport

    return list(transport.USB.find("usb") or [])


# -- card emulation over the UDP driver (cardd.sim.nfc_card) -----------------------------------


@dataclass(frozen=True)
class EmulatedCard:
    """A card to emulate: Type A (``106A``: UID, ATQA, SAK) or FeliCa (``212F``: IDm, PMm)."""

    technology: str
    identifier: bytes
    #: Type A: SENS_RES (ATQA) as sent, e.g. 04 00 (4-byte UID) or 44 00 (7-byte)
    sens_res: bytes = b"\x04\x00"
    #: Type A: SEL_RES (SAK), e.g. 08 MIFARE Classic 1K, 00 Type 2, 20 ISO-DEP
    sel_res: int = 0x08
    #: FeliCa: PMm and system code
    pmm: bytes = b"\xff" * 8
    system_code: bytes = b"\x12\xfc"

    def __post_init__(self) -> None:
        if self.technology == "106A":
            if len(self.identifier) not in (4, 7):
                # nfcpy 1.0.4's UDP listener answers a level-3 SEL_REQ only if it carries the
                # level-2 code (95 instead of 97), so 10-byte UIDs never get selected.
                raise ValueError("over nfcpy's UDP driver a Type A UID has 4 or 7 bytes")
            if len(self.sens_res) != 2:
                raise ValueError("ATQA (SENS_RES) has 2 bytes")
        elif self.technology in ("212F", "424F"):
            if len(self.identifier) != 8 or len(self.pmm) != 8 or len(self.system_code) != 2:
                raise ValueError("FeliCa: IDm and PMm have 8 bytes, the system code 2")
        else:
            raise ValueError("emulated technologies: 106A (Type A), 212F / 424F (FeliCa)")

    def local_target(self) -> Any:
        target = nfc.clf.LocalTarget(self.technology)
        if self.technology == "106A":
            target.sens_res = bytearray(self.sens_res)
            target.sdd_res = bytearray(self.identifier)
            target.sel_res = bytearray([self.sel_res])
        else:
            target.sensf_res = bytearray(b"\x01" + self.identifier + self.pmm + self.system_code)
        return target


class _SimulatedCardDevice(nfc.clf.udp.Device):  # type: ignore[misc]
    """nfcpy's UDP device, listening only on its configured host and telling each selection."""

    def __init__(
        self, host: str, port: int, on_bound: Callable[[], None], on_selected: Callable[[], None]
    ) -> None:
        super().__init__(host, port)
        self._on_bound = on_bound
        self._on_selected = on_selected
        self._vendor_name = "cardd"
        self._device_name = "simulated card"
        self._chipset_name = "UDP"

    def _bind_socket(self, time_to_return: float) -> bool:
        # nfcpy binds 0.0.0.0: a simulated card must not answer anyone on the network.
        try:
            self.socket.bind(self.addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OSError(
                    e.errno,
                    f"UDP {self.addr[0]}:{self.addr[1]} is in use "
                    "(another simulated card on this port?)",
                ) from None
            raise
        self._on_bound()
        return True

    def _send_data(self, brty: str, data: bytes, addr: Any) -> None:
        super()._send_data(brty, data, addr)
        # One selection = the last SEL_RES (one byte, cascade bit clear) or a SENSF_RES.
        if (brty.endswith("A") and len(data) == 1 and not data[0] & 0x04) or (
            brty.endswith("F") and len(data) >= 18 and data[1] == 0x01
        ):
            self._on_selected()


def run_card_emulator(
    path: str,
    card: EmulatedCard,
    *,
    on_ready: Callable[[], None] = lambda: None,
    on_selected: Callable[[], None] = lambda: None,
) -> None:
    """Be ``card`` on nfcpy's UDP RF simulation at ``path`` (``udp:HOST:PORT``); never returns.

    The reader side (an NfcBackend on the same ``udp:HOST:PORT``) sends its polls to that port;
    nfcpy's listener answers SENS_REQ / SDD_REQ / SEL_REQ (Type A) or SENSF_REQ (FeliCa) with
    the card's values, and ``on_selected`` runs after each complete selection. Taking the card
    away is ending the process (a signal): the next poll goes unanswered.
    """
    parts = path.split(":")
    if len(parts) != 3 or parts[0] != "udp":
        raise ValueError("the card emulator needs a udp:HOST:PORT path")
    host = socket.gethostbyname(parts[1])
    bound = threading.Event()

    def _bound() -> None:
        if not bound.is_set():
            bound.set()
            on_ready()

    device = _SimulatedCardDevice(host, int(parts[2]), _bound, on_selected)
    target = card.local_target()
    # Listen in long stretches: between two listen() calls the socket is closed and bound
    # again, and a poll arriving in that gap would look like the card leaving the field.
    listen = device.listen_tta if card.technology == "106A" else device.listen_ttf
    try:
        while True:
            try:
                listen(target, 3600.0)
            except nfc.clf.CommunicationError as e:
                logger.debug("simulated card: %s", e)
            device.mute()
    finally:
        device.close()
