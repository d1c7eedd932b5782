# SPDX-License-Identifier: Apache-2.0
"""`cardd diag`'s nfc section: nfcpy, the readers libusb sees, kernel drivers, stack per reader.

Read-only: sysfs and libusb's device list, never an open (a running daemon keeps its readers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cardd.cli.diag import FAIL, INFO, WARN, Section

KERNEL_MODULES = ("pn533_usb", "pn533", "port100", "nfc")


def nfc_section(ctx: dict[str, Any]) -> Section:
    from importlib.metadata import PackageNotFoundError, version

    from cardd.readers.nfc_stack import attribute, missing_devices, scan_usb_readers

    root = Path(ctx.get("root") or "/")
    s = Section("nfc", INFO)
    config = ctx.get("config")
    devices: tuple[str, ...] = config.nfc.devices if config is not None else ()
    try:
        nfcpy: str | None = version("nfcpy")
    except PackageNotFoundError:
        nfcpy = None

    libusb: dict[str, Any] = {}
    if nfcpy is not None:
        try:
            from cardd.readers.nfc import list_usb_devices

            libusb["devices"] = len(list_usb_devices())
        except Exception as e:  # noqa: BLE001 - libusb missing or no USB here: say so
            libusb["error"] = f"{type(e).__name__}: {e}"

    modules_file = root / "proc" / "modules"
    modules = modules_file.read_text() if modules_file.exists() else ""
    kernel = [m for m in KERNEL_MODULES if f"\n{m} " in "\n" + modules]

    readers = scan_usb_readers(root)
    pcsc_names = [r["name"] for r in ctx.get("readers", []) if "name" in r]
    stacks = attribute(readers, devices, pcsc_names)
    s.details.append(
        {
            "nfcpy": nfcpy,
            "libusb": libusb,
            "configured": list(devices),
            "kernelModules": kernel,
            "readers": [rs.to_dict() for rs in stacks],
        }
    )

    if devices and nfcpy is None:
        s.worst(FAIL)
        s.next_steps.append(
            "[nfc] devices are configured but nfcpy is not installed: "
            "`pip install nfcpy` (it comes with cardd's dependencies)"
        )
    if "error" in libusb and any(d.startswith("usb:") for d in devices):
        s.worst(FAIL)
        s.next_steps.append(
            f"libusb cannot list USB devices ({libusb['error']}): install libusb-1.0-0"
        )
    for rs in stacks:
        for problem in rs.problems:
            s.worst(FAIL)
            s.next_steps.append(problem)
    for d in missing_devices(readers, devices):
        s.worst(WARN)
        s.next_steps.append(
            f"{d} is in [nfc] devices but no such reader is on USB: plug it in (`lsusb` lists it)"
        )
    if kernel and readers and not any(rs.problems for rs in stacks):
        s.worst(WARN)
        s.next_steps.append(
            f"kernel NFC modules loaded ({', '.join(kernel)}) would grab a reader plugged in "
            f"later: `modprobe -r {' '.join(kernel)}` and install udev/cardd-nfc.conf as "
            "/usr/lib/modprobe.d/cardd-nfc.conf"
        )
    udp = [d for d in devices if d.startswith("udp:")]
    parts = [
        f"nfcpy {nfcpy}" if nfcpy else "nfcpy not installed",
        f"{len(readers)} NFC reader(s) on USB",
    ]
    parts += [f"{rs.reader.model}: {rs.stack}" for rs in stacks]
    if udp:
        parts.append(f"{len(udp)} simulated (UDP) device(s)")
    if kernel:
        parts.append(f"kernel NFC modules loaded: {', '.join(kernel)}")
    s.summary = "; ".join(parts)
    return s
