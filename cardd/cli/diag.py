# SPDX-License-Identifier: Apache-2.0
"""`cardd diag`: sections that fail independently, each ending with what to do next.

Like ykman's diagnostics, every section runs in its own ``try``: one broken subsystem never
hides the others. Personal data never appears here; ATRs and reader names do.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardd import __version__

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"


@dataclass
class Section:
    name: str
    status: str = OK
    summary: str = ""
    details: list[dict[str, Any]] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    def worst(self, status: str) -> None:
        order = [INFO, OK, WARN, FAIL]
        if order.index(status) > order.index(self.status):
            self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "summary": self.summary,
            "details": self.details,
            "nextSteps": self.next_steps,
        }


def _versions(_ctx: dict[str, Any]) -> Section:
    s = Section("versions", INFO)
    from importlib.metadata import PackageNotFoundError, version

    mods: dict[str, str | None] = {}
    for dist in ("pyscard", "aiohttp", "cryptography", "nfcpy", "pyserial"):
        try:
            mods[dist] = version(dist)
        except PackageNotFoundError:
            mods[dist] = None
    s.details.append({"cardd": __version__, "python": platform.python_version(), "os": platform.platform(), **mods})
    s.summary = f"cardd {__version__}, Python {platform.python_version()}, pyscard {mods['pyscard']}"
    return s


def _config(ctx: dict[str, Any]) -> Section:
    from cardd.config import candidate_paths, load_config

    s = Section("config")
    config = load_config(ctx["config_path"])  # a ConfigError lands in the section's failure
    ctx["config"] = config
    s.summary = f"{config.source}" if config.source else "no configuration file; using defaults"
    s.details.append(
        {
            "file": str(config.source) if config.source else None,
            "searched": [str(p) for p in candidate_paths()],
            "api": f"{config.api.host}:{config.api.port}",
            "origins": [p.origin for p in config.api.origins],
            "stateDir": str(config.state_dir),
        }
    )
    if not config.api.origins:
        s.worst(INFO)
        s.next_steps.append("no web origins are allowed yet; add [api.origins.\"https://...\"] to use cardd from a page")
    return s


def _pcsc(ctx: dict[str, Any]) -> Section:
    from cardd.errors import CardError
    from cardd.readers.identify import identify
    from cardd.readers.pcsc import PcscContext

    s = Section("pcsc")
    sock = os.environ.get("PCSCLITE_CSOCK_NAME", "/run/pcscd/pcscd.comm")
    try:
        pcsc = PcscContext()
    except CardError as e:
        s.status = FAIL
        s.summary = f"pcscd not reachable: {e.message}"
        s.details.append({"socket": sock, "socketExists": os.path.exists(sock)})
        s.next_steps.append(
            "start pcscd: `systemctl start pcscd.socket` (or run `pcscd` as root); "
            "then check `journalctl -u pcscd`"
        )
        ctx["readers"] = []
        return s
    try:
        statuses = pcsc.statuses(pcsc.list_readers())
    finally:
        pcsc.release()
    config = ctx.get("config")
    ignored = set(config.readers.ignore) if config else set()
    readers = []
    for st in statuses:
        ident = identify(st.atr) if st.atr else None
        entry: dict[str, Any] = {
            "name": st.name,
            "backend": "pcsc",
            "cardPresent": st.card_present,
            "inUse": st.in_use,
            "ignored": st.name in ignored,
        }
        if ident:
            entry["card"] = ident.to_dict()
        readers.append(entry)
    ctx["readers"] = readers
    s.details = readers
    s.summary = f"pcscd reachable ({sock}); {len(readers)} reader(s), {sum(r['cardPresent'] for r in readers)} card(s)"
    if not readers:
        s.worst(WARN)
        s.next_steps.append(
            "no readers: plug one in; for USB readers check `lsusb` and that the CCID driver "
            "knows it; a reader claimed by the kernel's pn533 driver needs `modprobe -r pn533_usb pn533 nfc`"
        )
    return s


def _vpcd(_ctx: dict[str, Any]) -> Section:
    s = Section("vpcd", INFO)
    driver = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
    conf = Path("/etc/reader.conf.d/vpcd")
    listening = []
    for port in (35963, 35964):
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                listening.append(port)
    s.details.append({"driver": driver.exists(), "readerConf": conf.exists(), "listeningPorts": listening})
    if driver.exists() or conf.exists():
        s.status = WARN
        s.summary = "the vpcd virtual reader driver is installed (simulation only)"
        s.next_steps.append(
            "vpcd listens on all interfaces: anyone who reaches its ports can insert a card. "
            "On kiosks and desks: apt-get remove vsmartcard-vpcd"
        )
    else:
        s.summary = "vpcd not installed (right for production machines)"
    return s


def _nfc(ctx: dict[str, Any]) -> Section:
    # nfcpy, the readers on USB, kernel NFC drivers, and which stack each reader belongs to.
    from cardd.cli.diag_nfc import nfc_section

    return nfc_section(ctx)


def _serial(ctx: dict[str, Any]) -> Section:
    # Ports by VID/PID/serial, configured serial readers and gate found or not, who owns each.
    from cardd.cli.diag_serial import serial_section

    return serial_section(ctx)


def _permissions(ctx: dict[str, Any]) -> Section:
    from cardd.config import default_state_dir

    s = Section("permissions")
    config = ctx.get("config")
    state_dir = config.state_dir if config else default_state_dir()
    token = (config.api.token_file if config and config.api.token_file else state_dir / "token")
    info: dict[str, Any] = {"user": _user(), "stateDir": str(state_dir)}
    if state_dir.exists():
        info["stateDirWritable"] = os.access(state_dir, os.W_OK)
        if not info["stateDirWritable"]:
            s.worst(FAIL)
            s.next_steps.append(f"{state_dir} is not writable by {info['user']}: chown it to the cardd user")
    else:
        info["stateDirWritable"] = None
        s.worst(INFO)
    if token.exists():
        mode = stat.S_IMODE(token.stat().st_mode)
        info["tokenFileMode"] = oct(mode)
        if mode & 0o077:
            s.worst(FAIL)
            s.next_steps.append(f"{token} is readable by others: chmod 600 {token}")
    if config and config.source:
        mode = stat.S_IMODE(config.source.stat().st_mode)
        info["configMode"] = oct(mode)
        if mode & 0o002:
            s.worst(FAIL)
            s.next_steps.append(f"{config.source} is world-writable: anyone could allow their web site; chmod o-w")
    s.details.append(info)
    s.summary = "ok" if s.status == OK else "problems found"
    return s


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())


def _install(ctx: dict[str, Any]) -> Section:
    from cardd.cli.diag_system import install_section

    return install_section(ctx)


def _devices(ctx: dict[str, Any]) -> Section:
    from cardd.cli.diag_system import devices_section

    return devices_section(ctx)


def _service(ctx: dict[str, Any]) -> Section:
    from cardd.cli.diag_system import service_section

    return service_section(ctx)


SECTIONS: list[tuple[str, Callable[[dict[str, Any]], Section]]] = [
    ("versions", _versions),
    ("config", _config),
    ("pcsc", _pcsc),
    ("vpcd", _vpcd),
    ("nfc", _nfc),
    ("serial", _serial),
    ("permissions", _permissions),
    ("install", _install),
    ("devices", _devices),
    ("service", _service),
]


def collect(config_path: str | None) -> dict[str, Section]:
    ctx: dict[str, Any] = {"config_path": config_path}
    out: dict[str, Section] = {}
    for name, fn in SECTIONS:
        try:
            out[name] = fn(ctx)
        except Exception as e:  # noqa: BLE001 - a failing section must not hide the others
            msg = getattr(e, "message", None) or str(e) or type(e).__name__
            sec = Section(name, FAIL, f"{name} not accessible: {msg}")
            hint = getattr(e, "hint", "")
            if hint:
                sec.next_steps.append(hint)
            out[name] = sec
    return out


def run_diag(config_path: str | None, *, as_json: bool) -> int:
    sections = collect(config_path)
    failed = any(s.status == FAIL for s in sections.values())
    if as_json:
        print(json.dumps({"ok": not failed, "sections": {k: v.to_dict() for k, v in sections.items()}},
                         ensure_ascii=False, indent=2))
        return 1 if failed else 0
    from rich.console import Console
    from rich.markup import escape

    console = Console(width=None if sys.stdout.isatty() else 200)
    colour = {OK: "green", WARN: "yellow", FAIL: "red", INFO: "blue"}
    for name, sec in sections.items():
        console.print(
            f"[bold]{name:<12}[/bold] [{colour[sec.status]}]{sec.status.upper():<4}[/] {escape(sec.summary)}",
            highlight=False, soft_wrap=True,
        )
        for r in sec.details if name == "pcsc" else []:
            if "name" not in r:
                continue
            card = r.get("card")
            line = f"    {r['name']}: " + (f"{card['label']}  ATR {card['atr']['raw']}" if card else "no card")
            console.print(escape(line), highlight=False, soft_wrap=True)
        if name == "serial":
            from cardd.cli.diag_serial import print_ports

            print_ports(console, sec)
        for step in sec.next_steps:
            console.print(f"    [dim]next step:[/dim] {escape(step)}", highlight=False, soft_wrap=True)
    sys.stdout.flush()
    return 1 if failed else 0
