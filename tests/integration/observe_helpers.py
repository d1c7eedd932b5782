# SPDX-License-Identifier: Apache-2.0
"""A `cardd serve` subprocess with its log in a LogsDirectory, for the observability and
reload tests; plus a minimal SSE reader and a metrics scraper."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_listening


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(
        self,
        tmp: Path,
        config_text: str,
        *,
        port: int,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.tmp = tmp
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.state = tmp / "state"
        self.logs = tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        self.log_path = self.logs / "cardd.log"
        self.config = tmp / "cardd.toml"
        self.config.write_text(config_text)
        self.env = dict(
            os.environ,
            CARDD_STATE_DIR=str(self.state),
            LOGS_DIRECTORY=str(self.logs),
            **(env or {}),
        )
        self.env.pop("JOURNAL_STREAM", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cardd.cli.main", *args, "--config", str(self.config), "serve"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_listening(self.proc, port, self.log_path, timeout=20)
        self.token = (self.state / "token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cardd.cli.main", "--config", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sighup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict]:
        async with aiohttp.ClientSession() as s:
            async with s.get(
                self.url + path, headers=headers if headers is not None else self.auth
            ) as r:
                return r.status, await r.text(), dict(r.headers)

    async def post(
        self, path: str, body: dict, headers: dict[str, str] | None = None
    ) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s:
            async with s.post(
                self.url + path, json=body, headers=headers if headers is not None else self.auth
            ) as r:
                return r.status, await r.json(content_type=None)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text, headers = await self.get("/v1/metrics")
        assert status == 200, text
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_metric(d: Daemon, pred, timeout: float = 15.0) -> dict:
    """Scrape until ``pred(samples)`` holds (values collected at scrape time lag the event)."""
    deadline = time.monotonic() + timeout
    while True:
        s = await d.metrics()
        if pred(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(
                "metric condition not reached; last scrape:\n"
                + "\n".join(f"{k} {v}" for k, v in sorted(s.items()) if k[0].startswith("cardd"))
            )
        await asyncio.sleep(0.2)


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
