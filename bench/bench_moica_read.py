#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Reading a MOICA gen1 card's certificates on the virtual card: APDU count and time, against
the minimum the file sizes allow (measured with raw pyscard round trips in the same run).

    sudo .venv/bin/python bench/bench_moica_read.py [--reads 200]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cardd.sim.pcscd import PrivatePcscd  # noqa: E402

READER = "Virtual PCD 00 00"
CHUNK = 200  # gen1 READ BINARY limit (0xC8)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reads", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cardd-bench-moica-"))
    pcscd = PrivatePcscd(tmp / "pcscd", channel_id=0xB57B)
    os.environ.update(pcscd.environ())
    pcscd.start()
    try:
        return run(args, pcscd)
    finally:
        pcscd.stop()


def run(args: argparse.Namespace, pcscd: PrivatePcscd) -> int:
    from smartcard import scard

    from cardd.moica.gen1 import MoicaGen1Session
    from cardd.readers.pcsc import PcscBackend
    from cardd.sim.cards.loader import load_card
    from cardd.sim.vpcd import VirtualReaders

    readers = VirtualReaders(port=pcscd.vpcd_port)
    card = load_card(ROOT / "tests/fixtures/moica/card.json")
    link = readers[0].insert(card)
    backend = PcscBackend()
    deadline = time.monotonic() + 5
    while True:
        try:
            backend.connect(READER).close()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    counts, times = [], []
    with backend.connect(READER) as conn:
        for _ in range(args.reads):
            before = link.apdu_count
            t0 = time.perf_counter()
            certs = MoicaGen1Session(conn).read_certificates()
            times.append(time.perf_counter() - t0)
            counts.append(link.apdu_count - before)
    sizes = [len(c) for c in certs]
    cdf = len(card.cdf_content)
    # The least any reader could do knowing nothing in advance: SELECT 3F00, 5030, the CDF, read
    # it, SELECT 08F2, then read each certificate in 200-byte chunks.
    minimum = 3 + math.ceil(cdf / CHUNK) + 1 + sum(math.ceil(s / CHUNK) for s in sizes)
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    hr, hcard, proto = scard.SCardConnect(ctx, READER, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T1)
    raw = []
    for _ in range(2000):
        t0 = time.perf_counter()
        scard.SCardTransmit(hcard, scard.SCARD_PCI_T1, [0x80, 0xA4, 0x00, 0x00, 0x02, 0x3F, 0x00])
        raw.append(time.perf_counter() - t0)
    scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)
    scard.SCardReleaseContext(ctx)
    med, raw_med = statistics.median(times), statistics.median(raw)
    res = {"apdus": counts[-1], "minimum_apdus": minimum, "cert_sizes": sizes, "cdf_bytes": cdf,
           "read_ms_median": med * 1000, "raw_apdu_ms_median": raw_med * 1000,
           "floor_ms": minimum * raw_med * 1000, "ratio_to_floor": med / (minimum * raw_med)}
    print(f"certificates {sizes} bytes, CDF {cdf} bytes")
    print(f"APDUs per read: {counts[-1]} (minimum the file sizes allow: {minimum})")
    print(f"read median {med * 1000:.2f} ms; raw APDU {raw_med * 1000:.3f} ms -> floor "
          f"{minimum * raw_med * 1000:.2f} ms; ratio {res['ratio_to_floor']:.2f}x")
    (ROOT / "bench" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "out" / "moica_read.json").write_text(json.dumps(res, indent=2))
    readers.remove_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
