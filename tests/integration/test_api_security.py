# SPDX-License-Identifier: Apache-2.0
"""Attacks on the localhost bridge, each against a real `cardd serve` on the real pcscd
(bridge-security.md §2). Browser-driven attacks are in the Chromium tests.

The daemon here runs with a short ``read_timeout`` and a small per-origin limit so that the slow
client and connection-limit attacks finish quickly; no assertion depends on timing: timeouts in
these tests only stop a test that would otherwise hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import READER0, fixture_card, wait_card, wait_listening

pytestmark = pytest.mark.pcsc

FULL = "https://desk.example.tw"  # every scope
NONE = "https://none.example.tw"  # allowlisted, no scope
SCOPED = {  # origin holding only this scope
    "readers": "https://readers.example.tw",
    "moica": "https://moica.example.tw",
    "rfid:read": "https://kiosk.example.tw",
    "rfid:write": "https://office.example.tw",
}
ALL = ("readers", "moica", "rfid:read", "rfid:write")
READ_TIMEOUT = 1.5
PER_ORIGIN = 3
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Server": "cardd",  # not aiohttp's name and version
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.state = tmp / "state"
        self.config = tmp / "cardd.toml"
        keys = tmp / "keys.toml"
        keys.write_text(
            '[student_card]\nsector = 14\nkey_a = "A0A1A2A3A4A5"\nkey_b = "B0B1B2B3B4B5"\n'
        )
        keys.chmod(0o600)
        origins = f'[api.origins."{FULL}"]\nscopes = {json.dumps(list(ALL))}\n'
        origins += f'[api.origins."{NONE}"]\nscopes = []\n'
        for scope, origin in SCOPED.items():
            origins += f'[api.origins."{origin}"]\nscopes = ["{scope}"]\n'
        self.config.write_text(
            f'[rfid]\nkey_file = "{keys}"\nstation = "test-desk"\n'
            f"[api]\nport = {self.port}\nread_timeout = {READ_TIMEOUT}\n"
            f"max_connections_per_origin = {PER_ORIGIN}\nmax_body_bytes = 4096\n{origins}"
        )
        self.env = dict(os.environ, CARDD_STATE_DIR=str(self.state))
        self.env.pop("CARDD_CONFIG", None)
        self.log_path = tmp / "cardd.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cardd.cli.main", "--config", str(self.config), "serve"],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_listening(self.proc, self.port, self.log_path, timeout=15)
        self.token = (self.state / "token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cardd.cli.main", "--config", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def daemon(pcscd, tmp_path_factory):
    """One daemon for the module: each test leaves it as it found it (the token tests use their
    own daemon)."""
    tmp = tmp_path_factory.mktemp("api-security")
    d = Daemon(tmp)
    yield d
    d.stop()
    assert d.proc.returncode == 0, d.log_path.read_text()


@pytest.fixture
def own_daemon(pcscd, tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.stop()
    assert d.proc.returncode == 0, d.log_path.read_text()


async def request(
    d: Daemon, method: str, path: str, headers: dict[str, str] | None = None, body=None, data=None
) -> tuple[int, dict, dict | None]:
    async with aiohttp.ClientSession() as s:
        kw = {"json": body} if body is not None else {"data": data}
        async with s.request(method, d.url + path, headers=headers or {}, **kw) as r:
            text = await r.text()
            try:
                parsed = json.loads(text) if text else None
            except json.JSONDecodeError:
                parsed = {"raw": text}
            return r.status, dict(r.headers), parsed


def assert_security_headers(headers: dict) -> None:
    for k, v in SECURITY_HEADERS.items():
        assert headers.get(k) == v, (k, headers)
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def raw_connection(d: Daemon) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=30)  # the hang guard
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


# -- Host: DNS rebinding --------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example:{port}",
        "127.0.0.1.evil.com:{port}",
        "localhost.evil.com:{port}",
        "127.0.0.1:{port}.evil.com",
    ],
)
@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("GET", "/v1/readers", {}),
        ("POST", "/v1/rfid/wait-tap", {"Content-Type": "application/json"}),
        ("OPTIONS", "/v1/rfid/wait-tap", {"Access-Control-Request-Method": "POST"}),
    ],
)
async def test_dns_rebinding_gets_421_even_with_credentials(daemon, host, method, path, extra):
    for creds in (daemon.auth, {"Origin": FULL}):
        headers = {"Host": host.format(port=daemon.port), **creds, **extra}
        status, h, body = await request(daemon, method, path, headers, data=b"{}")
        assert status == 421 and body["error"]["code"] == "misdirected"
        assert "Access-Control-Allow-Origin" not in h
        assert_security_headers(h)


# -- who is calling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/readers"), ("POST", "/v1/student-card/read")]
)
async def test_null_origin_is_refused_even_with_the_token(daemon, method, path):
    status, h, body = await request(
        daemon, method, path, {"Origin": "null", **daemon.auth}, body={}
    )
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in h


async def test_missing_origin_without_token_is_unauthorized(daemon):
    for path in ("/v1/health", "/v1/readers", "/v1/events", "/v1/openapi.json"):
        status, h, body = await request(daemon, "GET", path)
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert h["WWW-Authenticate"] == "Bearer"
    status, _, body = await request(
        daemon, "POST", "/v1/student-card/report-lost", body={"libraryNumber": "A12345678900"}
    )
    assert status == 401


@pytest.mark.parametrize(
    "auth",
    [
        "Bearer wrong",
        "Bearer {token}x",
        "Bearer  ",
        "Basic {token}",
        "{token}",
        "bearer {token} extra",
    ],
)
async def test_wrong_token_is_unauthorized(daemon, auth):
    status, _, body = await request(
        daemon, "GET", "/v1/readers", {"Authorization": auth.format(token=daemon.token)}
    )
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _, _ = await request(daemon, "GET", "/v1/readers", daemon.auth)
    assert status == 200


@pytest.mark.parametrize(
    "fetch_metadata",
    [
        {
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "navigate",
            "Sec-Fetch-Dest": "document",
        },
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
        {"Sec-Fetch-Mode": "no-cors"},
        {"Sec-Fetch-Site": "none"},
        {"Sec-Fetch-Dest": "script"},
    ],
)
async def test_browser_request_without_origin_is_refused_even_with_the_token(
    daemon, fetch_metadata
):
    status, h, body = await request(daemon, "GET", "/v1/readers", {**fetch_metadata, **daemon.auth})
    assert status == 403 and body["error"]["code"] == "origin_required"
    assert "Access-Control-Allow-Origin" not in h
    # a form POST from some page: refused before the body is looked at
    status, _, body = await request(
        daemon,
        "POST",
        "/v1/student-card/report-lost",
        {**fetch_metadata, **daemon.auth},
        body={"libraryNumber": "A12345678900"},
    )
    assert status == 403 and body["error"]["code"] == "origin_required"


SCOPE_ROUTES = {
    "readers": ("GET", "/v1/readers", None),
    "moica": ("POST", "/v1/moica/read", {}),
    "rfid:read": ("POST", "/v1/student-card/read", {}),
    "rfid:write": ("POST", "/v1/student-card/report-lost", {"libraryNumber": "A12345678900"}),
}


@pytest.mark.parametrize("scope", ALL)
async def test_allowed_origin_cannot_use_a_scope_it_lacks(daemon, scope):
    method, path, body = SCOPE_ROUTES[scope]
    lacking = [NONE] + [o for s, o in SCOPED.items() if s != scope]
    for origin in lacking:
        status, h, answer = await request(daemon, method, path, {"Origin": origin}, body=body)
        assert status == 403 and answer["error"]["code"] == "scope_denied", (origin, answer)
        # the page may read why (CORS granted for its allowed origin), nothing else
        assert h["Access-Control-Allow-Origin"] == origin
    status, h, answer = await request(daemon, method, path, {"Origin": SCOPED[scope]}, body=body)
    assert answer is not None and answer.get("error", {}).get("code") != "scope_denied"
    assert status != 403 and h["Access-Control-Allow-Origin"] == SCOPED[scope]


async def test_event_streams_check_origin_and_scope_on_connect(daemon):
    async with aiohttp.ClientSession() as s:
        for origin, code in (
            ("https://evil.example", "origin_not_allowed"),
            (SCOPED["rfid:read"], "scope_denied"),
            ("null", "origin_not_allowed"),
        ):
            async with s.get(daemon.url + "/v1/events", headers={"Origin": origin}) as r:
                assert r.status == 403 and (await r.json())["error"]["code"] == code
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await s.ws_connect(daemon.url + "/v1/ws", origin=origin)
            assert e.value.status == 403
        async with s.get(daemon.url + "/v1/events", headers={"Origin": SCOPED["readers"]}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == SCOPED["readers"]
            assert_security_headers(dict(r.headers))
            assert (await r.content.readline()).startswith(b"event: hello")


# -- preflight --------------------------------------------------------------------------------


async def test_preflight_grants_only_what_is_allowed(daemon):
    ask = {
        "Origin": FULL,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
        "Access-Control-Request-Private-Network": "true",
    }
    status, h, _ = await request(daemon, "OPTIONS", "/v1/student-card/burn", ask)
    assert status == 204
    assert h["Access-Control-Allow-Origin"] == FULL and h["Vary"] == "Origin"
    assert h["Access-Control-Allow-Methods"] == "POST"
    assert h["Access-Control-Allow-Headers"] == "Content-Type"
    assert h["Access-Control-Allow-Private-Network"] == "true"
    assert int(h["Access-Control-Max-Age"]) > 0
    assert_security_headers(h)
    status, h, _ = await request(
        daemon,
        "OPTIONS",
        "/v1/student-card/burn",
        {**ask, "Access-Control-Request-Private-Network": ""},
    )
    assert status == 204 and "Access-Control-Allow-Private-Network" not in h

    refused = [
        {**ask, "Origin": "https://evil.example"},
        {**ask, "Origin": "null"},
        {**ask, "Access-Control-Request-Method": "PUT"},
        {**ask, "Access-Control-Request-Method": "DELETE"},
        {**ask, "Access-Control-Request-Headers": "content-type, x-evil"},
        {**ask, "Access-Control-Request-Headers": "authorization"},
    ]
    for headers in refused:
        status, h, _ = await request(daemon, "OPTIONS", "/v1/student-card/burn", headers)
        assert status in (403, 404), headers
        assert not any(k.startswith("Access-Control-Allow") for k in h), (headers, h)
    # POST on a GET-only path, and a path that does not exist
    for path in ("/v1/readers", "/v1/nothing"):
        status, h, _ = await request(daemon, "OPTIONS", path, ask)
        assert status in (403, 404)
        assert not any(k.startswith("Access-Control-Allow") for k in h)


# -- bodies -----------------------------------------------------------------------------------


async def test_oversized_body_is_refused_and_the_daemon_keeps_serving(daemon):
    big = {"libraryNumber": "A" * 20000}
    status, h, body = await request(
        daemon, "POST", "/v1/student-card/report-lost", {"Origin": SCOPED["rfid:write"]}, body=big
    )
    assert status == 413 and body["error"]["code"] == "body_too_large"
    assert h["Access-Control-Allow-Origin"] == SCOPED["rfid:write"]
    assert_security_headers(h)

    async def chunks():  # chunked: no Content-Length to refuse it by
        for _ in range(40):
            yield b" " * 1024

    status, _, body = await request(
        daemon,
        "POST",
        "/v1/rfid/wait-tap",
        {**daemon.auth, "Content-Type": "application/json"},
        data=chunks(),
    )
    assert status == 413 and body["error"]["code"] == "body_too_large"
    status, _, body = await request(daemon, "GET", "/v1/health", daemon.auth)
    assert status == 200 and body["backends"]["pcsc"] == "up"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_simple_request_posts_are_415_before_any_effect(daemon, content_type):
    headers = {"Origin": FULL}
    if content_type:
        headers["Content-Type"] = content_type
    # wait-tap would block for 10 s if it ran: 415 comes back without waiting for a tap
    status, h, body = await request(
        daemon, "POST", "/v1/rfid/wait-tap", headers, data=b'{"timeoutMs": 10000}'
    )
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    assert h["Access-Control-Allow-Origin"] == FULL


async def test_strict_bodies_name_the_offending_key(daemon):
    cases = [
        ({"timeoutMs": 100, "evil": 1}, "evil"),
        ({"timeoutMs": "100"}, "timeoutMs"),
        ({"timeoutMs": True}, "timeoutMs"),
        ({"timeoutMs": 99}, "timeoutMs"),
        ({"reader": 5}, "reader"),
        ([1, 2], "object"),
    ]
    for body, named in cases:
        status, _, answer = await request(
            daemon, "POST", "/v1/rfid/wait-tap", {"Origin": FULL}, body=body
        )
        assert status == 400 and answer["error"]["code"] == "invalid_input", body
        assert named in answer["error"]["message"], answer
    status, _, answer = await request(
        daemon, "POST", "/v1/student-card/burn", {"Origin": FULL}, body={"reissue": True}
    )
    assert status == 400 and "idNumber" in answer["error"]["message"]
    status, _, answer = await request(
        daemon,
        "POST",
        "/v1/rfid/wait-tap",
        {"Origin": FULL},
        data=b"{not json",
    )
    assert status == 415  # no JSON content type given: refused before parsing
    status, _, answer = await request(
        daemon,
        "POST",
        "/v1/rfid/wait-tap",
        {"Origin": FULL, "Content-Type": "application/json"},
        data=b"{not json",
    )
    assert status == 400 and answer["error"]["code"] == "invalid_input"
    # null for an optional key means "not given"
    status, _, answer = await request(
        daemon,
        "POST",
        "/v1/rfid/wait-tap",
        {"Origin": FULL},
        body={"reader": None, "timeoutMs": 100},
    )
    assert status == 504 and answer["error"]["code"] == "timeout"


async def test_no_route_changes_state_on_get(daemon):
    status, _, doc = await request(daemon, "GET", "/v1/openapi.json", daemon.auth)
    assert status == 200
    posts = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method == "get":
                assert "requestBody" not in op, path
            else:
                assert method == "post", (path, method)
                assert "application/json" in op["requestBody"]["content"]
                posts.append(path)
    assert "/v1/student-card/burn" in posts and "/v1/moica/authenticate" in posts
    for template in posts:  # a GET (an <img src>, a link) on any of them does nothing
        path = re.sub(r"\{[^}]+\}", "x", template)
        for creds in (daemon.auth, {"Origin": FULL}):
            status, h, body = await request(daemon, "GET", path, creds)
            assert status == 405 and body["error"]["code"] == "method_not_allowed"
            assert h["Allow"] == "POST"
            assert_security_headers(h)


# -- slow clients ---------------------------------------------------------------------------


async def test_slowloris_header_trickle_is_cut_off_and_others_are_served(daemon):
    loop = asyncio.get_running_loop()
    sock = raw_connection(daemon)
    sock.sendall(f"GET /v1/health HTTP/1.1\r\nHost: {daemon.host}\r\n".encode())
    closed = asyncio.Event()
    answer = bytearray()

    def trickle() -> None:
        try:
            for i in range(200):  # one header line every 0.2 s: would take 40 s
                sock.sendall(f"X-Slow-{i}: x\r\n".encode())
                time.sleep(0.2)
        except OSError:
            pass  # the daemon closed the connection: what we want

    def reader() -> None:
        answer.extend(read_until_closed(sock))
        loop.call_soon_threadsafe(closed.set)

    sender = loop.run_in_executor(None, trickle)
    loop.run_in_executor(None, reader)
    # while the slow client holds its connection, others are served
    for _ in range(3):
        status, _, body = await request(daemon, "GET", "/v1/health", daemon.auth)
        assert status == 200
    await asyncio.wait_for(closed.wait(), 30)
    sock.close()
    await sender
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"X-Frame-Options: DENY" in head
    assert json.loads(body)["error"]["code"] == "request_timeout"
    status, _, _ = await request(daemon, "GET", "/v1/health", daemon.auth)
    assert status == 200


async def test_connection_that_never_sends_a_request_is_closed(daemon):
    sock = raw_connection(daemon)
    data = await asyncio.get_running_loop().run_in_executor(None, read_until_closed, sock)
    sock.close()
    assert data.startswith(b"HTTP/1.1 408")


async def test_slow_body_is_cut_off_and_others_are_served(daemon):
    loop = asyncio.get_running_loop()
    sock = raw_connection(daemon)
    sock.sendall(
        (
            f"POST /v1/student-card/report-lost HTTP/1.1\r\nHost: {daemon.host}\r\n"
            f"Origin: {SCOPED['rfid:write']}\r\nContent-Type: application/json\r\n"
            "Content-Length: 400\r\n\r\n{"
        ).encode()
    )

    def trickle() -> None:
        try:
            for _ in range(399):
                sock.sendall(b" ")
                time.sleep(0.1)
        except OSError:
            pass

    sender = loop.run_in_executor(None, trickle)
    receiver = loop.run_in_executor(None, read_until_closed, sock)
    for _ in range(3):
        status, _, _ = await request(daemon, "GET", "/v1/health", daemon.auth)
        assert status == 200
    data = await asyncio.wait_for(receiver, 30)
    sock.close()
    await sender
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert b"Access-Control-Allow-Origin: " + SCOPED["rfid:write"].encode() in head


async def test_malformed_request_gets_json_without_internals(daemon):
    sock = raw_connection(daemon)
    sock.sendall(
        b"GET /v1/health HTTP/1.1\r\nHost: " + daemon.host.encode() + b"\r\nBad Header\r\n\r\n"
    )
    data = await asyncio.get_running_loop().run_in_executor(None, read_until_closed, sock)
    sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] in (b"HTTP/1.0 400 Bad Request", b"HTTP/1.1 400 Bad Request")
    assert b"X-Content-Type-Options: nosniff" in head
    assert b"aiohttp" not in head and b"Python" not in head
    assert json.loads(body) == {
        "error": {"code": "bad_request", "message": "The request is not valid HTTP."}
    }


# -- limits -----------------------------------------------------------------------------------


async def test_per_origin_connection_limit(daemon):
    async with aiohttp.ClientSession() as s:
        streams = []
        for _ in range(PER_ORIGIN):  # event streams count while they are open
            r = await s.get(daemon.url + "/v1/events", headers={"Origin": FULL})
            assert r.status == 200
            await r.content.readline()  # the hello event: the stream is open
            streams.append(r)
        status, h, body = await request(daemon, "GET", "/v1/readers", {"Origin": FULL})
        assert status == 429 and body["error"]["code"] == "too_many_connections"
        assert h["Access-Control-Allow-Origin"] == FULL
        # other origins and local programs are not affected
        assert (await request(daemon, "GET", "/v1/readers", {"Origin": SCOPED["readers"]}))[
            0
        ] == 200
        assert (await request(daemon, "GET", "/v1/readers", daemon.auth))[0] == 200
        streams.pop().close()
        for _ in range(100):  # until the daemon has noticed the closed stream
            status, _, _ = await request(daemon, "GET", "/v1/readers", {"Origin": FULL})
            if status == 200:
                break
            assert status == 429
            await asyncio.sleep(0.05)
        assert status == 200
        for r in streams:
            r.close()


async def test_second_operation_on_a_busy_reader_gets_409_reader_busy(daemon, vreaders):
    from cardd.sim.cards.faults import FaultyCard

    card = FaultyCard(fixture_card("classic_1k_student.json"))
    vreaders[0].insert(card)
    wait_card(READER0, present=True)
    for _ in range(100):  # the daemon has seen the card and finished reading its UID (the tap)
        _, _, body = await request(daemon, "GET", "/v1/readers", daemon.auth)
        r0 = next(r for r in body["readers"] if r["name"] == READER0)
        if r0["cardPresent"] and not r0["busy"]:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    card.delay_next(3.0, 1)  # the next APDU takes 3 s: the first read holds the reader
    first = asyncio.create_task(
        request(daemon, "POST", "/v1/student-card/read", {"Origin": FULL}, body={"reader": READER0})
    )
    for _ in range(200):
        _, _, body = await request(daemon, "GET", "/v1/readers", daemon.auth)
        if next(r for r in body["readers"] if r["name"] == READER0)["busy"]:
            break
        await asyncio.sleep(0.02)
    status, h, body = await request(
        daemon, "POST", "/v1/student-card/read", {"Origin": FULL}, body={"reader": READER0}
    )
    assert status == 409 and body["error"]["code"] == "reader_busy"
    assert READER0 not in body["error"]["message"]  # the page gets the generic text
    status, _, body = await first
    assert status == 200, body


# -- token file -------------------------------------------------------------------------------


async def test_token_rotation_takes_effect_without_restart(own_daemon):
    daemon = own_daemon
    token_file = daemon.state / "token"
    old = daemon.token
    assert (await request(daemon, "GET", "/v1/readers", daemon.auth))[0] == 200
    shown = daemon.cli("token", "show")
    assert shown.returncode == 0 and shown.stdout.strip() == str(token_file)
    assert old not in shown.stdout
    assert daemon.cli("token", "show", "--print").stdout.strip() == old

    rotated = daemon.cli("token", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new = token_file.read_text().strip()
    assert new != old and new not in rotated.stdout
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert not [p for p in token_file.parent.iterdir() if p.name.startswith(".token-")]

    # the new token works on its first request (a refused token makes cardd look at the file)
    status, _, _ = await request(daemon, "GET", "/v1/readers", {"Authorization": f"Bearer {new}"})
    assert status == 200
    status, body = await refused_soon(daemon, old)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    # twice more, also within the same second (the file's inode changes with every rename)
    for _ in range(2):
        printed = daemon.cli("token", "rotate", "--print").stdout.strip().splitlines()[-1]
        assert printed == token_file.read_text().strip()
        assert (
            await request(daemon, "GET", "/v1/readers", {"Authorization": f"Bearer {printed}"})
        )[0] == 200
        assert (await refused_soon(daemon, new))[0] == 401
        new = printed


async def refused_soon(daemon, token: str) -> tuple[int, dict]:
    """Ask with ``token`` until it is refused: cardd trusts an accepted token for up to
    TOKEN_RECHECK_SECONDS (1 s) before it looks at the token file again. The bound here is
    generous for a loaded machine; a token that stays accepted fails the test. Once refused, it
    stays refused."""
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(50):
        status, _, body = await request(daemon, "GET", "/v1/readers", auth)
        if status != 200:
            break
        await asyncio.sleep(0.1)
    again = (await request(daemon, "GET", "/v1/readers", auth))[0]
    assert again == status, "a refused token was accepted again"
    return status, body


async def test_missing_token_file_accepts_no_token(own_daemon):
    daemon = own_daemon
    token_file = daemon.state / "token"
    token_file.unlink()
    status, _ = await refused_soon(daemon, daemon.token)
    assert status == 401
    assert daemon.cli("token", "rotate").returncode == 0
    new = token_file.read_text().strip()
    assert (await request(daemon, "GET", "/v1/readers", {"Authorization": f"Bearer {new}"}))[
        0
    ] == 200


# -- headers on every answer ------------------------------------------------------------------


async def test_every_kind_of_answer_has_the_security_headers(daemon):
    answers = [
        await request(daemon, "GET", "/v1/health", daemon.auth),  # 200
        await request(daemon, "GET", "/v1/health"),  # 401
        await request(daemon, "GET", "/v1/health", {"Origin": "https://evil.example"}),  # 403
        await request(daemon, "GET", "/v1/nothing", daemon.auth),  # 404
        await request(daemon, "DELETE", "/v1/readers", daemon.auth),  # 405
        await request(daemon, "GET", "/v1/health", {"Host": "evil.example", **daemon.auth}),  # 421
        await request(daemon, "POST", "/v1/rfid/wait-tap", {"Origin": FULL}, data=b"x"),  # 415
        await request(
            daemon,
            "OPTIONS",
            "/v1/rfid/wait-tap",
            {"Origin": FULL, "Access-Control-Request-Method": "POST"},
        ),  # 204
    ]
    assert [a[0] for a in answers] == [200, 401, 403, 404, 405, 421, 415, 204]
    for status, h, body in answers:
        assert_security_headers(h)
        assert h["Vary"] == "Origin"
        if status >= 400:
            assert set(body) == {"error"} and set(body["error"]) >= {"code", "message"}
            assert "Traceback" not in json.dumps(body)
