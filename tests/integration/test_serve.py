# SPDX-License-Identifier: Apache-2.0
"""`cardd serve` as a separate process on the real pcscd: API, security checks, events, recovery."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import READER0, fixture_card, wait_card, wait_listening

pytestmark = pytest.mark.pcsc

ALLOWED = "https://library.example.tw"
READONLY = "https://kiosk.example.tw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, tmp: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.state = tmp / "state"
        self.config = tmp / "cardd.toml"
        keys = tmp / "keys.toml"
        keys.write_text('[student_card]\nsector = 14\nkey_a = "A0A1A2A3A4A5"\nkey_b = "B0B1B2B3B4B5"\n')
        keys.chmod(0o600)
        self.config.write_text(
            f'[rfid]\nkey_file = "{keys}"\nstation = "test-desk"\n'
            f'[api]\nport = {port}\n'
            f'[api.origins."{ALLOWED}"]\nscopes = ["readers", "moica", "rfid:read"]\n'
            f'[api.origins."{READONLY}"]\nscopes = ["rfid:read"]\n'
        )
        env = dict(os.environ, CARDD_STATE_DIR=str(self.state))
        self.log = open(tmp / "cardd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cardd.cli.main", "--config", str(self.config), "serve"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_listening(self.proc, port, tmp / "cardd.log", timeout=15)
        self.token = (self.state / "token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def daemon(pcscd, tmp_path):
    d = Daemon(tmp_path, free_port())
    yield d
    d.stop()
    assert d.proc.returncode == 0, (tmp_path / "cardd.log").read_text()


async def get(d: Daemon, path: str, headers: dict[str, str]) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(d.url + path, headers=headers) as r:
            body = await r.json(content_type=None)
            return r.status, dict(r.headers), body


async def test_token_file_is_private_and_health_answers(daemon):
    assert (daemon.state / "token").stat().st_mode & 0o777 == 0o600
    status, _, body = await get(daemon, "/v1/health", daemon.auth)
    assert status == 200
    assert body["backends"] == {"pcsc": "up"}


async def test_readers_lists_card_and_type(daemon, vreaders):
    vreaders[0].insert(fixture_card("classic_1k_blank.json"))
    wait_card(READER0, present=True)
    for _ in range(40):  # the daemon's own watcher sees the card independently of ours
        status, _, body = await get(daemon, "/v1/readers", daemon.auth)
        r0 = next(r for r in body["readers"] if r["name"] == READER0)
        if r0["cardPresent"]:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    assert r0["cardType"] == "mifare_classic_1k" and r0["kind"] == "contactless"
    assert r0["atr"] == "3B8F8001804F0CA000000306030001000000006A"


@pytest.mark.parametrize(
    "host",
    ["evil.example:{port}", "127.0.0.1", "127.0.0.1:1", "localhost.evil.example:{port}",
     "127.0.0.2:{port}", "", "LOCALHOST:{port}x"],
)
async def test_foreign_host_is_misdirected(daemon, host):
    status, headers, body = await get(daemon, "/v1/health", {"Host": host.format(port=daemon.port), **daemon.auth})
    assert status == 421
    assert body["error"]["code"] == "misdirected"
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}"])
async def test_loopback_hosts_are_accepted(daemon, host):
    status, _, _ = await get(daemon, "/v1/health", {"Host": host.format(port=daemon.port), **daemon.auth})
    assert status == 200


async def test_allowed_origin_gets_exact_cors_headers(daemon):
    status, headers, _ = await get(daemon, "/v1/readers", {"Origin": ALLOWED})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert headers["Vary"] == "Origin"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", ALLOWED + ":443", ALLOWED + "/", "http://library.example.tw",
     "https://library.example.tw.evil.example", ""],
)
async def test_other_origins_are_refused(daemon, origin):
    status, headers, body = await get(daemon, "/v1/readers", {"Origin": origin, **daemon.auth})
    assert status == 403
    assert body["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in headers


async def test_scope_is_enforced_per_origin(daemon):
    status, _, body = await get(daemon, "/v1/readers", {"Origin": READONLY})
    assert status == 403 and body["error"]["code"] == "scope_denied"
    status, _, _ = await get(daemon, "/v1/health", {"Origin": READONLY})
    assert status == 200


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic abc", "Bearer "])
async def test_local_callers_need_the_token(daemon, auth):
    headers = {"Authorization": auth} if auth else {}
    status, _, body = await get(daemon, "/v1/health", headers)
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_preflight_answers_private_network_for_allowed_origin_only(daemon):
    async with aiohttp.ClientSession() as s:
        h = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Private-Network": "true"}
        # a POST route: since the full security layer, a preflight for a method the path does
        # not take gets no grant (test_api_security.py)
        async with s.options(daemon.url + "/v1/rfid/wait-tap", headers=h) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
            assert r.headers["Access-Control-Allow-Private-Network"] == "true"
        async with s.options(daemon.url + "/v1/rfid/wait-tap", headers={**h, "Origin": "https://evil.example"}) as r:
            assert r.status == 403
            assert "Access-Control-Allow-Private-Network" not in r.headers


async def test_websocket_checks_origin_on_connect(daemon):
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(daemon.url + "/v1/ws", origin="https://evil.example")
        assert e.value.status == 403
        async with s.ws_connect(daemon.url + "/v1/ws", origin=ALLOWED) as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["type"] == "hello"


class Sse:
    """A minimal EventSource: yields (type, data) from a streaming response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.r = response

    async def next(self, timeout: float = 10.0) -> tuple[str, dict]:
        async with asyncio.timeout(timeout):
            event, data = None, None
            while True:
                line = (await self.r.content.readline()).decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and event is not None:
                    return event, data

    async def until(self, pred, timeout: float = 10.0) -> tuple[str, dict]:
        async with asyncio.timeout(timeout):
            while True:
                ev = await self.next(timeout)
                if pred(*ev):
                    return ev


async def test_sse_events_for_insert_and_remove(daemon, vreaders):
    async with aiohttp.ClientSession() as s:
        async with s.get(daemon.url + "/v1/events", headers={"Origin": ALLOWED}) as r:
            assert r.status == 200
            assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
            sse = Sse(r)
            assert (await sse.next())[0] == "hello"
            card = fixture_card("../moica/card.json")
            vreaders[0].insert(card)
            _, data = await sse.until(lambda t, d: t == "card.inserted" and d["reader"] == READER0)
            assert data["cardType"] == "moica_gen1" and data["atr"] == card.atr.hex().upper()
            vreaders[0].remove()
            await sse.until(lambda t, d: t == "card.removed" and d["reader"] == READER0)


async def test_pcscd_restart_while_serving(daemon, pcscd, vreaders):
    async with aiohttp.ClientSession() as s:
        async with s.get(daemon.url + "/v1/events", headers=daemon.auth) as r:
            sse = Sse(r)
            await sse.next()
            pcscd.kill()
            await sse.until(lambda t, d: t == "backend.lost")
            await sse.until(lambda t, d: t == "reader.removed" and d["reader"] == READER0)
            status, _, health = await get(daemon, "/v1/health", daemon.auth)
            assert health["backends"]["pcsc"] == "down" and health["status"] == "degraded"
            pcscd.start()
            await sse.until(lambda t, d: t == "backend.restored", timeout=15)
            await sse.until(lambda t, d: t == "reader.added" and d["reader"] == READER0)
            vreaders[0].insert(fixture_card("easycard_4b.json"))
            _, data = await sse.until(lambda t, d: t == "card.inserted" and d["reader"] == READER0)
            assert data["cardType"] == "mifare_classic_1k"
    status, _, health = await get(daemon, "/v1/health", daemon.auth)
    assert health["backends"]["pcsc"] == "up"


async def post(d: Daemon, path: str, body, headers: dict[str, str]) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(d.url + path, json=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)


@pytest.mark.parametrize(
    ("fixture", "forms"),
    [
        ("easycard_4b.json", {"hex": "93A131C0", "hexReversed": "C031A193", "decLE": "3224478099",
                              "decBE": "2476814784", "length": 4}),
        ("small_uid.json", {"hex": "01020300", "decLE": "0000197121", "length": 4}),
        ("easycard_7b.json", {"hex": "04A1B2C3D4E5F6", "decLE": "69495546249912580", "length": 7}),
    ],
)
async def test_wait_tap_returns_every_uid_form(daemon, vreaders, fixture, forms):
    task = asyncio.create_task(post(daemon, "/v1/rfid/wait-tap", {"timeoutMs": 10000}, {"Origin": ALLOWED}))
    await asyncio.sleep(0.3)
    vreaders[1].insert(fixture_card(fixture))
    status, body = await task
    assert status == 200, body
    assert body["reader"] == "Virtual PCD 00 01"
    assert forms.items() <= body["uid"].items()
    assert body["cardType"] == "mifare_classic_1k" and body["atr"].startswith("3B8F8001")


async def test_wait_tap_times_out_cleanly(daemon):
    status, body = await post(daemon, "/v1/rfid/wait-tap", {"timeoutMs": 300}, daemon.auth)
    assert status == 504 and body["error"]["code"] == "timeout"


async def test_state_changing_calls_need_json(daemon):
    async with aiohttp.ClientSession() as s:
        async with s.post(daemon.url + "/v1/rfid/wait-tap", data="{}", headers={
            "Origin": ALLOWED, "Content-Type": "text/plain"}) as r:
            assert r.status == 415
            assert (await r.json())["error"]["code"] == "unsupported_media_type"


async def test_burn_read_and_report_lost_over_the_api(daemon, vreaders):
    status, body = await post(daemon, "/v1/student-card/burn", {"idNumber": "A123456789"}, {"Origin": ALLOWED})
    assert status == 403 and body["error"]["code"] == "scope_denied"  # the page lacks rfid:write
    vreaders[0].insert(fixture_card("classic_1k_student.json"))
    wait_card(READER0, present=True)
    await asyncio.sleep(0.5)  # let the daemon see the card
    status, body = await post(daemon, "/v1/student-card/burn",
                              {"idNumber": "A123456789", "reader": READER0}, daemon.auth)
    assert status == 200, body
    assert body["libraryNumber"] == "A12*****8900" and body["suffix"] == 0
    assert body["uid"]["hex"] == "93A131C0"
    status, body = await post(daemon, "/v1/student-card/read", {"reader": READER0}, {"Origin": ALLOWED})
    assert status == 200, body
    assert (body["record"], body["ledgerState"], body["maskedId"]) == ("valid", "active", "A12*****89")
    assert "A123456789" not in json.dumps(body)
    status, body = await post(daemon, "/v1/student-card/report-lost",
                              {"libraryNumber": "A12345678900"}, daemon.auth)
    assert status == 200 and body["state"] == "lost"
    status, body = await post(daemon, "/v1/student-card/burn", {"idNumber": "A123456788"}, daemon.auth)
    assert status == 400 and body["error"]["code"] == "id_invalid"
    assert "A123456788" not in body["error"]["message"]
