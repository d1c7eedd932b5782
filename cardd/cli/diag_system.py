# SPDX-License-Identifier: Apache-2.0
"""`cardd diag` sections for a production install: files, user, devices, kernel, service.

What ``scripts/install-system.sh`` puts in place, checked on the running machine: the systemd
unit, the sysusers entry and the ``cardd`` user and group, the udev rules and the modprobe file,
the polkit rule; kernel NFC drivers that hold readers pcscd or nfcpy need; the ``/dev/cardd``
links the configuration names; whether the service runs and what it last said (STATUS=).

A machine without any of it is a development machine: that is reported as info, not a failure.
Every check takes ``ctx["root"]`` (default ``/``) so the tests can point it at a scratch install.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from cardd.cli.diag import FAIL, INFO, OK, WARN, Section

SERVICE_USER = "cardd"
#: installed file -> the places it may be (package, /lib merged-usr alias, local override)
INSTALLED = {
    "unit": ("usr/lib/systemd/system/cardd.service", "lib/systemd/system/cardd.service",
             "etc/systemd/system/cardd.service"),
    "sysusers": ("usr/lib/sysusers.d/cardd.conf", "etc/sysusers.d/cardd.conf"),
    "udev": ("usr/lib/udev/rules.d/70-cardd.rules", "lib/udev/rules.d/70-cardd.rules",
             "etc/udev/rules.d/70-cardd.rules"),
    "modprobe": ("usr/lib/modprobe.d/cardd-nfc.conf", "lib/modprobe.d/cardd-nfc.conf",
                 "etc/modprobe.d/cardd-nfc.conf"),
    "polkit": ("usr/share/polkit-1/rules.d/50-cardd-pcsc.rules",
               "etc/polkit-1/rules.d/50-cardd-pcsc.rules"),
}
#: kernel drivers that claim readers cardd reaches through pcscd or nfcpy
NFC_MODULES = ("pn533_usb", "pn533", "port100", "nfc")


def _root(ctx: dict[str, Any]) -> Path:
    return Path(ctx.get("root") or "/")


def find_installed(root: Path, what: str) -> Path | None:
    for rel in INSTALLED[what]:
        if (root / rel).is_file():
            return root / rel
    return None


def _db_entry(root: Path, db: str, name: str) -> list[str] | None:
    """The ``name`` line of /etc/passwd or /etc/group under ``root`` (NSS on the live system)."""
    if root == Path("/"):
        import grp
        import pwd

        try:
            if db == "passwd":
                pw = pwd.getpwnam(name)
                return [pw.pw_name, "x", str(pw.pw_uid), str(pw.pw_gid), pw.pw_gecos,
                        pw.pw_dir, pw.pw_shell]
            gr = grp.getgrnam(name)
            return [gr.gr_name, "x", str(gr.gr_gid), ",".join(gr.gr_mem)]
        except KeyError:
            return None
    try:
        lines = (root / "etc" / db).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def install_section(ctx: dict[str, Any]) -> Section:
    root = _root(ctx)
    s = Section("install")
    found = {what: find_installed(root, what) for what in INSTALLED}
    user = _db_entry(root, "passwd", SERVICE_USER)
    group = _db_entry(root, "group", SERVICE_USER)
    ctx["cardd_gid"] = int(group[2]) if group else None
    s.details.append({
        "files": {k: str(v) if v else None for k, v in found.items()},
        "user": {"uid": int(user[2]), "home": user[5]} if user else None,
        "group": {"gid": int(group[2])} if group else None,
    })
    if not any(found.values()) and user is None:
        s.status = INFO
        s.summary = "not installed as a system service (fine for development)"
        s.next_steps.append("production machines: sudo scripts/install-system.sh (see README, "
                            "\"Production install\")")
        return s
    missing = [k for k, v in found.items() if v is None]
    for what in missing:
        if what == "polkit":
            # only read where pcsc-lite is built with polkit (not Debian 12): a note, not a fault
            s.worst(INFO)
            s.next_steps.append("the polkit rule for pcscd is not installed; needed only where "
                                "pcsc-lite uses polkit: re-run scripts/install-system.sh")
        else:
            s.worst(WARN if what == "modprobe" else FAIL)
            s.next_steps.append(f"{INSTALLED[what][0]} is missing: re-run scripts/install-system.sh")
    if user is None or group is None:
        s.worst(FAIL)
        s.next_steps.append("no cardd user/group: `systemd-sysusers` (reads "
                            "/usr/lib/sysusers.d/cardd.conf), then `systemctl restart cardd`")
    elif found["udev"] is not None:
        if 'GROUP="cardd"' not in found["udev"].read_text(errors="replace"):
            s.worst(WARN)
            s.next_steps.append(f"{found['udev']} does not give group cardd any device: "
                                "reinstall it from udev/70-cardd.rules")
    s.summary = ("installed: unit, user, udev rules, modprobe file" if s.status == OK
                 else f"incomplete install ({', '.join(missing) or 'user/group'} missing)")
    return s


def _dev_paths(value: Any) -> list[str]:
    """Every configured path under /dev/cardd, wherever in the configuration it sits."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [p for f in dataclasses.fields(value) for p in _dev_paths(getattr(value, f.name))]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _dev_paths(v)]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [p for v in value for p in _dev_paths(v)]
    if isinstance(value, (str, Path)) and str(value).startswith("/dev/cardd/"):
        return [str(value)]
    return []


def devices_section(ctx: dict[str, Any]) -> Section:
    root = _root(ctx)
    s = Section("devices")
    modules_file = root / "proc" / "modules"
    modules = modules_file.read_text() if modules_file.exists() else ""
    loaded = [m for m in NFC_MODULES if f"\n{m} " in "\n" + modules]
    blacklisted = find_installed(root, "modprobe") is not None
    configured = sorted(set(_dev_paths(ctx.get("config"))))
    gid = ctx.get("cardd_gid")
    links = []
    for path in configured:
        entry: dict[str, Any] = {"path": path}
        target = root / path.lstrip("/")
        if not target.exists():
            entry["present"] = False
            s.worst(FAIL)
            s.next_steps.append(
                f"{path} (configured) is missing: plug the device in; check `udevadm info "
                "--attribute-walk` for its VID/PID and that /usr/lib/udev/rules.d/70-cardd.rules "
                "lists it, then `udevadm control --reload && udevadm trigger`")
        else:
            st = target.stat()
            entry.update(present=True, device=os.path.realpath(target),
                         mode=oct(stat.S_IMODE(st.st_mode)), gid=st.st_gid)
            if gid is not None and (st.st_gid != gid or not st.st_mode & stat.S_IRGRP):
                s.worst(FAIL)
                s.next_steps.append(f"{path} is not readable by group cardd: reload the udev "
                                    "rules (`udevadm control --reload && udevadm trigger`)")
        links.append(entry)
    present = sorted(str(p) for p in (root / "dev" / "cardd").glob("*")) \
        if (root / "dev" / "cardd").is_dir() else []
    s.details.append({"kernelNfcModules": loaded, "blacklistInstalled": blacklisted,
                      "configured": links, "links": present})
    if loaded:
        s.worst(WARN)
        fix = f"`modprobe -r {' '.join(loaded)}`"
        s.next_steps.append(
            f"kernel NFC drivers loaded ({', '.join(loaded)}) can hold readers pcscd or nfcpy "
            f"need: {fix}" + ("" if blacklisted else " and install udev/cardd-nfc.conf into "
                              "/usr/lib/modprobe.d/ so they stay away after a reboot"))
    s.summary = (f"{len(configured)} configured /dev/cardd device(s), {len(present)} link(s); "
                 + (f"kernel NFC drivers loaded: {', '.join(loaded)}" if loaded
                    else "no kernel NFC driver loaded"))
    return s


def _systemctl(*args: str) -> tuple[int, str]:
    try:
        p = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 1, str(e)
    return p.returncode, p.stdout.strip()


def service_section(ctx: dict[str, Any]) -> Section:
    root = _root(ctx)
    s = Section("service")
    unit = find_installed(root, "unit")
    if root != Path("/") or not Path("/run/systemd/system").is_dir() or not shutil.which("systemctl"):
        s.status = INFO
        s.summary = "systemd is not running here; service state not checked"
        s.details.append({"unit": str(unit) if unit else None})
        return s
    if unit is None:
        s.status = INFO
        s.summary = "cardd.service not installed"
        return s
    _, shown = _systemctl("show", "cardd.service", "--property=ActiveState,SubState,"
                          "UnitFileState,StatusText,NRestarts,MainPID")
    props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    s.details.append(props)
    active, enabled = props.get("ActiveState", "?"), props.get("UnitFileState", "?")
    status_text = props.get("StatusText", "")
    s.summary = f"{active} ({props.get('SubState', '?')}), {enabled}" + (
        f": {status_text}" if status_text else "")
    if active != "active":
        s.worst(FAIL)
        s.next_steps.append("`systemctl status cardd` and `journalctl -u cardd -b` say why; "
                            "`systemctl enable --now cardd` starts it")
    elif "down" in status_text:
        s.worst(WARN)
        s.next_steps.append("cardd runs but a backend is down: `systemctl status pcscd.socket "
                            "pcscd` and `journalctl -u pcscd`")
    if enabled not in ("enabled", "static") and active == "active":
        s.worst(WARN)
        s.next_steps.append("not enabled: it will not start after a reboot; `systemctl enable cardd`")
    restarts = props.get("NRestarts", "0")
    if restarts.isdigit() and int(restarts) > 0:
        s.worst(WARN)
        s.next_steps.append(f"systemd restarted cardd {restarts} time(s) (crash or watchdog): "
                            "`journalctl -u cardd -b` shows the reason")
    return s


__all__ = ["FAIL", "OK", "devices_section", "install_section", "service_section"]
