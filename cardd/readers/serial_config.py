# SPDX-License-Identifier: Apache-2.0
"""The ``[serial]`` configuration: serial RFID readers and barcode scanners (no pyserial here).

Each ``[[serial.devices]]`` entry names one device, how to find it and how it frames its output::

    [[serial.devices]]
    name = "entrance-rfid"      # the reader name in /v1/readers and in events
    vid = "1a86"                # USB vendor/product id (and serial_number when two are alike)
    pid = "7523"
    preset = "rdm6300"          # or the explicit framing keys below
    role = "rfid"               # "rfid" (EM4100 tag IDs) or "barcode" (text)

Decisions where the issue was silent (written down for technicians):

- A device is found by USB VID/PID (+ serial number), never by ``/dev/ttyUSB0``, whose number
  changes with plug order; ``port`` names a fixed path instead (``/dev/serial/by-path/...``,
  a ``/dev/cardd/...`` udev link, a pty in tests).
- Explicit framing keys override the preset's. ``suffix`` and ``stx_etx`` are the scanner
  manual's words for the ``end`` / ``start`` markers; giving both forms at once is refused.
- RFID readers repeat a present tag: it is reported again only after ``rearm_after`` seconds of
  absence (0.5 s, python-rdm6300's heartbeat). Barcodes: the same text within
  ``duplicate_window`` seconds of its last report is ignored (1.0 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cardd.errors import ConfigError
from cardd.readers.framing import PRESETS, SUFFIXES, Checksum, FrameSpec

ROLES = ("rfid", "barcode")

_DEVICE_KEYS = {
    "name",
    "port",
    "vid",
    "pid",
    "serial_number",
    "preset",
    "role",
    "baudrate",
    "start",
    "end",
    "suffix",
    "stx_etx",
    "length",
    "checksum",
    "strip_prefix",
    "idle_timeout",
    "max_length",
    "rearm_after",
    "duplicate_window",
    "encoding",
}


@dataclass(frozen=True)
class PortMatch:
    """How to find one serial device: a fixed path, or USB VID/PID and optionally its serial."""

    port: str | None = None
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None

    def describe(self) -> str:
        if self.port:
            return self.port
        text = f"USB {self.vid or 0:04x}:{self.pid or 0:04x}"
        return f"{text} serial {self.serial_number}" if self.serial_number else text


@dataclass(frozen=True)
class SerialDeviceConfig:
    name: str
    match: PortMatch
    role: str
    spec: FrameSpec
    baudrate: int = 9600
    #: seconds a repeating tag must be absent before it is reported again (rfid)
    rearm_after: float = 0.5
    #: seconds within which the same barcode text is ignored (barcode)
    duplicate_window: float = 1.0
    #: barcode text encoding (undecodable bytes become U+FFFD, never an error)
    encoding: str = "utf-8"


@dataclass(frozen=True)
class SerialConfig:
    devices: tuple[SerialDeviceConfig, ...] = ()


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(
            f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}"
        )
    if not isinstance(value, kind):
        raise ConfigError(
            f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}"
        )
    return value


def _hex_bytes(table: dict[str, Any], key: str, where: str) -> bytes | None:
    text = _get(table, key, str, where)
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigError(
            f'{where}.{key}: expected hex bytes like "02" or "0D 0A", got {text!r}'
        ) from None


def _usb_id(table: dict[str, Any], key: str, where: str) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    try:
        number = int(value, 16) if isinstance(value, str) else value
    except ValueError:
        number = None
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 0xFFFF:
        raise ConfigError(
            f'{where}.{key}: expected a 4-digit hex USB id like "1a86", got {value!r}'
        )
    return number


def parse_port_match(table: dict[str, Any], where: str) -> PortMatch:
    """``port`` or ``vid`` + ``pid`` (+ ``serial_number``); shared with ``[kiosk.gate]``."""
    port = _get(table, "port", str, where)
    vid, pid = _usb_id(table, "vid", where), _usb_id(table, "pid", where)
    serial = _get(table, "serial_number", str, where)
    if port and (vid is not None or pid is not None or serial):
        raise ConfigError(f"{where}: give either port or vid/pid/serial_number, not both")
    if not port and (vid is None or pid is None):
        raise ConfigError(f"{where}: name the device with vid and pid (USB ids) or with port")
    return PortMatch(port=port or None, vid=vid, pid=pid, serial_number=serial)


def _positive(table: dict[str, Any], key: str, where: str, default: float) -> float:
    value = _get(table, key, (int, float), where)
    if value is None:
        return default
    if value <= 0:
        raise ConfigError(f"{where}.{key} must be positive")
    return float(value)


def parse_device(table: dict[str, Any], where: str) -> SerialDeviceConfig:
    unknown = sorted(set(table) - _DEVICE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    name = _get(table, "name", str, where)
    if not name:
        raise ConfigError(f"{where}: every serial device needs a name")
    where = f"{where} ({name})"
    match = parse_port_match(table, where)
    preset_name = _get(table, "preset", str, where)
    if preset_name is not None and preset_name not in PRESETS:
        raise ConfigError(f"{where}: unknown preset {preset_name!r} (known: {', '.join(PRESETS)})")
    base = PRESETS[preset_name] if preset_name else None
    spec = base.spec if base else FrameSpec()

    role = _get(table, "role", str, where) or (base.role if base else None)
    if role not in ROLES:
        raise ConfigError(f'{where}: role must be "rfid" or "barcode" (or give a preset)')

    start, end = _hex_bytes(table, "start", where), _hex_bytes(table, "end", where)
    suffix_name = _get(table, "suffix", str, where)
    stx_etx = _get(table, "stx_etx", bool, where)
    if suffix_name is not None:
        if end is not None:
            raise ConfigError(f"{where}: give end or suffix, not both")
        if suffix_name.lower() not in SUFFIXES:
            raise ConfigError(f"{where}.suffix must be one of {', '.join(SUFFIXES)}")
    if stx_etx is not None and (start is not None or end is not None):
        raise ConfigError(f"{where}: stx_etx sets start and end; do not give them as well")
    if stx_etx is not None:
        start = b"\x02" if stx_etx else b""
        end = (b"\x03" if stx_etx else b"") + SUFFIXES[(suffix_name or "none").lower()]
    elif suffix_name is not None:
        end = SUFFIXES[suffix_name.lower()]

    checksum_name = _get(table, "checksum", str, where)
    try:
        checksum = Checksum(checksum_name) if checksum_name is not None else spec.checksum
    except ValueError:
        raise ConfigError(
            f"{where}.checksum must be one of {', '.join(c.value for c in Checksum)}"
        ) from None
    length = _get(table, "length", int, where)
    max_length = _get(table, "max_length", int, where)
    prefix = _get(table, "strip_prefix", str, where)
    try:
        spec = FrameSpec(
            start=spec.start if start is None else start,
            end=spec.end if end is None else end,
            length=spec.length if length is None else (length or None),
            checksum=checksum,
            strip_prefix=spec.strip_prefix if prefix is None else prefix.encode("utf-8"),
            idle_timeout=_positive(table, "idle_timeout", where, spec.idle_timeout),
            max_length=spec.max_length if max_length is None else max_length,
        )
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    if role == "rfid" and spec.length not in (None, 10):
        raise ConfigError(
            f"{where}: an EM4100 (rfid) frame carries 10 hex digits; length must be 10"
        )

    baudrate = _get(table, "baudrate", int, where) or (base.baudrate if base else 9600)
    if baudrate <= 0:
        raise ConfigError(f"{where}.baudrate must be positive")
    encoding = _get(table, "encoding", str, where) or "utf-8"
    try:
        "".encode(encoding)
    except LookupError:
        raise ConfigError(f"{where}.encoding: unknown encoding {encoding!r}") from None
    return SerialDeviceConfig(
        name=name,
        match=match,
        role=role,
        spec=spec,
        baudrate=baudrate,
        rearm_after=_positive(table, "rearm_after", where, 0.5),
        duplicate_window=_positive(table, "duplicate_window", where, 1.0),
        encoding=encoding,
    )


def parse_serial_config(table: dict[str, Any], where: str) -> SerialConfig:
    """Parse the ``[serial]`` table (``where`` names the file in messages)."""
    unknown = sorted(set(table) - {"devices"})
    if unknown:
        raise ConfigError(f"{where} [serial]: unknown key(s) {', '.join(unknown)}")
    raw = table.get("devices", [])
    if not isinstance(raw, list) or not all(isinstance(d, dict) for d in raw):
        raise ConfigError(f"{where}: serial.devices must be [[serial.devices]] tables")
    devices = tuple(
        parse_device(d, f"{where} [[serial.devices]] #{i + 1}") for i, d in enumerate(raw)
    )
    names = [d.name for d in devices]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{where}: serial device name(s) used twice: {', '.join(dupes)}")
    return SerialConfig(devices)
