# SPDX-License-Identifier: Apache-2.0
"""`cardd kiosk` as a separate process for the kiosk tests: configuration, event stream, cards.

The daemon talks to the real pcscd + vpcd, the SIP2 test server (cardd.sim.sip2_server, run by
the test on its own event loop), serial readers played on pseudo-terminals, and the real
issuance ledger (a SQLite file the test burns cards into before the daemon starts).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from cardd.sim.cards.mifare import MifareClassic
from cardd.sim.sip2_server import TestPatron
from tests.helpers import READER0, fixture_card, wait_card, wait_listening

KEYS = '[student_card]\nsector = 14\nkey_a = "A0A1A2A3A4A5"\nkey_b = "B0B1B2B3B4B5"\n'
PERSON = "A123456789"
EASYCARD_CHIP = "3224478099"  # 內碼 of easycard_4b.json (UID 93A131C0)
EM4100_TAG = b"62E3086CED"
EM4100_DEC = "3808980205"  # the 4 tag bytes E3086CED as a 10-digit decimal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def patrons() -> dict[str, TestPatron]:
    virtual = "CUTE-1-" + time.strftime("%Y%m%d%H%M%S")
    table = [
        TestPatron(EASYCARD_CHIP, "林美玲", screen_messages=("請於 11/20 前歸還圖書",)),
        TestPatron(PERSON + "01", "王小明"),
        TestPatron(EM4100_DEC, "Staff door card"),
        TestPatron(virtual, "Interlibrary reader"),
    ]
    return {p.patron_id: p for p in table}


def student(uid: str) -> MifareClassic:
    base = fixture_card("classic_1k_student.json")
    return MifareClassic(bytes.fromhex(uid), base.dump())


def easycard() -> Any:
    return fixture_card("easycard_4b.json")


def uid_card(uid: str) -> Any:
    from cardd.sim.cards.uid import UidCard

    return UidCard(bytes.fromhex(uid))


class KioskDaemon:
    def __init__(self, tmp: Path, sip2_port: int, kiosk: str = "", extra: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = tmp
        self.state = tmp / "state"
        self.config = tmp / "cardd.toml"
        self.ledger = tmp / "ledger.sqlite3"
        self.key_file = tmp / "keys.toml"
        self.key_file.write_text(KEYS)
        self.key_file.chmod(0o600)
        self.config.write_text(
            f'[rfid]\nkey_file = "{self.key_file}"\nledger = "{self.ledger}"\n'
            f'station = "gate-1"\n'
            f"[api]\nport = {self.port}\n"
            f"[kiosk]\nreport_seconds = 0.5\n{kiosk}\n"
            f'[kiosk.sip2]\nhost = "127.0.0.1"\nport = {sip2_port}\nuser = "kiosk"\n'
            f'password = "secret"\ninstitution = "MAIN"\ntimeout = 1.0\n'
            f"{extra}"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start(self) -> KioskDaemon:
        env = dict(os.environ, CARDD_STATE_DIR=str(self.state))
        self.log = open(self.tmp / "cardd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cardd.cli.main", "--config", str(self.config), "kiosk"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_listening(self.proc, self.port, self.tmp / "cardd.log", timeout=20)
        self.token = (self.state / "token").read_text().strip()
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        return (self.tmp / "cardd.log").read_text(errors="replace")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, CARDD_STATE_DIR=str(self.state))
        return subprocess.run(
            [sys.executable, "-m", "cardd.cli.main", "--config", str(self.config), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )


class EventStream:
    """The daemon's /v1/events (bearer token), parsed; `next(type)` skips other events."""

    def __init__(self, daemon: KioskDaemon, path: str = "/v1/events", auth: bool = True) -> None:
        self.daemon = daemon
        self.path = path
        self.auth = auth
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def __aenter__(self) -> EventStream:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))  # a stream
        headers = {"Authorization": f"Bearer {self.daemon.token}"} if self.auth else {}
        self.resp = await self.session.get(self.daemon.url + self.path, headers=headers)
        assert self.resp.status == 200, await self.resp.text()
        hello = await self.next("hello")
        self.hello = hello
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.resp.close()
        await self.session.close()

    async def _one(self) -> tuple[str, dict[str, Any]]:
        kind, data = "message", ""
        while True:
            line = (await self.resp.content.readline()).decode()
            if not line:
                raise EOFError("the event stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
            elif line == "" and data:
                return kind, json.loads(data)

    async def next(self, type_: str, timeout: float = 15.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                kind, data = await self._one()
                self.seen.append((kind, data))
                if kind == type_:
                    return data


def tap(vreaders: Any, card: Any, slot: int = 0) -> None:
    """Put a card on the reader and take it off again, as at a gate."""
    vreaders[slot].insert(card)
    wait_card(READER0, present=True)


def lift(vreaders: Any, slot: int = 0) -> None:
    vreaders[slot].remove()
    wait_card(READER0, present=False)
