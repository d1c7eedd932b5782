# SPDX-License-Identifier: Apache-2.0
"""Which stack each USB NFC reader belongs to, for `cardd diag` (no nfcpy import).

A reader belongs to exactly one stack (contactless.md §8): pcscd (through the CCID driver),
nfcpy (only when ``[nfc] devices`` lists it), or, unwanted, a kernel NFC driver (``pn533_usb``,
``port100``) that claimed it first. Two stacks on one reader means the second one gets EBUSY.
Everything is read from sysfs (under ``root``, so tests can give a tree of their own); nothing
is opened, so diag never disturbs a running daemon.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: (vendor, product) -> model; nfcpy's driver table plus PC/SC-only readers often met
MODELS: dict[str, str] = {
    "054c:0193": "Sony PN531",
    "04cc:0531": "Philips/NXP PN531",
    "04cc:2533": "NXP PN533",
    "04e6:5591": "SCM SCL3711",
    "04e6:5593": "SCM SCL3712",
    "054c:02e1": "Sony RC-S330/360/370",
    "054c:06c1": "Sony RC-S380",
    "054c:06c3": "Sony RC-S380",
    "072f:2200": "ACS ACR122U",
    "072f:223b": "ACS ACR1252U",
}
#: readers nfcpy has a driver for (nfcpy's usb_device_map); the others are PC/SC only
NFCPY_CAPABLE = frozenset(MODELS) - {"072f:223b"}
#: what the reader's PC/SC name contains when pcscd has it
PCSC_NAME_HINTS: dict[str, tuple[str, ...]] = {
    "072f:2200": ("ACR122",),
    "072f:223b": ("ACR1252",),
    "054c:06c1": ("RC-S380", "PaSoRi"),
    "054c:06c3": ("RC-S380", "PaSoRi"),
    "04e6:5591": ("SCL3711",),
    "04e6:5593": ("SCL3712",),
}
KERNEL_NFC_DRIVERS = frozenset({"pn533_usb", "port100"})
_CCID_CLASS = "0b"


@dataclass(frozen=True)
class UsbReader:
    usb_id: str
    model: str
    bus: int
    address: int
    #: drivers bound to its interfaces ("usbfs" = a program claimed it through libusb)
    drivers: tuple[str, ...] = ()
    #: it has a smart-card (CCID) interface, so the CCID driver offers it to pcscd
    ccid: bool = False


@dataclass
class ReaderStack:
    reader: UsbReader
    stack: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        r = self.reader
        return {
            "usb": r.usb_id,
            "model": r.model,
            "busDevice": f"{r.bus:03d}:{r.address:03d}",
            "drivers": list(r.drivers),
            "ccid": r.ccid,
            "stack": self.stack,
            "problems": self.problems,
            "notes": self.notes,
        }


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def scan_usb_readers(root: Path = Path("/")) -> list[UsbReader]:
    """Known NFC readers on USB, from ``/sys/bus/usb/devices``."""
    base = root / "sys" / "bus" / "usb" / "devices"
    out = []
    for dev in sorted(base.glob("*")) if base.is_dir() else []:
        vid, pid = _read(dev / "idVendor"), _read(dev / "idProduct")
        usb_id = f"{vid}:{pid}".lower()
        if usb_id not in MODELS:
            continue
        drivers: list[str] = []
        ccid = False
        for intf in sorted(dev.parent.glob(dev.name + ":*")):
            if _read(intf / "bInterfaceClass") == _CCID_CLASS:
                ccid = True
            link = intf / "driver"
            if link.exists():
                drivers.append(link.resolve().name)
        out.append(
            UsbReader(
                usb_id,
                MODELS[usb_id],
                int(_read(dev / "busnum") or 0),
                int(_read(dev / "devnum") or 0),
                tuple(drivers),
                ccid,
            )
        )
    return out


def configured_for(reader: UsbReader, nfc_devices: Iterable[str]) -> str | None:
    """The ``[nfc] devices`` entry that opens this reader, if any."""
    for path in nfc_devices:
        parts = path.lower().split(":")
        if parts[0] != "usb" or len(parts) != 3:
            continue
        if len(parts[1]) == 4 and f"{parts[1]}:{parts[2]}" == reader.usb_id:
            return path
        if parts[1].isdigit() and (int(parts[1]), int(parts[2])) == (reader.bus, reader.address):
            return path
    return None


def attribute(
    readers: Iterable[UsbReader], nfc_devices: Iterable[str], pcsc_names: Iterable[str]
) -> list[ReaderStack]:
    """Each reader's stack, with problems (two stacks, a kernel driver in the way) and fixes."""
    devices = list(nfc_devices)
    names = list(pcsc_names)
    out = []
    for r in readers:
        kernel = [d for d in r.drivers if d in KERNEL_NFC_DRIVERS]
        in_pcsc = [n for n in names if any(h in n for h in PCSC_NAME_HINTS.get(r.usb_id, ()))]
        entry = configured_for(r, devices)
        if entry is not None:
            rs = ReaderStack(r, "nfcpy")
            if in_pcsc:
                rs.problems.append(
                    f"{r.model} is listed in [nfc] devices ({entry}) and pcscd has it too "
                    f"({in_pcsc[0]}): a reader belongs to one stack. Remove it from [nfc] "
                    "devices to use it through pcscd, or keep pcscd off it"
                )
            if kernel:
                rs.problems.append(
                    f"the kernel driver {kernel[0]} holds {r.model}, so nfcpy gets EBUSY: "
                    f"`modprobe -r {kernel[0]}` and install udev/cardd-nfc.conf as "
                    "/usr/lib/modprobe.d/cardd-nfc.conf"
                )
            if "usbfs" in r.drivers:
                rs.notes.append(
                    "claimed by a program through libusb (a running cardd serve, "
                    "or another nfcpy program)"
                )
        elif kernel:
            rs = ReaderStack(r, f"kernel ({kernel[0]})")
            rs.problems.append(
                f"the kernel driver {kernel[0]} holds {r.model}: neither pcscd nor nfcpy can use "
                f"it. `modprobe -r {kernel[0]}` and install udev/cardd-nfc.conf as "
                "/usr/lib/modprobe.d/cardd-nfc.conf"
            )
        elif in_pcsc or r.ccid:
            rs = ReaderStack(r, "pcscd")
            if not in_pcsc:
                rs.notes.append(
                    "has a CCID interface but pcscd lists no reader for it: is "
                    "pcscd running, and does the CCID driver support it?"
                )
        else:
            rs = ReaderStack(r, "none")
            if r.usb_id in NFCPY_CAPABLE:
                rs.notes.append(
                    f'not used: add "usb:{r.usb_id}" to [nfc] devices to take '
                    "taps from it through nfcpy"
                )
        out.append(rs)
    return out


def missing_devices(readers: Iterable[UsbReader], nfc_devices: Iterable[str]) -> list[str]:
    """Configured USB devices no reader on the bus matches."""
    found = list(readers)
    return [
        d
        for d in nfc_devices
        if d.startswith("usb:") and not any(configured_for(r, [d]) for r in found)
    ]
