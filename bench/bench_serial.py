#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Serial tap latency: cardd's serial reader vs the obvious polling loop, same pty, same run.

Each cycle writes one RDM6300 frame (a new tag ID each time, so debounce never hides one) to a
pseudo-terminal master and times until the tap arrives on the asyncio side:

* cardd: ``SerialBackend`` in a real ``ReaderManager``; the time ``tag.tapped`` leaves the
  EventBus subscription (reader thread blocked in ``read(1)``, then framing, then the loop);
* polling: what most RDM6300 scripts do (python-rdm6300 style): a thread that sleeps 50 ms,
  reads ``in_waiting``, regex-matches frames, and hands each to the loop the same way.

Cycles alternate between the two so machine noise hits both. Goal: cardd's p50 at most half
the polling loop's (a blocked read should not pay the poll interval), and p99 under 20 ms.

Run: .venv/bin/python bench/bench_serial.py [--cycles 200]   (no root, no pcscd needed)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import serial  # noqa: E402

from cardd.events import EventBus  # noqa: E402
from cardd.readers.framing import PRESETS, encode_frame  # noqa: E402
from cardd.readers.manager import ReaderManager  # noqa: E402
from cardd.readers.serial import SerialBackend  # noqa: E402
from cardd.readers.serial_config import parse_device  # noqa: E402

POLL_INTERVAL = 0.05
FRAME_RE = re.compile(rb"\x02([0-9A-Fa-f]{10})([0-9A-Fa-f]{2})\x03")


def make_pty(link: Path) -> int:
    master, slave = os.openpty()
    tty.setraw(slave)
    os.symlink(os.ttyname(slave), link)
    return master


def polling_reader(
    path: str, loop: asyncio.AbstractEventLoop, q: asyncio.Queue, stop: threading.Event
) -> None:
    ser = serial.Serial(path, 9600, timeout=0, exclusive=True)
    buf = b""
    while not stop.is_set():
        time.sleep(POLL_INTERVAL)
        buf += ser.read(ser.in_waiting or 1)
        last = 0
        for m in FRAME_RE.finditer(buf):
            loop.call_soon_threadsafe(q.put_nowait, (m.group(1).decode(), time.monotonic()))
            last = m.end()
        buf = buf[last:]
    ser.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=200)
    args = ap.parse_args()
    spec = PRESETS["rdm6300"].spec
    tmp = Path(tempfile.mkdtemp(prefix="cardd-bench-serial-"))
    m_cardd = make_pty(tmp / "cardd")
    m_poll = make_pty(tmp / "poll")

    bus = EventBus()
    sub = bus.subscribe()
    device = parse_device(
        {"name": "door", "port": str(tmp / "cardd"), "preset": "rdm6300"}, "bench"
    )
    manager = ReaderManager([SerialBackend([device])], bus)
    await manager.start()
    while (await sub.get(10)).type != "reader.added":
        pass
    loop = asyncio.get_running_loop()
    pq: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    poller = threading.Thread(
        target=polling_reader, args=(str(tmp / "poll"), loop, pq, stop), daemon=True
    )
    poller.start()
    await asyncio.sleep(0.2)

    lat: dict[str, list[float]] = {"cardd": [], "polling": []}
    for i in range(args.cycles):
        tag = f"{(i + 1) * 7919:010X}"
        for who in ("cardd", "polling") if i % 2 == 0 else ("polling", "cardd"):
            frame = encode_frame(spec, tag.encode())
            if who == "cardd":
                t0 = time.monotonic()
                os.write(m_cardd, frame)
                while True:
                    ev = await sub.get(5)
                    if ev.type == "tag.tapped" and ev.data["em4100"]["hex"] == tag:
                        break
                lat[who].append((time.monotonic() - t0) * 1000)
            else:
                t0 = time.monotonic()
                os.write(m_poll, frame)
                while True:
                    got, _t = await asyncio.wait_for(pq.get(), 5)
                    if got.upper() == tag:
                        break
                lat[who].append((time.monotonic() - t0) * 1000)
        # tags arrive at human pace, not back to back: let both readers go idle between taps
        await asyncio.sleep(0.013)
    stop.set()
    poller.join(2)
    await manager.stop()
    os.close(m_cardd)
    os.close(m_poll)

    s_c, s_p = C.summary(lat["cardd"]), C.summary(lat["polling"])
    ratio = s_c["p50"] / s_p["p50"] if s_p["p50"] else float("inf")
    ok = ratio <= 0.5 and s_c["p99"] <= 20.0
    rows = [
        [name, f"{s['p50']:.2f}", f"{s['p90']:.2f}", f"{s['p99']:.2f}", f"{s['max']:.2f}"]
        for name, s in (
            ("cardd SerialBackend → bus", s_c),
            (f"polling loop ({POLL_INTERVAL * 1000:.0f} ms)", s_p),
        )
    ]
    print(C.table(["tap → asyncio (ms)", "p50", "p90", "p99", "max"], rows))
    print(
        f"\n{C.verdict(ok)}: serial tap p50 cardd/polling = {ratio:.3f} (goal <= 0.5), "
        f"cardd p99 {s_c['p99']:.2f} ms (goal <= 20 ms)"
    )
    print(f"machine: {C.system_cpu_since_start()}")
    C.write_result(
        "serial",
        {"cycles": args.cycles, "cardd": s_c, "polling": s_p, "ratio_p50": ratio, "ok": ok},
    )


if __name__ == "__main__":
    asyncio.run(main())
