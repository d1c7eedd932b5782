# SPDX-License-Identifier: Apache-2.0
"""`cardd diag`'s stack per reader, on sysfs trees built in the test."""

from __future__ import annotations

import os
from pathlib import Path

from cardd.cli.diag import FAIL, WARN
from cardd.cli.diag_nfc import nfc_section
from cardd.config import parse_config
from cardd.readers.nfc_stack import UsbReader, attribute, missing_devices, scan_usb_readers


def usb_device(
    root: Path,
    name: str,
    vid: str,
    pid: str,
    bus: int,
    dev: int,
    interfaces: list[tuple[str, str | None]],
) -> None:
    """A device and its interfaces (class, bound driver) the way sysfs shows them."""
    devices = root / "sys" / "bus" / "usb" / "devices"
    drivers = root / "sys" / "bus" / "usb" / "drivers"
    d = devices / name
    d.mkdir(parents=True)
    for f, v in (("idVendor", vid), ("idProduct", pid), ("busnum", str(bus)), ("devnum", str(dev))):
        (d / f).write_text(v + "\n")
    for i, (cls, driver) in enumerate(interfaces):
        intf = devices / f"{name}:1.{i}"
        intf.mkdir()
        (intf / "bInterfaceClass").write_text(cls + "\n")
        if driver:
            (drivers / driver).mkdir(parents=True, exist_ok=True)
            os.symlink(drivers / driver, intf / "driver")


def test_scan_reads_ids_drivers_and_ccid(tmp_path):
    usb_device(tmp_path, "1-2", "054c", "06c3", 1, 4, [("ff", "port100")])
    usb_device(tmp_path, "1-3", "072f", "2200", 1, 5, [("0b", "usbfs")])
    usb_device(tmp_path, "1-4", "1d6b", "0002", 1, 1, [("09", "hub")])  # not a reader
    readers = scan_usb_readers(tmp_path)
    assert readers == [
        UsbReader("054c:06c3", "Sony RC-S380", 1, 4, ("port100",), False),
        UsbReader("072f:2200", "ACS ACR122U", 1, 5, ("usbfs",), True),
    ]


def reader(usb_id: str, drivers: tuple[str, ...] = (), ccid: bool = False) -> UsbReader:
    return UsbReader(usb_id, "model", 1, 4, drivers, ccid)


def test_stack_per_reader():
    rcs380, acr122 = reader("054c:06c3"), reader("072f:2200", ("usbfs",), ccid=True)
    [a, b] = attribute([rcs380, acr122], ["usb:054c:06c3"], ["ACS ACR122U PICC Interface 00 00"])
    assert (a.stack, a.problems) == ("nfcpy", [])
    assert (b.stack, b.problems) == ("pcscd", [])
    [by_bus] = attribute([rcs380], ["usb:001:004"], [])
    assert by_bus.stack == "nfcpy"
    [unused] = attribute([rcs380], [], [])
    assert unused.stack == "none" and "usb:054c:06c3" in unused.notes[0]


def test_two_stacks_and_kernel_drivers_are_problems_with_fixes():
    [both] = attribute(
        [reader("072f:2200", ccid=True)], ["usb:072f:2200"], ["ACS ACR122U PICC Interface 00 00"]
    )
    assert both.stack == "nfcpy" and "one stack" in both.problems[0]
    [held] = attribute([reader("054c:06c3", ("port100",))], ["usb:054c:06c3"], [])
    assert "EBUSY" in held.problems[0] and "modprobe -r port100" in held.problems[0]
    [kernel] = attribute([reader("072f:2200", ("pn533_usb",))], [], [])
    assert kernel.stack == "kernel (pn533_usb)" and "cardd-nfc.conf" in kernel.problems[0]


def test_missing_configured_devices():
    assert missing_devices(
        [reader("054c:06c3")], ["usb:054c:06c3", "usb:04e6:5591", "udp:localhost:1"]
    ) == ["usb:04e6:5591"]


def test_diag_section_on_a_tree(tmp_path):
    usb_device(tmp_path, "1-2", "054c", "06c3", 1, 4, [("ff", "port100")])
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "modules").write_text("port100 20480 0 - Live 0x0\nnfc 1 0 - Live 0\n")
    config = parse_config(
        {"nfc": {"devices": ["usb:054c:06c3", "usb:04e6:5591", "udp:localhost:54321"]}}
    )
    s = nfc_section({"root": str(tmp_path), "config": config, "readers": []})
    assert s.status == FAIL
    detail = s.details[0]
    assert detail["kernelModules"] == ["port100", "nfc"]
    assert [(r["model"], r["stack"]) for r in detail["readers"]] == [("Sony RC-S380", "nfcpy")]
    assert any("modprobe -r port100" in step for step in s.next_steps)
    assert any("usb:04e6:5591" in step for step in s.next_steps)
    assert "1 simulated (UDP)" in s.summary and detail["nfcpy"]


def test_diag_section_without_readers_or_config(tmp_path):
    s = nfc_section({"root": str(tmp_path), "config": None})
    assert s.status not in (WARN, FAIL) and "0 NFC reader(s)" in s.summary
