#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""SIP2 patron lookups on loopback: cardd's client against a bare asyncio socket loop.

The server is pysip2 (a SIP2 server the project did not write; `python -m
cardd.sim.sip2_reference`) in its own process, and, for comparison, cardd's own test ACS
(`cardd sip2 test-server`). Against each server, in the same run and interleaved block by block
on two connections:

* cardd: ``await Sip2Client.patron_status(id)``: builds a 63 with the current date, AY/AZ,
  writes it, frames and parses the 64 (checksum checked), builds the PatronStatus;
* bare: writes one of ten pre-encoded 63 frames (AY 0–9, so pysip2's duplicate-request replay
  never answers from its cache) and reads until CR, parsing nothing.

The ratio of the per-request medians says what the client's encoding, parsing, checks and
locking cost over the least a client could do. Goal: ≤ 1.25 against the reference server.

    .venv/bin/python bench/bench_sip2.py [--blocks 20] [--per-block 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from _common import REPO, VENV_BIN, free_port, summary, table, verdict, write_result  # noqa: E402

from cardd.kiosk.sip2 import messages as M  # noqa: E402
from cardd.kiosk.sip2.client import Sip2Client  # noqa: E402
from cardd.kiosk.sip2.config import Sip2Config  # noqa: E402

PATRON = "2000000002"  # a demo patron with a lost card and an AF line
GOAL_RATIO = 1.25


def start_server(kind: str, port: int) -> subprocess.Popen[bytes]:
    py = str(VENV_BIN / "python")
    if kind == "pysip2":
        cmd = [py, "-m", "cardd.sim.sip2_reference", "--port", str(port)]
    else:
        cmd = [py, "-m", "cardd.cli.main", "sip2", "test-server", "--listen-port", str(port)]
    env = dict(os.environ)
    env.pop("CARDD_CONFIG", None)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    import socket

    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{kind} server exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{kind} server did not listen in 20 s") from None
            time.sleep(0.05)


class BareClient:
    """The least a client can do: write bytes, read until CR."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        for frame in (
            M.encode_frame(M.login("kiosk", "secret"), sequence=0),
            M.encode_frame(M.sc_status(), sequence=1),
        ):
            self.writer.write(frame)
            await self.reader.readuntil(b"\r")
        from datetime import datetime

        body = M.patron_information(datetime.now(), "MAIN", PATRON)
        self.frames = [M.encode_frame(body, sequence=i) for i in range(10)]
        self.n = 0

    async def lookup(self) -> bytes:
        self.writer.write(self.frames[self.n % 10])
        self.n += 1
        return await self.reader.readuntil(b"\r")

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def measure(port: int, blocks: int, per_block: int) -> dict[str, list[float]]:
    cfg = Sip2Config(
        host="127.0.0.1",
        port=port,
        user="kiosk",
        password="secret",
        institution="MAIN",
        keepalive_interval=0,
        timeout=5.0,
    )
    client = Sip2Client(cfg)
    await client.connect()
    bare = BareClient(port)
    await bare.open()
    # warm-up, and a check that both really get the patron's answer
    status = await client.patron_status(PATRON)
    assert status.card_reported_lost, status
    reply = await bare.lookup()
    assert reply.startswith(b"64Y   Y"), reply[:20]
    for _ in range(50):
        await client.patron_status(PATRON)
        await bare.lookup()

    lat: dict[str, list[float]] = {"cardd": [], "bare": []}
    rate: dict[str, list[float]] = {"cardd": [], "bare": []}
    cpu: dict[str, list[float]] = {"cardd": [], "bare": []}
    clock = time.perf_counter
    for b in range(blocks):
        order = ("cardd", "bare") if b % 2 == 0 else ("bare", "cardd")
        for who in order:
            t_block, c_block = clock(), time.process_time()
            for _ in range(per_block):
                t0 = clock()
                if who == "cardd":
                    await client.patron_status(PATRON)
                else:
                    await bare.lookup()
                lat[who].append((clock() - t0) * 1000)
            rate[who].append(per_block / (clock() - t_block))
            # this process's CPU per lookup (client + event loop): what the client costs, far
            # less disturbed by other processes on a busy machine than wall time
            cpu[who].append((time.process_time() - c_block) / per_block * 1e6)
    assert client.stats.asked_97 == 0 and client.stats.drops == 0, client.stats
    await client.close()
    await bare.close()
    return {
        "lat_cardd": lat["cardd"],
        "lat_bare": lat["bare"],
        "rate_cardd": rate["cardd"],
        "rate_bare": rate["bare"],
        "cpu_cardd": cpu["cardd"],
        "cpu_bare": cpu["bare"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--per-block", type=int, default=200)
    ap.add_argument("--servers", default="pysip2,cardd", help="comma-separated: pysip2, cardd")
    args = ap.parse_args()

    results: dict[str, dict] = {}
    rows = []
    for kind in args.servers.split(","):
        port = free_port()
        proc = start_server(kind, port)
        try:
            data = asyncio.run(measure(port, args.blocks, args.per_block))
        finally:
            proc.terminate()
            proc.wait(10)
        lc, lb = summary(data["lat_cardd"]), summary(data["lat_bare"])
        rc, rb = summary(data["rate_cardd"]), summary(data["rate_bare"])
        cc, cb = summary(data["cpu_cardd"]), summary(data["cpu_bare"])
        ratio = lc["p50"] / lb["p50"]
        results[kind] = {
            "latency_ms": {"cardd": lc, "bare": lb},
            "lookups_per_s_per_block": {"cardd": rc, "bare": rb},
            "client_cpu_us_per_lookup": {"cardd": cc, "bare": cb},
            "ratio_p50": ratio,
        }
        for name, r, lat_, c, ra in (
            ("cardd Sip2Client", rc, lc, cc, f"{ratio:.2f}"),
            ("bare asyncio", rb, lb, cb, "1.00"),
        ):
            rows.append(
                [
                    kind,
                    name,
                    f"{r['p50']:.0f}",
                    f"{lat_['p50']:.3f}",
                    f"{lat_['p99']:.3f}",
                    f"{c['p50']:.0f}",
                    ra,
                ]
            )

    print(
        f"SIP2 patron lookups (63 → 64) on loopback, {args.blocks} blocks × {args.per_block} "
        "per client, interleaved"
    )
    headers = [
        "server",
        "client",
        "lookups/s (block median)",
        "p50 ms",
        "p99 ms",
        "client CPU µs/lookup",
        "p50 ratio",
    ]
    print(table(headers, rows))
    if "pysip2" in results:
        ratio = results["pysip2"]["ratio_p50"]
        print(
            f"\n{verdict(ratio <= GOAL_RATIO)}: cardd/bare p50 ratio against pysip2 {ratio:.2f} (goal ≤ {GOAL_RATIO})"
        )
    write_result(
        "sip2",
        {"args": vars(args), "patron": "masked", "goal_ratio": GOAL_RATIO, "results": results},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
