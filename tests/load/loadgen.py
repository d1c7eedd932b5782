# SPDX-License-Identifier: Apache-2.0
"""Load generator for tests/load/test_load.py, run as its own process so that its CPU use is
not charged to the daemon: N API clients in a closed loop and M SSE subscribers.

    CARDD_TOKEN=... python -m tests.load.loadgen URL --clients 1000 --subscribers 200 --seconds 300

Prints one JSON object: requests, errors (by kind), latency p50/p99/max (ms), and per SSE
subscriber the card events it saw (sequence numbers), so the test can check that every
subscriber saw every event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import time
from collections import Counter

import aiohttp

PATHS = ("/v1/readers", "/v1/health")
DRAIN_S = 5.0


async def client(session: aiohttp.ClientSession, url: str, stop: float, lat: list[float],
                 errors: Counter[str], n: int) -> int:
    done = 0
    while time.monotonic() < stop:
        path = PATHS[(n + done) % len(PATHS)]
        t0 = time.perf_counter()
        try:
            async with session.get(url + path) as r:
                await r.read()
                if r.status != 200:
                    errors[f"http_{r.status}"] += 1
        except (TimeoutError, aiohttp.ClientError) as e:
            errors[type(e).__name__] += 1
            await asyncio.sleep(0.1)
        else:
            lat.append((time.perf_counter() - t0) * 1000)
        done += 1
    return done


async def subscriber(url: str, headers: dict[str, str], stop: float, seen: list[int],
                     errors: Counter[str]) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as s:
        try:
            async with s.get(url + "/v1/events") as r:
                if r.status != 200:
                    errors[f"sse_http_{r.status}"] += 1
                    return
                event = None
                # Read until the load has stopped AND the stream has been quiet for DRAIN_S:
                # events still in flight when the clients stop are counted, not cut off.
                while True:
                    wait = max(stop - time.monotonic(), DRAIN_S)
                    try:
                        line = await asyncio.wait_for(r.content.readline(), wait)
                    except TimeoutError:
                        if time.monotonic() >= stop:
                            break
                        continue
                    if not line:
                        errors["sse_closed"] += 1
                        return
                    text = line.decode().rstrip("\n")
                    if text.startswith("event: "):
                        event = text[7:]
                    elif text.startswith("data: ") and event in ("card.inserted", "card.removed"):
                        seen.append(json.loads(text[6:])["seq"])
        except aiohttp.ClientError as e:
            errors[f"sse_{type(e).__name__}"] += 1


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--subscribers", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=300)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    headers = {"Authorization": "Bearer " + os.environ["CARDD_TOKEN"]}  # not argv: ps shows argv
    stop = time.monotonic() + a.seconds
    lat: list[float] = []
    errors: Counter[str] = Counter()
    seen: list[list[int]] = [[] for _ in range(a.subscribers)]
    subs = [asyncio.create_task(subscriber(a.url, headers, stop, seen[i], errors))
            for i in range(a.subscribers)]
    # One connection per client: 1,000 concurrent keep-alive connections, as 1,000 pages would.
    conn = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, connector=conn, timeout=timeout) as session:
        counts = await asyncio.gather(*(client(session, a.url, stop, lat, errors, i)
                                        for i in range(a.clients)))
    await asyncio.gather(*subs)
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) > 100 else [0.0] * 99
    print(json.dumps({
        "requests": sum(counts), "ok": len(lat), "errors": dict(errors),
        "p50_ms": round(q[49], 2), "p99_ms": round(q[98], 2), "max_ms": round(lat[-1], 2) if lat else None,
        "seen": seen,
    }))


if __name__ == "__main__":
    asyncio.run(main())
