# SPDX-License-Identifier: Apache-2.0
"""`cardd serve` as systemd runs it: sd_notify, watchdog, graceful stop; the unit file itself.

systemd is not PID 1 in CI containers, so the test plays the service manager: it owns the
``$NOTIFY_SOCKET`` datagram socket and sets ``$WATCHDOG_USEC``, exactly what systemd hands a
``Type=notify`` service. The unit file is checked with ``systemd-analyze verify`` and
``systemd-analyze security --offline=yes`` (both work without a running systemd).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import READER0, fixture_card, wait_card

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "cardd.service"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotifySocket:
    """The service manager's end: every datagram cardd sends, parsed into KEY=value dicts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: queue.Queue[dict[str, str]] = queue.Queue()
        self.all: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            msg = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.all.append(msg)
            self.messages.put(msg)

    def wait_for(self, pred, timeout: float = 15.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching notification; got {self.all[-20:]}")
            try:
                msg = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if pred(msg):
                return msg

    def seen_or_wait(self, pred, timeout: float = 15.0) -> dict[str, str]:
        """A notification already received that matches, else the next one that does."""
        for msg in list(self.all):
            if pred(msg):
                return msg
        return self.wait_for(pred, timeout)

    def drain(self) -> list[dict[str, str]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class NotifiedDaemon:
    """`cardd serve` with a notify socket and (optionally) a watchdog interval."""

    def __init__(self, tmp: Path, *, watchdog_usec: int | None = None, extra_env=None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = tmp / "state"
        keys = tmp / "keys.toml"
        keys.write_text('[student_card]\nsector = 14\nkey_a = "A0A1A2A3A4A5"\nkey_b = "B0B1B2B3B4B5"\n')
        keys.chmod(0o600)
        self.config = tmp / "cardd.toml"
        self.config.write_text(f'[rfid]\nkey_file = "{keys}"\nstation = "test-desk"\n[api]\nport = {self.port}\n')
        self.notify = NotifySocket(tmp / "notify.sock")
        env = dict(os.environ, CARDD_STATE_DIR=str(self.state), NOTIFY_SOCKET=str(self.notify.path))
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        env.update(extra_env or {})
        self.env = env
        self.log_path = tmp / "cardd.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cardd.cli.main", "--config", str(self.config), "serve"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> dict[str, str]:
        msg = self.notify.wait_for(lambda m: m.get("READY") == "1" or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.log_path.read_text()
        return msg

    @property
    def token(self) -> str:
        return (self.state / "token").read_text().strip()

    def request(self, method: str, path: str, body=None, timeout: float = 10.0):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self.notify.close()


@pytest.fixture
def daemons(tmp_path):
    made: list[NotifiedDaemon] = []

    def make(**kw) -> NotifiedDaemon:
        sub = tmp_path / f"d{len(made)}"
        sub.mkdir()
        d = NotifiedDaemon(sub, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


# -- readiness and status ---------------------------------------------------------------------


@pytest.mark.pcsc
def test_ready_only_when_the_api_answers_with_status(pcscd, vreaders, daemons):
    d = daemons()
    ready = d.wait_ready()
    # The first thing after READY=1: the API must already answer, with the reader layer up.
    status, body = d.request("GET", "/v1/health")
    assert status == 200 and body["backends"] == {"pcsc": "up"}
    before = d.notify.all[: d.notify.all.index(ready)]
    assert all("READY" not in m for m in before)
    assert ready["STATUS"].startswith(f"listening on http://127.0.0.1:{d.port}, ")
    assert "pcscd up" in ready["STATUS"]
    # Both vpcd slots are readers; the line follows the reader layer (READY may precede the 2nd).
    d.notify.seen_or_wait(lambda m: m.get("STATUS", "").endswith(", 2 readers, pcscd up"))
    assert "WATCHDOG" not in json.dumps(d.notify.all)  # no WATCHDOG_USEC: no pings
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0, d.log_path.read_text()
    stopping = d.notify.seen_or_wait(lambda m: "STOPPING" in m)
    assert stopping["STOPPING"] == "1"


def test_ready_with_pcscd_down_says_so(tmp_path, daemons):
    # No pcscd at this socket: cardd must still get ready (or systemd would kill it in a loop)
    # and say what it is doing.
    d = daemons(extra_env={"PCSCLITE_CSOCK_NAME": str(tmp_path / "no-pcscd.comm")})
    ready = d.wait_ready()
    assert ready["STATUS"] == f"listening on http://127.0.0.1:{d.port}, 0 readers, pcscd down, retrying"
    status, body = d.request("GET", "/v1/health")
    assert status == 200 and body["backends"] == {"pcsc": "down"}
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0, d.log_path.read_text()


# -- watchdog ---------------------------------------------------------------------------------


@pytest.mark.pcsc
def test_watchdog_pings_stop_when_the_event_loop_hangs(pcscd, daemons):
    # 0.4 s interval: cardd pings every 0.2 s.
    d = daemons(watchdog_usec=400_000, extra_env={"CARDD_TEST_HANG_SIGNAL": "1"})
    d.wait_ready()
    for _ in range(3):
        d.notify.wait_for(lambda m: m.get("WATCHDOG") == "1", timeout=10)
    d.proc.send_signal(signal.SIGUSR2)  # the test hook blocks the loop with time.sleep
    # The loop answers nothing any more: an HTTP request times out ...
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        d.request("GET", "/v1/health", timeout=1.5)
    d.notify.drain()  # (a ping sent between our last read and the signal)
    # ... and over 10 intervals' worth of time not a single ping arrives, the process being alive.
    time.sleep(2.0)
    late = [m for m in d.notify.drain() if "WATCHDOG" in m]
    assert late == []
    assert d.proc.poll() is None


def test_watchdog_pid_of_another_process_means_no_pings(tmp_path, daemons):
    d = daemons(watchdog_usec=200_000, extra_env={
        "WATCHDOG_PID": "1", "PCSCLITE_CSOCK_NAME": str(tmp_path / "none.comm")})
    d.wait_ready()
    time.sleep(1.0)  # 10 intervals
    assert not any("WATCHDOG" in m for m in d.notify.all)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(20) == 0


# -- graceful stop ----------------------------------------------------------------------------


def ledger_state(d: NotifiedDaemon, id_number: str) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "cardd.cli.main", "--config", str(d.config), "ledger", "show",
         id_number, "--json"], env=d.env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.pcsc
def test_sigterm_during_a_burn_finishes_it_and_exits_0(pcscd, vreaders, daemons):
    from cardd.sim.cards.faults import FaultyCard

    d = daemons()
    d.wait_ready()
    card = FaultyCard(fixture_card("classic_1k_student.json"))
    vreaders[0].insert(card)
    wait_card(READER0, present=True)
    # the daemon has seen it and read its UID for the tap event (a background read)
    for _ in range(100):
        _, body = d.request("GET", "/v1/readers")
        r0 = next(r for r in body["readers"] if r["name"] == READER0)
        if r0["cardPresent"]:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    card.delay_next(0.4, count=8)  # a slow card: the burn takes a few seconds
    result: dict = {}

    def burn() -> None:
        result["answer"] = d.request("POST", "/v1/student-card/burn",
                                     {"idNumber": "A123456789", "reader": READER0}, timeout=30)

    t = threading.Thread(target=burn)
    t.start()
    d.notify.wait_for(lambda m: "1 busy" in m.get("STATUS", ""))  # the burn holds the reader
    d.proc.send_signal(signal.SIGTERM)
    d.notify.seen_or_wait(lambda m: m.get("STOPPING") == "1")
    t.join(30)
    assert d.proc.wait(30) == 0, d.log_path.read_text()
    status, body = result["answer"]
    assert status == 200, body
    assert body["suffix"] == 0
    # Committed: the ledger holds the number as active for this card, nothing pending.
    records = ledger_state(d, "A123456789")
    assert [r["state"] for r in records] == ["active"], records
    # and no new connection is taken after the stop
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.port), timeout=1).close()


@pytest.mark.pcsc
def test_sigterm_cancels_a_long_poll_and_exits_0(pcscd, vreaders, daemons):
    d = daemons()
    d.wait_ready()
    result: dict = {}

    def wait_tap() -> None:
        try:
            result["answer"] = d.request("POST", "/v1/rfid/wait-tap", {"timeoutMs": 60000}, timeout=60)
        except Exception as e:  # noqa: BLE001 - the connection closing is the expected outcome
            result["error"] = e

    t = threading.Thread(target=wait_tap)
    t.start()
    time.sleep(0.5)
    d.proc.send_signal(signal.SIGTERM)
    # Far before the wait-tap's own 60 s: a waiting page does not hold the stop up.
    assert d.proc.wait(20) == 0, d.log_path.read_text()
    t.join(10)
    assert "answer" not in result  # no made-up tap: the waiting request was cut
    assert any(m.get("STOPPING") == "1" for m in d.notify.all)


# -- the unit file ----------------------------------------------------------------------------


def _bind_opt(tmp: Path, cmd: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` where /opt/cardd/venv/bin/cardd exists (a private mount namespace, root)."""
    venv_bin = tmp / "opt" / "cardd" / "venv" / "bin"
    venv_bin.mkdir(parents=True, exist_ok=True)
    link = venv_bin / "cardd"
    if not link.exists():
        link.symlink_to(REPO / ".venv" / "bin" / "cardd")
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount --bind '{tmp / 'opt'}' /opt && {cmd}"],
        capture_output=True, text=True, timeout=60)


needs_root_and_analyze = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("systemd-analyze") is None,
    reason="needs root (a private mount namespace) and systemd-analyze (apt-get install systemd)")


@needs_root_and_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "cardd.service"
    shutil.copy(UNIT, unit)
    p = _bind_opt(tmp_path, f"systemd-analyze verify '{unit}'")
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr


@needs_root_and_analyze
def test_unit_verify_catches_a_broken_unit(tmp_path):
    # the check above can fail: a misspelt directive and a bad type are reported
    unit = tmp_path / "cardd.service"
    unit.write_text(UNIT.read_text().replace("Type=notify", "Type=notiffy")
                    .replace("ProtectHome=yes", "ProtectHom=yes"))
    p = _bind_opt(tmp_path, f"systemd-analyze verify '{unit}'")
    assert "notiffy" in p.stderr and "ProtectHom" in p.stderr


@needs_root_and_analyze
def test_unit_security_exposure_is_low(tmp_path):
    unit = tmp_path / "cardd.service"
    shutil.copy(UNIT, unit)
    p = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for cardd.service: (\d+\.\d+) (\w+)", p.stdout)
    assert m, p.stdout + p.stderr
    exposure = float(m.group(1))
    # systemd's scale: < 2 is "OK" (the best band). systemd/README.md quotes the figure.
    assert exposure < 2.0 and m.group(2) == "OK", p.stdout
    assert f"exposure {m.group(1)}" in (REPO / "systemd" / "README.md").read_text()


def test_unit_settings_the_daemon_relies_on():
    text = UNIT.read_text()
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#"):
            k, v = line.split("=", 1)
            settings.setdefault(f"{section}{k}", []).append(v)
    svc = "[Service]"
    assert settings[f"{svc}Type"] == ["notify"]
    assert settings[f"{svc}NotifyAccess"] == ["main"]
    assert settings[f"{svc}User"] == ["cardd"] and settings[f"{svc}Group"] == ["cardd"]
    assert settings[f"{svc}StateDirectory"] == ["cardd"]  # config.default_state_dir reads it
    assert settings[f"{svc}DevicePolicy"] == ["closed"]
    assert f"{svc}PrivateDevices" not in settings  # would hide /dev/ttyUSB* from the readers
    # the drain bound fits in the stop timeout, the ping period in the watchdog interval
    from cardd.daemon import DRAIN_SECONDS

    assert float(settings[f"{svc}TimeoutStopSec"][0].rstrip("s")) >= DRAIN_SECONDS + 5
    assert "ExecStart" in text and "serve" in settings[f"{svc}ExecStart"][0]
