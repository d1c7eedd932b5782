# SPDX-License-Identifier: Apache-2.0
"""200 insert/remove cycles through the reader manager: no leaked threads, fds or memory.

pcscd polls vpcd every 400 ms, so each cycle costs close to a second: marked slow. CI runs it.
"""

from __future__ import annotations

import gc
import os
import threading

import psutil
import pytest

from cardd.events import EventBus
from cardd.readers.manager import ReaderManager
from cardd.readers.pcsc import PcscBackend
from cardd.readers.transport import send_expect
from tests.helpers import READER0, READER1, fixture_card

pytestmark = [pytest.mark.pcsc, pytest.mark.slow, pytest.mark.timeout(900)]

CYCLES = int(os.environ.get("CARDD_SOAK_CYCLES", "200"))
WARMUP = 10


async def test_insert_remove_cycles_leak_nothing(pcscd, vreaders):
    bus = EventBus()
    m = ReaderManager([PcscBackend()], bus)
    await m.start()
    proc = psutil.Process()
    sub = bus.subscribe(maxsize=64)  # a subscriber that never reads must not grow either
    try:
        assert await m.wait_until(lambda: {READER0, READER1} <= {r.name for r in m.readers()}, 5)
        card = fixture_card("easycard_4b.json")
        baseline = None
        inserted_events = 0
        for i in range(CYCLES + WARMUP):
            if i == WARMUP:
                gc.collect()
                baseline = (threading.active_count(), proc.num_fds(), proc.memory_info().rss)
            vreaders[0].insert(card)
            assert await m.wait_until(lambda: m.reader(READER0).card_present, 5), f"cycle {i}"
            uid = await m.run(READER0, lambda c, e: send_expect(c, bytes.fromhex("FFCA000000")))
            assert uid == bytes.fromhex("93A131C0")
            vreaders[0].remove()
            assert await m.wait_until(lambda: not m.reader(READER0).card_present, 5), f"cycle {i}"
            inserted_events += 1
        gc.collect()
        threads, fds, rss = threading.active_count(), proc.num_fds(), proc.memory_info().rss
        assert baseline is not None
        assert threads <= baseline[0], f"threads {baseline[0]} -> {threads}"
        assert fds <= baseline[1], f"fds {baseline[1]} -> {fds}"
        # RSS moves with allocator noise; a leak of one card link or APDU buffer per cycle
        # (a few KB) over 200 cycles would show as well over 2 MB.
        assert rss - baseline[2] < 2 * 1024 * 1024, f"RSS grew {(rss - baseline[2]) / 1024:.0f} KiB"
        assert sub.dropped > 0 and sub._queue.qsize() <= 64
    finally:
        sub.close()
        await m.stop()
