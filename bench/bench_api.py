#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The localhost API under load: the security layer's cost, and event fan-out to many streams.

1. **GET /v1/readers, 64 concurrent connections** (``wrk -t1 -c64``, a separate process) against
   `cardd serve` and, in the same run, against a bare aiohttp app in its own process (this file
   with ``--bare``) that answers the same JSON (``json_response`` of the same dict) with no
   middleware. cardd is measured twice: as a local program (bearer token: Host check, fetch
   metadata check, token-file ``stat``) and as a browser page (``Origin``: allowlist, scope,
   per-origin counting, CORS headers). Rounds alternate bare / token / origin so that machine
   noise hits all three alike; the median round counts. Goal: cardd ≥ 0.8 × bare requests/s.
2. **One event, 200 SSE subscribers.** A subscriber process (this file with ``--sse-client``)
   holds 200 ``/v1/events`` streams; this process inserts and removes a virtual card through
   the real pcscd (vpcd) and cardd publishes ``card.inserted``/``card.removed``/``tag.tapped``.
   Per event: spread = last arrival − first arrival over the 200 streams (one clock, the
   subscriber's). Goal: p99 spread ≤ 50 ms over ≥ 50 events. Memory: cardd's RSS with the
   200 streams open minus before, / 200.

Run as root (private pcscd): .venv/bin/python bench/bench_api.py [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GOAL_RATIO = 0.8
GOAL_SPREAD_P99_MS = 50.0
ORIGIN = "https://bench.example.tw"
SUBSCRIBERS = 200


# -- helper processes -------------------------------------------------------------------------


def run_bare(port: int, body_file: str) -> None:
    """A bare aiohttp app answering GET /v1/readers with the same JSON cardd gave."""
    from aiohttp import web

    payload = json.loads(Path(body_file).read_text())

    async def readers(request: web.Request) -> web.Response:
        # a fresh dict per request and json_response, as cardd's handler does
        return web.json_response({"readers": [dict(r) for r in payload["readers"]]})

    app = web.Application()
    app.router.add_get("/v1/readers", readers)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def sse_client(url: str, token: str, n: int, out_file: str) -> None:
    """Hold ``n`` event streams; record each chunk's arrival time; write them on SIGTERM.

    Plain asyncio protocols, not an HTTP client library: ``data_received`` stamps the time the
    moment the kernel hands the bytes over, and parsing waits until the end, so the spread
    measured is cardd's fan-out, not this process's parsing.
    """
    from urllib.parse import urlsplit

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    parts = urlsplit(url)
    request = (
        f"GET /v1/events HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    all_ready = asyncio.Event()
    ready = [0]

    class Stream(asyncio.Protocol):
        def __init__(self) -> None:
            self.chunks: list[tuple[float, bytes]] = []
            self.hello = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(request)  # type: ignore[attr-defined]

        def data_received(self, data: bytes) -> None:
            now = time.monotonic()
            if not self.hello:
                if b"event: hello" in data:
                    self.hello = True
                    ready[0] += 1
                    if ready[0] == n:
                        all_ready.set()
                return
            self.chunks.append((now, data))

    streams = []
    for _ in range(n):
        _, proto = await loop.create_connection(Stream, parts.hostname, parts.port)
        streams.append(proto)
    await all_ready.wait()
    print("ready", flush=True)
    await stop.wait()
    arrivals: dict[int, list[float]] = {}
    kinds: dict[int, str] = {}
    for proto in streams:
        # chunked transfer encoding around SSE frames: find "id: N\nevent: T" in the bytes
        for t, data in proto.chunks:
            for m in re.finditer(rb"id: (\d+)\nevent: ([^\n]+)\n", data):
                seq = int(m.group(1))
                arrivals.setdefault(seq, []).append(t)
                kinds[seq] = m.group(2).decode()
    Path(out_file).write_text(
        json.dumps(
            {
                "arrivals": {str(k): v for k, v in arrivals.items()},
                "kinds": {str(k): v for k, v in kinds.items()},
            }
        )
    )


# -- cardd ------------------------------------------------------------------------------------


class Cardd:
    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = C.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = workdir / "state"
        config = workdir / "cardd.toml"
        # The per-origin limit is raised for the load test only: 64 connections of one origin
        # are a load generator, not a browser (which opens 6).
        config.write_text(
            f"[api]\nport = {self.port}\nmax_connections_per_origin = 256\n"
            f'[api.origins."{ORIGIN}"]\nscopes = ["readers"]\n'
        )
        env = dict(os.environ, CARDD_STATE_DIR=str(self.state))
        env.pop("CARDD_CONFIG", None)
        self.log = open(workdir / "cardd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(C.CARDD_SCRIPT), "--config", str(config), "serve"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc)
        self.token = (self.state / "token").read_text().strip()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- part 1: wrk ------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, headers: dict[str, str], seconds: int, connections: int) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for q in ("50", "99"):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        lat[q] = float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50_ms": lat["50"],
        "p99_ms": lat["99"],
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def bench_readers(
    cardd: Cardd, tmp: Path, seconds: int, rounds: int, connections: int
) -> dict[str, Any]:
    import urllib.request

    import psutil

    req = urllib.request.Request(
        cardd.url + "/v1/readers", headers={"Authorization": f"Bearer {cardd.token}"}
    )
    with urllib.request.urlopen(req) as r:  # noqa: S310 - loopback
        body = r.read()
    body_file = tmp / "readers.json"
    body_file.write_bytes(body)
    bare_port = C.free_port()
    bare = subprocess.Popen([sys.executable, __file__, "--bare", str(bare_port), str(body_file)])
    try:
        wait_port(bare_port, bare)
        targets = {
            "bare": (f"http://127.0.0.1:{bare_port}/v1/readers", {}),
            "cardd_token": (cardd.url + "/v1/readers", {"Authorization": f"Bearer {cardd.token}"}),
            "cardd_origin": (cardd.url + "/v1/readers", {"Origin": ORIGIN}),
        }
        # Server CPU time per request (all its threads): a second view, less sensitive than
        # req/s to other tenants of a shared machine taking the CPU away.
        server = {"bare": psutil.Process(bare.pid), "cardd": psutil.Process(cardd.proc.pid)}

        def cpu_s(name: str) -> float:
            t = server["bare" if name == "bare" else "cardd"].cpu_times()
            return float(t.user + t.system)

        for url, headers in targets.values():  # warm-up (imports, first connections)
            wrk(url, headers, 2, connections)
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
        for i in range(rounds):
            for name, (url, headers) in targets.items():
                cpu_before = cpu_s(name)
                res = wrk(url, headers, seconds, connections)
                res["cpu_us_per_req"] = (cpu_s(name) - cpu_before) * 1e6 / (res["rps"] * seconds)
                runs[name].append(res)
                print(
                    f"  round {i + 1} {name:13s} {res['rps']:8.0f} req/s  p50 {res['p50_ms']:6.2f} ms  "
                    f"p99 {res['p99_ms']:6.2f} ms  {res['cpu_us_per_req']:5.0f} us CPU/req  "
                    f"non-2xx {res['non_2xx']} {res['socket_errors']}",
                    flush=True,
                )
    finally:
        bare.terminate()
        bare.wait(10)
    result: dict[str, Any] = {
        "connections": connections,
        "seconds": seconds,
        "rounds": rounds,
        "runs": runs,
    }
    for name in ("cardd_token", "cardd_origin"):
        ratios = sorted(c["rps"] / b["rps"] for c, b in zip(runs[name], runs["bare"], strict=True))
        result[f"{name}_ratio_median"] = C.quantile(ratios, 0.5)
        result[f"{name}_ratios"] = ratios
    for name, rs in runs.items():
        result[f"{name}_median"] = {
            k: C.quantile(sorted(r[k] for r in rs), 0.5)
            for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")
        }
    return result


# -- part 2: SSE fan-out ----------------------------------------------------------------------


def bench_fanout(env: C.Env, cardd: Cardd, tmp: Path, cycles: int) -> dict[str, Any]:
    import psutil

    proc = psutil.Process(cardd.proc.pid)
    time.sleep(1.0)
    rss_before = proc.memory_info().rss
    out_file = tmp / "sse.json"
    client = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--sse-client",
            cardd.url,
            cardd.token,
            str(SUBSCRIBERS),
            str(out_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    line = client.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"SSE client did not get ready: {line!r}")
    time.sleep(1.0)
    rss_open = proc.memory_info().rss
    card = C.load_card("easycard_4b.json")
    for _ in range(cycles):
        env.vreaders[0].insert(card)
        C.wait_card(C.READER0, present=True)
        time.sleep(0.25)  # card.inserted and the tap (UID read) reach all streams
        env.vreaders[0].remove()
        C.wait_card(C.READER0, present=False)
        time.sleep(0.15)
    time.sleep(0.5)
    client.send_signal(signal.SIGTERM)
    client.wait(30)
    data = json.loads(out_file.read_text())
    spreads, partial = [], 0
    by_kind: dict[str, list[float]] = {}
    for seq, times in data["arrivals"].items():
        if len(times) < SUBSCRIBERS:
            partial += 1
            continue
        spread = (max(times) - min(times)) * 1000
        spreads.append(spread)
        by_kind.setdefault(data["kinds"][seq], []).append(spread)
    return {
        "subscribers": SUBSCRIBERS,
        "events_complete": len(spreads),
        "events_partial": partial,
        "spread_ms": C.summary(spreads),
        "spread_ms_by_event": {k: C.summary(v) for k, v in sorted(by_kind.items())},
        "rss_before_mb": rss_before / 2**20,
        "rss_with_streams_mb": rss_open / 2**20,
        "kib_per_subscriber": (rss_open - rss_before) / SUBSCRIBERS / 1024,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        run_bare(int(sys.argv[2]), sys.argv[3])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--sse-client":
        asyncio.run(sse_client(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=5, help="wrk duration per run (default 5)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument(
        "--cycles",
        type=int,
        default=30,
        help="insert/remove cycles for the SSE part "
        "(each gives 3 events: inserted, tapped, removed; default 30 = 90 events)",
    )
    args = p.parse_args()

    env = C.Env()
    env.wait_readers()
    tmp = env.tmp / "api"
    cardd = Cardd(tmp)
    try:
        print(
            f"GET /v1/readers, {args.connections} connections, wrk -t1, {args.rounds} rounds of "
            f"{args.seconds} s each"
        )
        readers = bench_readers(cardd, tmp, args.seconds, args.rounds, args.connections)
        print(f"\nSSE fan-out: {SUBSCRIBERS} subscribers, {args.cycles} insert/remove cycles")
        fanout = bench_fanout(env, cardd, tmp, args.cycles)
    finally:
        cardd.stop()

    rows = [
        [
            name,
            f"{readers[name + '_median']['rps']:.0f}",
            f"{readers[name + '_median']['p50_ms']:.2f}",
            f"{readers[name + '_median']['p99_ms']:.2f}",
            f"{readers[name + '_median']['cpu_us_per_req']:.0f}",
            "1.000" if name == "bare" else f"{readers[name + '_ratio_median']:.3f}",
        ]
        for name in ("bare", "cardd_token", "cardd_origin")
    ]
    print()
    print(
        C.table(
            ["server", "req/s (median)", "p50 ms", "p99 ms", "CPU us/req", "ratio to bare"], rows
        )
    )
    s = fanout["spread_ms"]
    print(
        f"\nSSE fan-out to {SUBSCRIBERS}: {fanout['events_complete']} events complete "
        f"({fanout['events_partial']} partial); spread p50 {s.get('p50', float('nan')):.1f} ms, "
        f"p99 {s.get('p99', float('nan')):.1f} ms, max {s.get('max', float('nan')):.1f} ms; "
        f"{fanout['kib_per_subscriber']:.1f} KiB RSS per subscriber "
        f"({fanout['rss_before_mb']:.1f} -> {fanout['rss_with_streams_mb']:.1f} MB)"
    )
    ok_token = readers["cardd_token_ratio_median"] >= GOAL_RATIO
    ok_origin = readers["cardd_origin_ratio_median"] >= GOAL_RATIO
    ok_spread = fanout["events_complete"] >= 50 and s.get("p99", float("inf")) <= GOAL_SPREAD_P99_MS
    print(
        f"\n{C.verdict(ok_token)}: cardd (token) / bare = {readers['cardd_token_ratio_median']:.3f} "
        f"(goal >= {GOAL_RATIO})"
    )
    print(
        f"{C.verdict(ok_origin)}: cardd (origin) / bare = {readers['cardd_origin_ratio_median']:.3f} "
        f"(goal >= {GOAL_RATIO})"
    )
    print(
        f"{C.verdict(ok_spread)}: SSE spread p99 = {s.get('p99', float('nan')):.1f} ms over "
        f"{fanout['events_complete']} events (goal <= {GOAL_SPREAD_P99_MS} ms, >= 50 events)"
    )
    C.write_result("api", {"readers": readers, "fanout": fanout, "args": vars(args)})
    return 0 if ok_token and ok_origin and ok_spread else 1


if __name__ == "__main__":
    sys.exit(main())
