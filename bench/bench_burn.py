#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Burning on the virtual card: APDUs per burn and burns per minute, against what the APDU count
allows (that many raw pyscard round trips on the same card, measured in the same run).

    sudo .venv/bin/python bench/bench_burn.py [--burns 200]

Needs root: it starts a private pcscd with the vpcd driver (cardd.sim.pcscd).
"""

from __future__ import annotations

import argparse
import json
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--burns", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cardd-bench-burn-"))
    pcscd = PrivatePcscd(tmp / "pcscd", channel_id=0xB47B)
    os.environ.update(pcscd.environ())
    pcscd.start()
    try:
        return run(args, tmp, pcscd)
    finally:
        pcscd.stop()


def run(args: argparse.Namespace, tmp: Path, pcscd: PrivatePcscd) -> int:
    from smartcard import scard

    from cardd.readers.pcsc import PcscBackend
    from cardd.rfid.burn import StudentCards
    from cardd.rfid.idnumber import check_digit
    from cardd.rfid.keys import load_key_file
    from cardd.rfid.ledger import open_ledger
    from cardd.sim.cards.loader import load_card
    from cardd.sim.vpcd import VirtualReaders

    keys = tmp / "keys.toml"
    keys.write_text('[student_card]\nsector = 14\nkey_a = "A0A1A2A3A4A5"\nkey_b = "B0B1B2B3B4B5"\n')
    keys.chmod(0o600)
    readers = VirtualReaders(port=pcscd.vpcd_port)
    link = readers[0].insert(load_card(ROOT / "tests/fixtures/cards/classic_1k_student.json"))
    ledger = open_ledger(tmp / "ledger.sqlite3")
    cards = StudentCards(load_key_file(keys), ledger, station="bench")
    backend = PcscBackend()
    deadline = time.monotonic() + 5
    while True:  # wait for pcscd to see the card
        try:
            backend.connect(READER).close()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

    ids = [f"A2{i:07d}" for i in range(args.burns)]  # one new person per burn
    ids = [p + str(check_digit(p)) for p in ids]
    card = link.card
    apdus, burn_s, ledger_s = [], [], []
    over_apdus, over_s = [], []
    with backend.connect(READER) as conn:
        cards.burn(conn, "A123456789", operator="bench", reader=READER)  # warm-up: loads the key
        for i, person in enumerate(ids):
            # Odd burns: a fresh card (its record blocks wiped in the model, as a new card
            # would come); even burns: the card still carries the previous person's live
            # number and is overwritten on purpose (confirm_overwrite).
            fresh = i % 2 == 1
            if fresh:
                card._memory[56 * 16 : 59 * 16] = bytes(48)  # noqa: SLF001 - a new card
            before = link.apdu_count
            t0 = time.perf_counter()
            out = cards.burn(conn, person, operator="bench", reader=READER, confirm_overwrite=True)
            elapsed = time.perf_counter() - t0
            (burn_s if fresh else over_s).append(elapsed)
            (apdus if fresh else over_apdus).append(link.apdu_count - before)
            assert out.status == "burned"
    # ledger share: the same reserve + commit without the card
    for i, person in enumerate(ids):
        t0 = time.perf_counter()
        r = ledger.reserve(person, reissue=True, station="b", operator="b", uid=f"{i:08X}")
        ledger.commit(r.number, uid=f"{i:08X}", station="b", operator="b")
        ledger_s.append(time.perf_counter() - t0)

    # raw pyscard round trips on the same card, same run
    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    hr, hcard, proto = scard.SCardConnect(ctx, READER, scard.SCARD_SHARE_SHARED, scard.SCARD_PROTOCOL_T1 | scard.SCARD_PROTOCOL_T0)
    pci = scard.SCARD_PCI_T1 if proto == scard.SCARD_PROTOCOL_T1 else scard.SCARD_PCI_T0
    raw = []
    for _ in range(2000):
        t0 = time.perf_counter()
        scard.SCardTransmit(hcard, pci, [0xFF, 0xCA, 0, 0, 0])
        raw.append(time.perf_counter() - t0)
    scard.SCardDisconnect(hcard, scard.SCARD_LEAVE_CARD)
    scard.SCardReleaseContext(ctx)

    n_apdu = statistics.median(apdus)
    raw_med = statistics.median(raw)
    burn_med = statistics.median(burn_s)
    ledger_med = statistics.median(ledger_s)
    floor = n_apdu * raw_med
    result = {
        "burns": args.burns,
        "overwrite_apdus_per_burn": {"min": min(over_apdus), "max": max(over_apdus)},
        "overwrite_burn_ms_median": statistics.median(over_s) * 1000,
        "apdus_per_burn": {"min": min(apdus), "median": n_apdu, "max": max(apdus)},
        "burn_ms_median": burn_med * 1000,
        "burns_per_minute": 60 / burn_med,
        "raw_apdu_ms_median": raw_med * 1000,
        "apdu_floor_ms": floor * 1000,
        "ledger_ms_median": ledger_med * 1000,
        "ratio_burn_to_apdu_floor": burn_med / floor,
        "ratio_burn_to_apdu_floor_plus_ledger": burn_med / (floor + ledger_med),
    }
    print(f"{args.burns} burns on a personalized virtual MIFARE Classic 1K (key already in the reader)")
    print(f"fresh card:        APDUs per burn min {min(apdus)} median {n_apdu:g} max {max(apdus)}   (goal <= 8)")
    print(f"overwriting a live number of another person: APDUs {min(over_apdus)}..{max(over_apdus)}, "
          f"median {statistics.median(over_s) * 1000:.2f} ms")
    print(f"fresh-card burn median {burn_med * 1000:.2f} ms  = {60 / burn_med:.0f} burns/minute")
    print(f"raw APDU round trip median {raw_med * 1000:.3f} ms -> APDU floor {floor * 1000:.2f} ms per burn")
    print(f"ledger reserve+commit median {ledger_med * 1000:.2f} ms (SQLite, synchronous=FULL)")
    print(f"burn / APDU floor {burn_med / floor:.2f}x; burn / (APDU floor + ledger) {burn_med / (floor + ledger_med):.2f}x")
    print(("PASS" if max(apdus) <= 8 else "FAIL") + f": APDUs per burn max {max(apdus)} (goal <= 8)")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "burn.json").write_text(json.dumps(result, indent=2))
    readers.remove_all()
    ledger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
