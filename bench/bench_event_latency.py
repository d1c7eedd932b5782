#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Card event latency: a `cardd serve` SSE client vs a raw SCardGetStatusChange waiter, same event.

Each cycle inserts a virtual card (easycard_4b.json) into vpcd slot 0, then removes it. The
card runs in a `cardd sim serve` subprocess (``--sim process``, the default): the daemon reads
every contactless card's UID right after the insert, and a card simulated inside this process
would answer those APDUs on this interpreter's GIL, charging the simulated card's CPU to the
SSE client being timed (``--sim in-process`` shows that effect). Two observers in THIS process
see every change:

* raw: a thread blocked in ``SCardGetStatusChange(INFINITE)`` on its own PC/SC context;
* cardd: an SSE client (aiohttp) on ``/v1/events`` of a `cardd serve` subprocess that shares
  the private pcscd; it timestamps ``card.inserted`` / ``card.removed`` once the frame is parsed.

pcscd wakes both waiters with the same event, so ``extra = t_sse - t_raw`` (``time.monotonic``
in one process) is cardd's own cost: watcher thread -> asyncio -> bus -> SSE write -> client
parse. The daemon's event ``time`` field (wall clock) splits it into "pcscd wake -> bus" and
"bus -> client".

Goal: p99 of the extra latency <= 5 ms (insert and remove each).

Run as root (private pcscd): .venv/bin/python bench/bench_event_latency.py [--cycles 100]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

GOAL_P99_MS = 5.0
OUTLIER_MS = 2.0

#: (generation, start monotonic s, duration ms) of every collection in this (the bench) process
BENCH_GC: list[tuple[int, float, float]] = []
_gc_start = [0.0]


def _gc_callback(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_start[0] = time.monotonic()
    else:
        t0 = _gc_start[0]
        BENCH_GC.append((info["generation"], t0, (time.monotonic() - t0) * 1000))


def set_fifo(pids: list[int], prio: int) -> None:
    """SCHED_FIFO for every thread of ``pids`` (threads created later inherit it)."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.sched_setscheduler(int(task.name), os.SCHED_FIFO, os.sched_param(prio))
            except ProcessLookupError:
                pass


def attribute_outliers(rows: dict[str, list[dict]], daemon_gc: list, bench_gc: list) -> list[dict]:
    """Samples with |extra| > OUTLIER_MS, and the collections (>= 0.2 ms) that overlap them."""
    out = []
    for phase, samples in rows.items():
        for i, r in enumerate(samples):
            if abs(r["extra_ms"]) <= OUTLIER_MS:
                continue
            lo = min(r["t_raw"], r["t_sse"]) - 0.010  # pcscd woke both shortly before this
            hi = max(r["t_raw"], r["t_sse"])

            def hits(trace: list, lo: float = lo, hi: float = hi) -> list:
                return [(g, round(d, 2)) for g, st, d in trace
                        if d >= 0.2 and st < hi and st + d / 1000 > lo]

            out.append({"phase": phase, "cycle": i, "extra_ms": round(r["extra_ms"], 3),
                        "wake_to_bus_ms": round(r["wake_to_bus_ms"], 3),
                        "bus_to_client_ms": round(r["bus_to_client_ms"], 3),
                        "daemon_gc": hits(daemon_gc), "bench_gc": hits(bench_gc)})
    return out


class RawWaiter(threading.Thread):
    """SCardGetStatusChange on one reader; posts (monotonic, wall, present) for every change."""

    def __init__(self, reader: str, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        super().__init__(name="raw-waiter", daemon=True)
        from smartcard import scard

        self.scard = scard
        self.reader = reader
        self.loop = loop
        self.queue = queue
        hr, self.ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hr:
            raise RuntimeError(f"SCardEstablishContext 0x{hr & 0xFFFFFFFF:08X}")
        self.stopping = False
        self.present = False
        self.ready = threading.Event()

    def run(self) -> None:
        scard = self.scard
        states = [(self.reader, scard.SCARD_STATE_UNAWARE)]
        first = True
        while not self.stopping:
            hr, result = scard.SCardGetStatusChange(self.ctx, scard.INFINITE, states)
            t_mono, t_wall = time.monotonic(), time.time()
            if self.stopping:
                break
            if hr == scard.SCARD_E_TIMEOUT:
                continue
            if hr:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, ("error", hr))
                return
            name, event, _atr = result[0]
            present = bool(event & scard.SCARD_STATE_PRESENT)
            if first:  # the UNAWARE call answers at once with the current state
                first = False
                self.present = present
                self.ready.set()
            elif present != self.present:
                # Only presence flips count: a client connecting to the card (the daemon's own
                # tap read) also sets CHANGED, through SCARD_STATE_INUSE.
                self.present = present
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (t_mono, t_wall, present))
            states = [(name, event & ~scard.SCARD_STATE_CHANGED)]

    def stop(self) -> None:
        self.stopping = True
        self.scard.SCardCancel(self.ctx)
        self.join(5)
        self.scard.SCardReleaseContext(self.ctx)


async def sse_reader(resp, queue: asyncio.Queue, reader: str) -> None:  # noqa: ANN001
    """A minimal EventSource: posts (monotonic, wall, type, data) for card events on ``reader``."""
    event = None
    data = None
    while True:
        raw = await resp.content.readline()
        if not raw:
            await queue.put(("eof",))
            return
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and event is not None:
            t_mono, t_wall = time.monotonic(), time.time()
            if event in ("card.inserted", "card.removed") and data and data.get("reader") == reader:
                await queue.put((t_mono, t_wall, event, data))
            elif event == "hello":
                await queue.put(("hello", data))
            event = data = None


async def run(args: argparse.Namespace, env: C.Env, daemon: C.Daemon) -> dict:
    import aiohttp

    loop = asyncio.get_running_loop()
    raw_q: asyncio.Queue = asyncio.Queue()
    raw2_q: asyncio.Queue = asyncio.Queue()
    sse_q: asyncio.Queue = asyncio.Queue()
    waiter = RawWaiter(C.READER0, loop, raw_q)
    waiter2 = RawWaiter(C.READER0, loop, raw2_q)  # A/A control: a second, identical waiter
    for w in (waiter, waiter2):
        w.start()
        if not w.ready.wait(5):
            raise RuntimeError("raw waiter did not start")

    if args.sim == "process":
        slot = SimProcessSlot(env)
        card = C.FIXTURES / args.card
    else:
        slot = env.vreaders[0]
        card = C.load_card(args.card)
    rows: dict[str, list[dict]] = {"insert": [], "remove": []}
    timeouts = 0
    mismatches = 0

    async def next_of(q: asyncio.Queue, what: str) -> tuple:
        item = await asyncio.wait_for(q.get(), args.timeout)
        if item[0] in ("error", "eof"):
            raise RuntimeError(f"{what}: {item}")
        return item

    async with aiohttp.ClientSession() as session:
        async with session.get(daemon.url + "/v1/events", headers=daemon.auth,
                               timeout=aiohttp.ClientTimeout(total=None)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"/v1/events: HTTP {resp.status}")
            task = asyncio.create_task(sse_reader(resp, sse_q, C.READER0))
            hello = await next_of(sse_q, "sse hello")
            if hello[0] != "hello":
                raise RuntimeError(f"expected hello, got {hello}")
            t_start = time.monotonic()
            for i in range(args.cycles):
                if time.monotonic() - t_start > args.max_seconds:
                    print(f"stopping after {i} cycles: --max-seconds {args.max_seconds} reached")
                    break
                for phase in ("insert", "remove"):
                    t_act = time.monotonic()
                    if phase == "insert":
                        await asyncio.to_thread(slot.insert, card)
                    else:
                        await asyncio.to_thread(slot.remove)
                    try:
                        r_mono, r_wall, present = await next_of(raw_q, "raw waiter")
                        r2_mono, _r2_wall, present2 = await next_of(raw2_q, "raw waiter 2")
                        s_mono, s_wall, etype, data = await next_of(sse_q, "sse")
                    except TimeoutError:
                        timeouts += 1
                        print(f"cycle {i} {phase}: timed out; resynchronising")
                        await _drain(raw_q, raw2_q, sse_q)
                        continue
                    want = phase == "insert"
                    if present != want or present2 != want or etype != ("card.inserted" if want else "card.removed"):
                        mismatches += 1
                        print(f"cycle {i} {phase}: out of step (raw present={present}, "
                              f"raw2 present={present2}, sse {etype}); resynchronising")
                        await _drain(raw_q, raw2_q, sse_q)
                        continue
                    rows[phase].append({
                        "t_raw": r_mono,
                        "t_sse": s_mono,
                        "extra_ms": (s_mono - r_mono) * 1000,
                        "aa_ms": (r2_mono - r_mono) * 1000,  # raw waiter 2 - raw waiter 1
                        "pcscd_ms": (r_mono - t_act) * 1000,  # action -> pcscd reports it
                        "wake_to_bus_ms": (data["time"] - r_wall) * 1000,
                        "bus_to_client_ms": (s_wall - data["time"]) * 1000,
                    })
            task.cancel()
    waiter.stop()
    waiter2.stop()
    if isinstance(slot, SimProcessSlot):
        slot.stop()
    return {"rows": rows, "timeouts": timeouts, "mismatches": mismatches}


class SimProcessSlot:
    """Slot 0 of a `cardd sim serve` subprocess, driven over its control socket.

    The virtual card answers the daemon's APDUs (the UID read after every contactless insert).
    In-process, that Python work shares this process's GIL with the SSE client and the raw
    waiters, so the measurement would charge the *simulated card's* CPU to cardd. A real card
    is firmware on the reader, so the card runs in its own process here (``--sim process``).
    """

    def __init__(self, env: C.Env) -> None:
        from cardd.sim.control import request

        self._request = request
        self.sock = env.tmp / "sim.sock"
        self.log = open(env.tmp / "sim.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cardd.cli.main", "sim", "--control", str(self.sock), "serve",
             "--port", str(env.pcscd.vpcd_port), "--slots", "2"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((env.tmp / "sim.log").read_text())
            time.sleep(0.05)
        self._request(self.sock, {"cmd": "status"})

    def insert(self, card_path: Path) -> None:
        answer = self._request(self.sock, {"cmd": "insert", "slot": 0, "card": str(card_path)})
        if not answer.get("ok"):
            raise RuntimeError(answer)

    def remove(self) -> None:
        answer = self._request(self.sock, {"cmd": "remove", "slot": 0})
        if not answer.get("ok"):
            raise RuntimeError(answer)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def _drain(*queues: asyncio.Queue) -> None:
    await asyncio.sleep(1.0)
    for q in queues:
        while not q.empty():
            q.get_nowait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=100, help="insert+remove cycles (default 100)")
    ap.add_argument("--card", default="easycard_4b.json",
                    help="fixture under tests/fixtures/cards (a contact card, e.g. ../moica/card.json, "
                    "has no tap read in the daemon)")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for one event")
    ap.add_argument("--max-seconds", type=float, default=150.0, help="stop cycling after this long")
    ap.add_argument("--trace-gc", action="store_true",
                    help="start the daemon through bench/_gc_trace_cardd.py (logs its garbage "
                         "collections) and attribute outliers to them")
    ap.add_argument("--sim", choices=("process", "in-process"), default="process",
                    help="where the virtual card runs: its own process (default; as a real card "
                    "runs on the reader, not in the measuring interpreter) or this process")
    ap.add_argument("--rt", type=int, metavar="PRIO", default=0,
                    help="diagnostic: run pcscd, the daemon and this process SCHED_FIFO at PRIO "
                         "(1-99), shielding the measurement from other load on the machine")
    args = ap.parse_args()

    gc.callbacks.append(_gc_callback)
    env = C.Env()
    env.wait_readers()
    daemon = C.Daemon(env.tmp / "cardd", trace_gc=args.trace_gc)
    if args.rt:
        set_fifo([os.getpid(), env.pcscd_process().pid, daemon.proc.pid], args.rt)
    try:
        out = asyncio.run(run(args, env, daemon))
    finally:
        rc = daemon.stop()
    rows, timeouts, mismatches = out["rows"], out["timeouts"], out["mismatches"]
    daemon_gc = daemon.gc_trace() if args.trace_gc else []
    outliers = attribute_outliers(rows, daemon_gc, BENCH_GC)

    stats = {}
    for phase in ("insert", "remove"):
        stats[phase] = {k: C.summary(r[k] for r in rows[phase])
                        for k in ("extra_ms", "aa_ms", "pcscd_ms", "wake_to_bus_ms", "bus_to_client_ms")}
    both = C.summary([r["extra_ms"] for p in rows.values() for r in p])

    print(f"card event latency, {len(rows['insert'])} inserts + {len(rows['remove'])} removals "
          f"on {C.READER0} ({timeouts} timeouts, {mismatches} out of step)\n")
    print("extra latency = SSE client sees it - raw SCardGetStatusChange waiter sees it (ms):")
    hdr = ["event", "n", "mean", "p50", "p90", "p99", "max", "min"]
    body = []
    for label, s in (("card.inserted", stats["insert"]["extra_ms"]),
                     ("card.removed", stats["remove"]["extra_ms"]), ("both", both),
                     ("A/A inserted", stats["insert"]["aa_ms"]), ("A/A removed", stats["remove"]["aa_ms"])):
        body.append([label, s["n"], *(f"{s[k]:.3f}" for k in ("mean", "p50", "p90", "p99", "max", "min"))])
    print(C.table(hdr, body))
    print("A/A = a second raw waiter thread minus the first: the measurement's own jitter")
    print("\nbreakdown via the daemon's event time (wall clock, ms, p50 / p99):")
    body = []
    for phase in ("insert", "remove"):
        s = stats[phase]
        body.append([phase,
                     f"{s['wake_to_bus_ms']['p50']:.3f} / {s['wake_to_bus_ms']['p99']:.3f}",
                     f"{s['bus_to_client_ms']['p50']:.3f} / {s['bus_to_client_ms']['p99']:.3f}",
                     f"{s['pcscd_ms']['p50']:.0f} / {s['pcscd_ms']['max']:.0f}"])
    print(C.table(["event", "pcscd wake -> bus", "bus -> SSE client", "action -> pcscd (p50 / max)"], body))

    print(f"\noutliers (|extra| > {OUTLIER_MS} ms): {len(outliers)} of {both['n']}"
          + ("; the 10 largest:" if len(outliers) > 10 else ""))
    for o in sorted(outliers, key=lambda o: -abs(o["extra_ms"]))[:10]:
        print(f"  {o['phase']} #{o['cycle']}: extra {o['extra_ms']} ms (wake->bus {o['wake_to_bus_ms']}, "
              f"bus->client {o['bus_to_client_ms']}); GC overlapping: "
              f"daemon {o['daemon_gc'] if args.trace_gc else 'not traced'}, bench {o['bench_gc']}")
    if args.trace_gc:
        big = [d for _g, _t, d in daemon_gc if d >= 1.0]
        print(f"daemon collections during the run: {len(daemon_gc)} "
              f"(gen2: {sum(1 for g, _t, _d in daemon_gc if g == 2)}), >= 1 ms: {len(big)}, "
              f"longest {max((d for _g, _t, d in daemon_gc), default=0):.2f} ms")
    bench_big = [d for _g, _t, d in BENCH_GC if d >= 1.0]
    print(f"bench-process collections: {len(BENCH_GC)}, >= 1 ms: {len(bench_big)}, "
          f"longest {max((d for _g, _t, d in BENCH_GC), default=0):.2f} ms")

    ok_ins = stats["insert"]["extra_ms"].get("p99", float("inf")) <= GOAL_P99_MS
    ok_rem = stats["remove"]["extra_ms"].get("p99", float("inf")) <= GOAL_P99_MS
    enough = len(rows["insert"]) >= 50 and len(rows["remove"]) >= 50
    print()
    print(f"{C.verdict(ok_ins)}: card.inserted extra latency p99 "
          f"{stats['insert']['extra_ms'].get('p99', float('nan')):.3f} ms (goal <= {GOAL_P99_MS} ms)")
    print(f"{C.verdict(ok_rem)}: card.removed extra latency p99 "
          f"{stats['remove']['extra_ms'].get('p99', float('nan')):.3f} ms (goal <= {GOAL_P99_MS} ms)")
    if not enough:
        print("note: fewer than 50 cycles measured; the p99 is not meaningful")
    if rc not in (0, None):
        print(f"note: cardd serve exited with {rc}; see its log")

    C.write_result("event_latency", {
        "command": " ".join([sys.executable, *sys.argv]),
        "params": vars(args),
        "timeouts": timeouts,
        "out_of_step": mismatches,
        "daemon_exit_code": rc,
        "stats_ms": stats,
        "extra_ms_both": both,
        "samples": rows,
        "outliers": outliers,
        "daemon_gc_traced": args.trace_gc,
        "daemon_gc_count": len(daemon_gc),
        "bench_gc": {"count": len(BENCH_GC),
                     "longest_ms": max((d for _g, _t, d in BENCH_GC), default=0)},
        "goal": {"metric": "p99 extra latency (ms)", "max": GOAL_P99_MS,
                 "pass_insert": ok_ins, "pass_remove": ok_rem, "enough_cycles": enough},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
