# SPDX-License-Identifier: Apache-2.0
"""`cardd diag`'s serial section: ports present, configured devices found or not, and who owns
each port (a ``[[serial.devices]]`` reader, the ``[kiosk.gate]`` relay, nfcpy's ``tty:`` path).

Read-only: sysfs through pyserial's ``comports()`` and ``os.access``; it never opens a port, so a
running daemon keeps its readers.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from cardd.cli.diag import FAIL, INFO, WARN, Section

_UDEV_HINT = (
    "install cardd's udev rules (GROUP=cardd, MODE=0660) and add the service user to the cardd "
    "group; `ls -l` the device to check"
)


def _owners(config: Any) -> list[tuple[str, Any]]:
    """(who, PortMatch) for every configured serial port user."""
    out: list[tuple[str, Any]] = []
    if config is None:
        return out
    for dev in config.serial.devices:
        out.append((f"serial reader {dev.name!r} ({dev.role})", dev.match))
    gate = getattr(getattr(config, "kiosk", None), "gate", None)
    if gate is not None and getattr(gate, "driver", "none") != "none" and gate.match is not None:
        out.append(("kiosk gate relay", gate.match))
    return out


def _nfc_ttys(config: Any) -> dict[str, str]:
    """/dev path -> nfcpy device path, for nfcpy's ``tty:NAME:DRIVER`` readers."""
    nfc = getattr(config, "nfc", None)
    out = {}
    for path in getattr(nfc, "devices", ()) if nfc is not None else ():
        if path.startswith("tty:"):
            out[os.path.realpath(f"/dev/tty{path.split(':')[1]}")] = path
    return out


def serial_section(ctx: dict[str, Any]) -> Section:
    from cardd.readers.serial import list_serial_ports, matching_ports

    s = Section("serial", INFO)
    config = ctx.get("config")
    ports = list_serial_ports()
    owners = _owners(config)
    nfc = _nfc_ttys(config)
    claimed: dict[str, list[str]] = {}

    configured = []
    for who, match in owners:
        entry: dict[str, Any] = {"user": who, "match": match.describe()}
        if match.port:
            exists = os.path.exists(match.port)
            found = [os.path.realpath(match.port)] if exists else []
        else:
            found = [p.device for p in matching_ports(match, ports)]
        entry["found"] = found
        if not found:
            s.worst(WARN)
            s.next_steps.append(
                f"{who}: {match.describe()} is not plugged in (check the cable and `lsusb`)"
            )
        elif len(found) > 1:
            s.worst(FAIL)
            s.next_steps.append(
                f"{who}: {len(found)} devices match {match.describe()}; add serial_number or use a "
                "/dev/serial/by-path/ port"
            )
        for dev in found:
            claimed.setdefault(os.path.realpath(dev), []).append(who)
        configured.append(entry)
    for dev, path in nfc.items():
        claimed.setdefault(dev, []).append(f"nfcpy {path}")

    listed = []
    by_id = {os.path.realpath(p): p for p in glob.glob("/dev/serial/by-id/*")}
    links = {os.path.realpath(p): p for p in glob.glob("/dev/cardd/*")}
    for p in ports:
        real = os.path.realpath(p.device)
        entry = p.to_dict()
        entry["byId"] = by_id.get(real)
        entry["cardLink"] = links.get(real)
        entry["usedBy"] = claimed.get(real, [])
        try:
            entry["accessible"] = os.access(real, os.R_OK | os.W_OK)
        except OSError:
            entry["accessible"] = False
        if entry["usedBy"] and not entry["accessible"]:
            s.worst(FAIL)
            s.next_steps.append(
                f"{p.device} ({', '.join(entry['usedBy'])}): no access; {_UDEV_HINT}"
            )
        listed.append(entry)
    for dev, users in claimed.items():
        if len(users) > 1:
            s.worst(FAIL)
            s.next_steps.append(
                f"{dev} is configured for {' and '.join(users)}: a port belongs to one user only "
                "(cardd opens ports exclusively)"
            )
    # Configured fixed paths that comports() does not list (a pty, a by-path link to ttyS*)
    for entry in configured:
        for dev in entry["found"]:
            if not any(os.path.realpath(p.device) == dev for p in ports):
                ok = os.access(dev, os.R_OK | os.W_OK)
                if not ok:
                    s.worst(FAIL)
                    s.next_steps.append(f"{dev} ({entry['user']}): no access; {_UDEV_HINT}")
    s.details = [{"ports": listed, "configured": configured}]
    usb = sum(1 for p in ports if p.vid is not None)
    s.summary = (
        f"{len(ports)} serial port(s) ({usb} USB); {len(configured)} configured device(s), "
        f"{sum(1 for c in configured if len(c['found']) == 1)} found"
    )
    return s


def print_ports(console: Any, section: Section) -> None:
    """The human form: one line per port with its USB identity and owner."""
    from rich.markup import escape

    for d in section.details:
        for p in d.get("ports", []):
            ident = p["usb"] or "-"
            serial = f" serial {p['serialNumber']}" if p.get("serialNumber") else ""
            owner = ", ".join(p["usedBy"]) or "not used by cardd"
            line = f"    {p['device']}: {ident}{serial} {p.get('product') or ''} -> {owner}"
            console.print(escape(line), highlight=False, soft_wrap=True)
        for c in d.get("configured", []):
            state = ", ".join(c["found"]) if c["found"] else "NOT FOUND"
            console.print(
                escape(f"    {c['user']}: {c['match']} -> {state}"), highlight=False, soft_wrap=True
            )
