# SPDX-License-Identifier: Apache-2.0
"""Packaging and the production install: wheel and sdist, install/uninstall, udev, modprobe, polkit.

systemd is not PID 1 in CI containers (``ps -p 1``), so the install is tested into a scratch root
(``install-system.sh --root``): files, the cardd user made by the real ``systemd-sysusers``, the
real venv, the installed unit verified by ``systemd-analyze``; then uninstall leaves nothing.
Enabling and starting the service on a live systemd is not exercised here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from cardd.cli.diag import FAIL, INFO, OK, WARN

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "udev" / "70-cardd.rules"
MODPROBE = REPO / "udev" / "cardd-nfc.conf"
POLKIT = REPO / "systemd" / "polkit" / "50-cardd-pcsc.rules"

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespace, chown)")


# -- wheel and sdist --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (out / "build.log").write_text(p.stdout + p.stderr)
    return {"wheel": next(out.glob("cardd-*.whl")), "sdist": next(out.glob("cardd-*.tar.gz")),
            "log": out / "build.log"}


def test_build_is_clean(dists):
    # setuptools' own notes about byte-compiling are not ours; anything else warned is
    lines = [ln for ln in dists["log"].read_text().splitlines()
             if re.search(r"warning|deprecat", ln, re.IGNORECASE) and "byte-compiling is disabled" not in ln]
    assert lines == []


def test_wheel_carries_every_package_file(dists):
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    source = {str(p.relative_to(REPO)) for p in (REPO / "cardd").rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert source - names == set()  # static pages, data, migrations: whatever is in the tree
    assert "cardd/py.typed" in names
    assert {"cardd/rfid/migrations/sqlite.py", "cardd/rfid/migrations/postgresql.py"} <= names
    if (REPO / "cardd" / "api" / "static").is_dir():
        assert any(n.startswith("cardd/api/static/") for n in names)
    assert not [n for n in names if n.endswith(".pyc") or n.startswith("tests/")]
    entry = zipfile.ZipFile(dists["wheel"]).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "cardd = cardd.cli.main:main" in entry


def test_sdist_carries_the_system_files(dists):
    with tarfile.open(dists["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"systemd/cardd.service", "systemd/sysusers.d/cardd.conf",
            "systemd/polkit/50-cardd-pcsc.rules", "udev/70-cardd.rules", "udev/cardd-nfc.conf",
            "scripts/install-system.sh", "scripts/uninstall-system.sh", "cardd.toml.sample",
            "pyproject.toml", "cardd/py.typed"} <= names
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]


# -- install / uninstall into a scratch root --------------------------------------------------


def snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def scratch_root(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


INSTALLED = [
    "usr/lib/systemd/system/cardd.service", "usr/lib/sysusers.d/cardd.conf",
    "usr/share/polkit-1/rules.d/50-cardd-pcsc.rules", "usr/lib/udev/rules.d/70-cardd.rules",
    "usr/lib/modprobe.d/cardd-nfc.conf", "opt/cardd/venv/bin/cardd", "etc/cardd/cardd.toml",
]


@root_only
@pytest.mark.slow
def test_install_then_uninstall_leaves_nothing(dists, tmp_path):
    from cardd.cli.diag_system import devices_section, install_section, service_section

    root = scratch_root(tmp_path)
    before = snapshot(root)
    run(REPO / "scripts" / "install-system.sh", "--root", root, "--wheel", dists["wheel"])

    for rel in INSTALLED:
        assert (root / rel).exists(), rel
    for rel in INSTALLED[:5]:  # the system files are the repository's, byte for byte
        src = {"cardd.service": "systemd/cardd.service", "cardd.conf": "systemd/sysusers.d/cardd.conf",
               "50-cardd-pcsc.rules": "systemd/polkit/50-cardd-pcsc.rules",
               "70-cardd.rules": "udev/70-cardd.rules", "cardd-nfc.conf": "udev/cardd-nfc.conf"}
        assert (root / rel).read_bytes() == (REPO / src[Path(rel).name]).read_bytes()
    user = next(ln.split(":") for ln in (root / "etc/passwd").read_text().splitlines()
                if ln.startswith("cardd:"))
    group = next(ln.split(":") for ln in (root / "etc/group").read_text().splitlines()
                 if ln.startswith("cardd:"))
    assert user[5:] == ["/var/lib/cardd", "/usr/sbin/nologin"] and user[3] == group[2]
    conf = (root / "etc/cardd/cardd.toml").stat()
    assert oct(conf.st_mode & 0o777) == "0o640" and conf.st_gid == int(group[2]) and conf.st_uid == 0
    assert os.readlink(root / "usr/local/bin/cardd") == "/opt/cardd/venv/bin/cardd"
    # the venv works and its configuration file loads
    out = subprocess.run(
        [root / "opt/cardd/venv/bin/cardd", "--config", root / "etc/cardd/cardd.toml", "diag", "--json"],
        env=dict(os.environ, CARDD_STATE_DIR=str(tmp_path / "st")), capture_output=True, text=True,
        timeout=120)
    assert json.loads(out.stdout)["sections"]["config"]["status"] in (OK, INFO), out.stdout
    # the installed unit, with the real venv at /opt (a private mount namespace)
    run("unshare", "-m", "--propagation", "private", "sh", "-c",
        f"mount --bind '{root / 'opt'}' /opt && systemd-analyze verify "
        f"'{root / 'usr/lib/systemd/system/cardd.service'}'")
    # cardd diag sees a complete install there
    ctx = {"root": str(root), "config": None}
    assert install_section(ctx).status == OK
    assert devices_section(ctx).status == OK
    assert service_section(ctx).status == INFO

    # uninstall: state, configuration and user stay
    (root / "var/lib/cardd").mkdir(parents=True)
    (root / "var/lib/cardd/ledger.sqlite3").write_bytes(b"ledger")
    run(REPO / "scripts" / "uninstall-system.sh", "--root", root)
    for rel in INSTALLED[:-1]:
        assert not (root / rel).exists(), rel
    assert not (root / "opt/cardd").exists() and not (root / "usr/local/bin/cardd").is_symlink()
    assert (root / "var/lib/cardd/ledger.sqlite3").read_bytes() == b"ledger"
    assert (root / "etc/cardd/cardd.toml").exists()
    assert "cardd:" in (root / "etc/passwd").read_text()
    assert install_section(ctx).status == FAIL  # a user but no unit: diag says reinstall

    # --purge: nothing of cardd is left (the shadow files and their backups are the system's)
    run(REPO / "scripts" / "uninstall-system.sh", "--root", root, "--purge")
    system_db = {"etc/passwd-", "etc/group-", "etc/shadow", "etc/shadow-", "etc/gshadow",
                 "etc/gshadow-", "etc/.pwd.lock"}
    left = snapshot(root) - before - system_db
    # empty directories the install created are harmless but reported, files are not allowed
    assert [p for p in left if (root / p).is_file() or (root / p).is_symlink()] == []
    assert "cardd" not in (root / "etc/passwd").read_text() + (root / "etc/group").read_text()
    assert install_section(ctx).status == INFO


# -- udev, modprobe, polkit -------------------------------------------------------------------


def udevadm_test(rules_dir: Path, tmp: Path) -> str:
    """Load ``rules_dir`` as /etc/udev/rules.d (private mount namespace) with `udevadm test`.

    udev 252 has no `udevadm verify` (253+); `udevadm test` parses every rules file and logs each
    problem as ``file:line ...``. A group file with ``cardd`` is bound over /etc/group so GROUP=
    resolves as on an installed machine.
    """
    group = tmp / "group"
    group.write_text(Path("/etc/group").read_text() + "cardd:x:987:\n")
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount --bind '{rules_dir}' /etc/udev/rules.d && mount --bind '{group}' /etc/group && "
         "udevadm test --action=add /sys/class/tty/tty"],
        capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


needs_udevadm = pytest.mark.skipif(
    shutil.which("udevadm") is None or os.geteuid() != 0,
    reason="needs udevadm (apt-get install udev) and root for the mount namespace")


@needs_udevadm
def test_udev_rules_parse_without_complaint(tmp_path):
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir()
    shutil.copy(RULES, rules_dir / "70-cardd.rules")
    out = udevadm_test(rules_dir, tmp_path)
    ours = [ln for ln in out.splitlines() if "70-cardd.rules" in ln]
    assert ours == ["Reading rules file: /etc/udev/rules.d/70-cardd.rules"], out


@needs_udevadm
def test_udev_check_catches_broken_rules(tmp_path):
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir()
    broken = RULES.read_text().replace('LABEL="cardd_usb_end"', "") + 'ATTRZ{idVendor}=="1a86"\n'
    (rules_dir / "70-cardd.rules").write_text(broken)
    out = udevadm_test(rules_dir, tmp_path)
    complaints = [ln for ln in out.splitlines() if "70-cardd.rules:" in ln]
    assert any("cardd_usb_end" in ln for ln in complaints)
    assert any("ATTRZ" in ln for ln in complaints)


def rule_lines() -> list[str]:
    return [ln.strip() for ln in RULES.read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


def test_udev_rules_cover_the_readers_and_relays():
    lines = rule_lines()
    assert lines[0] == 'ACTION=="remove", GOTO="cardd_end"'  # not ACTION!="add" (systemd 247)
    assert not any('ACTION!="add"' in ln for ln in lines)
    gotos = {m for ln in lines for m in re.findall(r'GOTO="(\w+)"', ln)}
    labels = {m for ln in lines for m in re.findall(r'LABEL="(\w+)"', ln)}
    assert gotos == labels
    text = "\n".join(lines)
    nfc = {"054c": ["02e1", "06c1", "06c3"], "072f": ["2200"], "04cc": ["0531", "2533"]}
    for vid, pids in nfc.items():
        line = next(ln for ln in lines if f'ATTR{{idVendor}}=="{vid}"' in ln and "CARDD_NFC" in ln)
        for pid in pids:
            assert pid in line
    for vid, pid in [("1a86", "7523"), ("0403", "6001"), ("10c4", "ea60"), ("067b", "2303")]:
        assert f'ATTRS{{idVendor}}=="{vid}", ATTRS{{idProduct}}=="{pid}", ENV{{CARDD_SERIAL}}="1"' in text
        assert (f'ATTR{{idVendor}}=="{vid}", ATTR{{idProduct}}=="{pid}", '
                'ENV{ID_MM_DEVICE_IGNORE}="1"') in text
    assigns = [ln for ln in lines if ln.startswith('GROUP="cardd"')]
    assert len(assigns) == 2 and all('MODE="0660"' in ln and "ID_MM_DEVICE_IGNORE" in ln for ln in assigns)
    links = re.findall(r'SYMLINK\+="([^"]+)"', text)
    assert len(links) == 4 and all(link.startswith("cardd/") for link in links)
    assert not [ln for ln in lines if "dialout" in ln or 'GROUP="input"' in ln]


@pytest.mark.skipif(shutil.which("modprobe") is None, reason="needs kmod (apt-get install kmod)")
def test_modprobe_file_blacklists_the_kernel_nfc_drivers(tmp_path):
    shutil.copy(MODPROBE, tmp_path / "cardd-nfc.conf")
    p = subprocess.run(["modprobe", "-C", str(tmp_path), "--showconfig"],
                       capture_output=True, text=True, timeout=60)
    assert "ERROR" not in p.stderr, p.stderr
    blacklisted = {ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("blacklist ")}
    assert blacklisted == {"pn533_usb", "pn533", "port100", "nfc"}


POLKIT_HARNESS = r"""
const fs = require("fs");
const rules = [];
const polkit = { Result: { YES: "yes", NO: "no" }, addRule: (f) => rules.push(f) };
new Function("polkit", fs.readFileSync(process.argv[2], "utf8"))(polkit);
const out = {};
for (const [action, user] of JSON.parse(process.argv[3])) {
  let result = null;
  for (const rule of rules) {
    const r = rule({ id: action }, { user: user, local: false, active: false });
    if (r !== undefined) { result = r; break; }
  }
  out[action + " " + user] = result;
}
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to evaluate the polkit rule")
def test_polkit_rule_allows_only_cardd_and_only_pcsc(tmp_path):
    harness = tmp_path / "harness.js"
    harness.write_text(POLKIT_HARNESS)
    pcsc, card = "org.debian.pcsc-lite.access_pcsc", "org.debian.pcsc-lite.access_card"
    cases = [[pcsc, "cardd"], [card, "cardd"], [pcsc, "www-data"], [card, "root"],
             ["org.freedesktop.login1.reboot", "cardd"]]
    p = subprocess.run(["node", str(harness), str(POLKIT), json.dumps(cases)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {
        f"{pcsc} cardd": "yes", f"{card} cardd": "yes", f"{pcsc} www-data": None,
        f"{card} root": None, "org.freedesktop.login1.reboot cardd": None}


# -- cardd diag on partial installs ----------------------------------------------------------


def test_diag_names_what_is_missing(tmp_path):
    from cardd.cli.diag_system import devices_section, install_section

    root = scratch_root(tmp_path)
    ctx = {"root": str(root), "config": None}
    s = install_section(ctx)
    assert s.status == INFO and "not installed" in s.summary
    # rules and unit without the user: the fix is systemd-sysusers
    for rel, src in [("usr/lib/udev/rules.d/70-cardd.rules", RULES),
                     ("usr/lib/systemd/system/cardd.service", REPO / "systemd/cardd.service")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
    s = install_section(ctx)
    assert s.status == FAIL
    steps = " ".join(s.next_steps)
    assert "systemd-sysusers" in steps and "cardd-nfc.conf" in steps and "sysusers.d/cardd.conf" in steps
    # a loaded kernel NFC driver, no blacklist installed
    (root / "proc").mkdir()
    (root / "proc/modules").write_text("pn533_usb 20480 0 - Live 0x0\npn533 45056 1 pn533_usb, Live 0x0\n"
                                       "nfc 135168 1 pn533, Live 0x0\n")
    d = devices_section(ctx)
    assert d.status == WARN
    assert "modprobe -r pn533_usb pn533 nfc" in " ".join(d.next_steps)
    assert "/usr/lib/modprobe.d/" in " ".join(d.next_steps)


def test_diag_checks_configured_dev_cardd_links(tmp_path):
    import dataclasses

    from cardd.cli.diag_system import devices_section

    @dataclasses.dataclass(frozen=True)
    class Relay:  # the shape of any configuration section naming a device
        device: str

    @dataclasses.dataclass(frozen=True)
    class Conf:
        gate: Relay
        readers: tuple[str, ...]

    root = scratch_root(tmp_path)
    (root / "dev/cardd").mkdir(parents=True)
    present = root / "dev/cardd/tty-1a86-7523-path-pci-0000_00_14_0-usb-0_2_1_0"
    present.write_text("")
    os.chmod(present, 0o660)
    conf = Conf(Relay("/dev/cardd/tty-1a86-7523-path-pci-0000_00_14_0-usb-0_2_1_0"),
                ("/dev/cardd/tty-0403-6001-A10K1234", "/dev/ttyS0"))
    d = devices_section({"root": str(root), "config": conf, "cardd_gid": present.stat().st_gid})
    assert d.status == FAIL
    configured = {c["path"]: c["present"] for c in d.details[0]["configured"]}
    assert configured == {"/dev/cardd/tty-1a86-7523-path-pci-0000_00_14_0-usb-0_2_1_0": True,
                          "/dev/cardd/tty-0403-6001-A10K1234": False}
    assert any("tty-0403-6001-A10K1234" in s and "udevadm" in s for s in d.next_steps)
