# SPDX-License-Identifier: Apache-2.0
"""The ``[nfc]`` configuration section: which readers nfcpy may open, what it polls for.

Pure (no nfcpy import), so ``cardd/config.py`` can parse the section without loading libusb.

A reader belongs to exactly one stack (contactless.md §8): a USB reader used through pcscd must
never also be opened by nfcpy, because both claim the same USB interface and the second one gets
"Device or resource busy". cardd therefore opens through nfcpy *only* the devices listed here, and
only fully qualified paths: ``usb`` or ``usb:054c`` alone would let nfcpy grab the first reader it
finds, which may be the one pcscd is meant to have. An empty list (the default) means cardd never
loads nfcpy at all.

Device paths (nfcpy's syntax):

- ``usb:VVVV:PPPP``  vendor and product ID in hex, e.g. ``usb:054c:06c3`` (Sony RC-S380). The
  first such reader; the name stays the same across re-plugging.
- ``usb:BBB:DDD``    bus and device number in decimal, as ``lsusb`` shows them (they change when
  the reader is re-plugged: use it only to tell two identical readers apart).
- ``tty:NAME:DRIVER`` a serial PN532/Arygon reader, e.g. ``tty:USB0:pn532`` (``/dev/ttyUSB0``).
- ``udp:HOST:PORT``  nfcpy's simulated RF over UDP (tests and demos, see cardd.sim.nfc_card). The
  host must be a loopback address: cardd never sends tag traffic off the machine.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from cardd.errors import ConfigError

#: technologies nfcpy polls for (bit rate + type): ISO 14443 A and B at 106 kbit/s, FeliCa
POLL_TARGETS = ("106A", "106B", "212F", "424F")
DEFAULT_TARGETS = ("106A", "106B", "212F")
DEFAULT_DEBOUNCE = 0.5

_USB_VID_PID = re.compile(r"^usb:[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$")
_USB_BUS_DEV = re.compile(r"^usb:[0-9]{1,3}:[0-9]{1,3}$")
_TTY = re.compile(r"^tty:[A-Za-z0-9_.-]+:(pn532|arygon)$")
_UDP = re.compile(r"^udp:(?P<host>[^:]+):(?P<port>[0-9]{1,5})$")
_LOOPBACK_NAMES = ("localhost", "ip6-localhost")


@dataclass(frozen=True)
class NfcConfig:
    #: nfcpy device paths cardd opens (each reader in exactly one stack: these are nfcpy's)
    devices: tuple[str, ...] = ()
    #: technologies polled, in order: 106A (ISO 14443 A), 106B (B), 212F / 424F (FeliCa)
    targets: tuple[str, ...] = DEFAULT_TARGETS
    #: a tag that leaves and comes back within this many seconds is the same tap (kiosk.md §5)
    debounce: float = DEFAULT_DEBOUNCE


def check_device_path(path: str) -> str:
    """``path`` if it is a fully qualified nfcpy device path cardd accepts.

    :raises ConfigError: with the accepted forms.
    """
    if _USB_VID_PID.match(path) or _USB_BUS_DEV.match(path) or _TTY.match(path):
        return path
    m = _UDP.match(path)
    if m:
        host, port = m["host"], int(m["port"])
        if not 0 < port < 65536:
            raise ConfigError(f"nfc device {path!r}: port {port} out of range")
        if not _is_loopback(host):
            raise ConfigError(
                f"nfc device {path!r}: the UDP simulation only talks to loopback hosts "
                "(localhost or 127.x.x.x)"
            )
        return path
    raise ConfigError(
        f"nfc device {path!r} is not a fully qualified nfcpy path: use usb:VVVV:PPPP "
        "(e.g. usb:054c:06c3), usb:BBB:DDD, tty:USB0:pn532 or udp:localhost:PORT. "
        "Partial paths such as 'usb' are refused: nfcpy would open the first reader it finds, "
        "which may belong to pcscd"
    )


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_nfc_config(table: dict[str, Any], where: str) -> NfcConfig:
    """The ``[nfc]`` table (already known to be a table); ``where`` names it in messages."""
    unknown = sorted(set(table) - {"devices", "targets", "debounce"})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")

    devices = table.get("devices", [])
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
        raise ConfigError(f"{where}: devices must be a list of nfcpy paths, got {devices!r}")
    seen: set[str] = set()
    for d in devices:
        key = d.lower()
        if key in seen:
            raise ConfigError(f"{where}: device {d!r} is listed twice")
        seen.add(key)
        check_device_path(d)

    targets = table.get("targets", list(DEFAULT_TARGETS))
    if not isinstance(targets, list) or not targets:
        raise ConfigError(
            f"{where}: targets must be a non-empty list, e.g. {list(DEFAULT_TARGETS)}"
        )
    bad = [t for t in targets if t not in POLL_TARGETS]
    if bad:
        raise ConfigError(
            f"{where}: unknown poll target(s) {', '.join(map(repr, bad))}; "
            f"use {', '.join(POLL_TARGETS)}"
        )
    if len(set(targets)) != len(targets):
        raise ConfigError(f"{where}: a poll target is listed twice")

    debounce = table.get("debounce", DEFAULT_DEBOUNCE)
    if isinstance(debounce, bool) or not isinstance(debounce, (int, float)):
        raise ConfigError(f"{where}: debounce must be a number of seconds, got {debounce!r}")
    if not 0 <= debounce <= 10:
        raise ConfigError(f"{where}: debounce must be between 0 and 10 seconds")
    return NfcConfig(devices=tuple(devices), targets=tuple(targets), debounce=float(debounce))
