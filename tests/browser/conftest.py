# SPDX-License-Identifier: Apache-2.0
"""The world the browser tests drive, all real components:

* the private pcscd with the vpcd driver (tests/conftest.py) and virtual cards;
* a test PKI shaped like MOICA with its OCSP/CRL server, one citizen (王小明, ID A123456789) whose
  keys sit in a SoftHSM2 token that cardd uses as the card's PKCS#11 module (the same set-up as
  tests/integration/test_moica_e2e.py);
* ``cardd serve`` as a subprocess, allowlisting the demo site's origin with moica + rfid:read;
* ``cardd demo-site`` as a subprocess on another port, trusting the test PKI, revocation required;
* a plain static web server on a third port: a site cardd does not allow (the attacker);
* Debian's Chromium, headless, driven by Playwright (never Playwright's own browser builds).

Screenshots go to tests/artifacts/browser/ (gitignored).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import READER0, READER1

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PIN = "246810"
ID_NUMBER = "A123456789"  # last four 6789 on the certificate
HOLDER = "王小明"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "browser"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(log.read_text(errors="replace")) from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class World:
    """URLs, credentials and helpers of the running set-up."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.api_port = free_port()
        self.site_port = free_port()
        self.cardd = f"http://127.0.0.1:{self.api_port}"
        self.site = f"http://127.0.0.1:{self.site_port}"
        self.bearer = ""
        self.card = None
        self.identity = None
        self.ca = None  # the test MOICA CA certificate (what the demo site trusts)
        self.cardd_log = tmp / "cardd.log"
        self.evil = ""
        self.evil_dir = tmp / "evil"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bearer}"}

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """A call to cardd as a local program (bearer token)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.cardd + path,
            data=data,
            method=method,
            headers={
                **self.auth,
                **({"Content-Type": "application/json"} if data is not None else {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def wait_reader(self, reader: str, present: bool, timeout: float = 15.0) -> dict:
        """Until cardd itself (not just pcscd) sees the card arrive or leave."""
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.api("GET", "/v1/readers")
            assert status == 200, body
            for r in body["readers"]:
                if (
                    r["name"] == reader
                    and r["cardPresent"] == present
                    and (not present or r.get("cardType"))
                ):
                    return r
            assert time.monotonic() < deadline, f"cardd never saw {reader} present={present}"
            time.sleep(0.1)

    def wait_idle(self, reader: str = READER0, timeout: float = 15.0) -> None:
        """Until no operation holds ``reader`` (the previous test's has finished)."""
        deadline = time.monotonic() + timeout
        while True:
            _, body = self.api("GET", "/v1/readers")
            if all(not r.get("busy") for r in body["readers"] if r["name"] == reader):
                return
            assert time.monotonic() < deadline, f"{reader} stayed busy"
            time.sleep(0.1)


# Package scope: the daemon watches the shared private pcscd; it must not outlive these tests
# and read cards that other packages' tests insert.
@pytest.fixture(scope="package")
def world(tmp_path_factory, pcscd):
    from cardd.sim.cards.moica import MoicaGen1Card
    from cardd.sim.revocation_server import RevocationServer
    from cardd.sim.softhsm import provision_token, softhsm_unusable
    from cardd.sim.testpki import PkiEndpoints, make_test_pki

    reason = softhsm_unusable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("browser")
    w = World(tmp)
    pki_port = free_port()
    pki = make_test_pki(endpoints=PkiEndpoints.at(f"http://127.0.0.1:{pki_port}"))
    server = RevocationServer(pki, port=pki_port)
    server.start()
    identity = pki.issue_citizen(HOLDER, "1234567890123456", ID_NUMBER[-4:])
    w.identity = identity
    w.ca = pki.moica.certificate
    token = provision_token(identity, tmp / "hsm", label="citizen", pin=PIN)
    w.card = MoicaGen1Card(
        "TP03000000000001", [pki.moica.der(), identity.encryption.der(), identity.signing.der()]
    )
    ca = tmp / "test-moica.der"
    ca.write_bytes(pki.moica.der())

    config = tmp / "cardd.toml"
    config.write_text(
        f"[api]\nport = {w.api_port}\n"
        f'[api.origins."{w.site}"]\nscopes = ["readers", "moica", "rfid:read"]\n'
        f'[moica]\npkcs11_module = "{token.module_path}"\n'
        f'[readers.kinds]\n"{READER0}" = "contact"\n"{READER1}" = "contactless"\n'
    )
    env = dict(os.environ, CARDD_STATE_DIR=str(tmp / "state"), **token.env())
    with open(w.cardd_log, "wb") as out:
        cardd = subprocess.Popen(
            [sys.executable, "-m", "cardd.cli.main", "-vv", "--config", str(config), "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    site_log = tmp / "site.log"
    with open(site_log, "wb") as out:
        site = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cardd.cli.main",
                "demo-site",
                "--port",
                str(w.site_port),
                "--cardd",
                w.cardd,
                "--trust-cert",
                str(ca),
                "--crl-url",
                pki.endpoints.moica_crl,
            ],
            env=dict(os.environ, CARDD_STATE_DIR=str(tmp / "site-state")),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    # the attacker: a plain web server on another local port, pages written by the tests
    w.evil_dir.mkdir()
    evil = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(w.evil_dir))
    )
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    w.evil = f"http://127.0.0.1:{evil.server_address[1]}"
    try:
        _wait_port(w.api_port, cardd, w.cardd_log)
        _wait_port(w.site_port, site, site_log)
        w.bearer = (tmp / "state" / "token").read_text().strip()
        yield w
    finally:
        evil.shutdown()
        _stop(site)
        _stop(cardd)
        server.stop()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


# Package scope: Playwright's sync API keeps an event loop running on this thread while it is
# open, which would stop the asyncio tests of other packages; it closes when this package ends.
@pytest.fixture(scope="package")
def browser():
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} not found (apt install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(locale="zh-TW", viewport={"width": 900, "height": 1100})
    ctx.set_default_timeout(30_000)
    yield ctx
    ctx.close()


@pytest.fixture
def moica_card(world, vreaders):
    """The citizen certificate card in reader 0, seen by cardd; no operation left over."""
    world.wait_idle()
    vreaders[0].insert(world.card)
    world.wait_reader(READER0, present=True)
    return vreaders


@pytest.fixture(scope="session", autouse=True)
def _artifacts():
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


class EventTap:
    """cardd's event stream (SSE, as a local program), collected on a thread."""

    def __init__(self, world: World) -> None:
        self.events: list[dict] = []
        self._cond = threading.Condition()
        req = urllib.request.Request(world.cardd + "/v1/events", headers=world.auth)
        self._resp = urllib.request.urlopen(req, timeout=120)  # noqa: S310 - loopback
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.wait_for(lambda e: e["type"] == "hello")

    def _read(self) -> None:
        kind = None
        try:
            for raw in self._resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    with self._cond:
                        self.events.append({"type": kind, **json.loads(line[6:])})
                        self._cond.notify_all()
        except (
            OSError,
            ValueError,
            AttributeError,
        ):  # closed under us (AttributeError: http.client)
            pass

    def wait_for(self, predicate, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                assert left > 0, f"no such event; saw {[e['type'] for e in self.events]}"
                self._cond.wait(left)

    def close(self) -> None:
        self._resp.close()


@pytest.fixture
def event_tap(world):
    tap = EventTap(world)
    yield tap
    tap.close()
