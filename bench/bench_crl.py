#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""CRL: cardd's index against cryptography's own CRL object, on a MOICA-sized CRL.

A synthetic complete CRL like MOICA G2's (moica.md §6.3: ~412,000 entries, ~20 MB DER) is written
once per run by ``testpki.make_crl_der_fast`` (64–127-bit serials, revocation dates spread over ten
years, a reasonCode on every entry) and signed with a test CA's RSA-2048 key. Then:

* cardd: ``crl.ingest`` (parse + signature check + walk + index), best and median of ``--runs``;
  index memory (tracemalloc: what the ingest leaves allocated, the DER excluded; and the
  index's own ``nbytes``); lookup over ``--lookups`` serials, half listed and half not, shuffled;
  saving and loading the index file.
* cryptography: ``load_der_x509_crl``, ``is_signature_valid``, and
  ``get_revoked_certificate_by_serial_number`` (a linear scan: timed over ``--crypto-lookups``);
  its memory as an RSS delta (Rust allocations are invisible to tracemalloc); and building a
  ``set`` of serials by iterating it, the obvious way to get fast lookups from it.

Goals: ingest ≤ 3 s, lookup ≤ 5 µs, index memory ≤ 1.5 × DER size.

    .venv/bin/python bench/bench_crl.py [--entries 412000] [--runs 3] [--lookups 100000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import table, verdict, write_result  # noqa: E402
from cardd.moica import crl as cardd_crl  # noqa: E402
from cardd.sim import testpki  # noqa: E402


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def make_crl(
    entries: int, seed: int
) -> tuple[testpki.TestPki, bytes, list[int], list[dt.datetime]]:
    rng = random.Random(seed)
    pki = testpki.make_test_pki()
    serials = [rng.getrandbits(127) | (1 << 63) for _ in range(entries)]
    start = dt.datetime(2014, 1, 1, tzinfo=dt.UTC)
    dates = [start + dt.timedelta(seconds=rng.randrange(10 * 365 * 86400)) for _ in serials]
    der = testpki.make_crl_der_fast(pki.moica, serials, revoked_at=dates, crl_number=2026031610)
    return pki, der, serials, dates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=412_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lookups", type=int, default=100_000)
    ap.add_argument("--crypto-lookups", type=int, default=40)
    ap.add_argument("--seed", type=int, default=20260316)
    args = ap.parse_args()

    t0 = time.perf_counter()
    pki, der, serials, dates = make_crl(args.entries, args.seed)
    gen_s = time.perf_counter() - t0
    issuer = pki.moica.certificate
    size = len(der)
    print(
        f"synthetic CRL: {args.entries} entries, {size / 1e6:.1f} MB DER, written in {gen_s:.1f} s"
    )

    # -- cardd: ingest ------------------------------------------------------------------
    ingest_s = []
    idx = None
    for _ in range(args.runs):
        idx = None
        gc.collect()
        t = time.perf_counter()
        idx = cardd_crl.ingest(der, issuer, url="bench")
        ingest_s.append(time.perf_counter() - t)
    assert idx is not None and len(idx) == args.entries
    # phases of one ingest, for the table
    t = time.perf_counter()
    header = cardd_crl.verify_crl(der, issuer)
    verify_s = time.perf_counter() - t
    t = time.perf_counter()
    entries = cardd_crl.walk_revoked(der, *header.revoked)
    walk_s = time.perf_counter() - t
    t = time.perf_counter()
    cardd_crl.CrlIndex.build(idx.info, der, entries)
    build_s = time.perf_counter() - t
    del entries

    # -- cardd: memory (the DER stays allocated throughout, so it is not counted) -------
    idx = None
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    idx = cardd_crl.ingest(der, issuer, url="bench")
    gc.collect()
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    retained -= base
    peak -= base

    # -- cardd: lookups -----------------------------------------------------------------
    rng = random.Random(args.seed + 1)
    half = args.lookups // 2
    present = rng.sample(serials, min(half, len(serials)))
    absent = [rng.getrandbits(127) | (1 << 63) for _ in range(args.lookups - len(present))]
    probes = present + absent
    rng.shuffle(probes)
    listed = set(present)
    gc.collect()
    lookup_runs = []
    for _ in range(5):
        t = time.perf_counter()
        for s in probes:
            _ = s in idx
        lookup_runs.append((time.perf_counter() - t) / len(probes) * 1e6)
    # what CrlStore.check pays on a hit: membership plus decoding the revocation date
    t = time.perf_counter()
    for s in present:
        idx.lookup(s)
    hit_date_us = (time.perf_counter() - t) / len(present) * 1e6
    wrong = sum((s in idx) != (s in listed) for s in probes)
    by_serial = dict(zip(serials, dates, strict=True))
    wrong += sum(idx.lookup(s)[1] != by_serial[s] for s in present[:10000])

    # -- cardd: persistence -------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.idx"
        t = time.perf_counter()
        cardd_crl.write_atomic(path, idx.to_file_bytes())
        save_s = time.perf_counter() - t
        file_size = path.stat().st_size
        t = time.perf_counter()
        loaded = cardd_crl.CrlIndex.from_file_bytes(path.read_bytes())
        load_s = time.perf_counter() - t
        assert all(loaded.lookup(s) == idx.lookup(s) for s in probes[:1000])

    # -- cryptography -------------------------------------------------------------------
    from cryptography import x509

    gc.collect()
    rss0 = rss()
    t = time.perf_counter()
    cr = x509.load_der_x509_crl(der)
    c_load_s = time.perf_counter() - t
    c_rss_load = rss() - rss0
    t = time.perf_counter()
    assert cr.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    c_sig_s = time.perf_counter() - t
    c_probes = present[: args.crypto_lookups // 2] + absent[: args.crypto_lookups // 2]
    t = time.perf_counter()
    for s in c_probes:
        cr.get_revoked_certificate_by_serial_number(s)
    c_lookup_us = (time.perf_counter() - t) / len(c_probes) * 1e6
    c_rss_after = rss() - rss0
    # The obvious fix for the linear scan: iterate once into a set of ints.
    tracemalloc.start()
    t = time.perf_counter()
    as_set = {r.serial_number for r in cr}
    c_set_s = time.perf_counter() - t
    c_set_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    t = time.perf_counter()
    for s in probes:
        _ = s in as_set
    c_set_lookup_us = (time.perf_counter() - t) / len(probes) * 1e6
    assert len(as_set) == args.entries
    del as_set, cr

    ingest_best, ingest_med = min(ingest_s), statistics.median(ingest_s)
    lookup_med = statistics.median(lookup_runs)
    ratio = retained / size
    rows = [
        [
            "cardd ingest (parse + signature + walk + index)",
            f"{ingest_best:.2f} s (median {ingest_med:.2f})",
            f"{retained / 1e6:.1f} MB retained ({ratio:.2f}x DER), peak +{peak / 1e6:.1f} MB",
            f"{lookup_med:.2f} us ({hit_date_us:.1f} us hit + date)",
        ],
        ["  of which verify (cryptography header + own sig check)", f"{verify_s:.2f} s", "", ""],
        ["  of which DER walk", f"{walk_s:.2f} s", "", ""],
        ["  of which index build", f"{build_s:.2f} s", f"nbytes {idx.nbytes / 1e6:.1f} MB", ""],
        [
            "cardd index file save / load",
            f"{save_s:.3f} s / {load_s:.3f} s",
            f"{file_size / 1e6:.1f} MB file",
            "",
        ],
        [
            "cryptography load_der_x509_crl",
            f"{c_load_s:.2f} s",
            f"RSS +{c_rss_load / 1e6:.1f} MB (+{c_rss_after / 1e6:.1f} after lookups)",
            f"{c_lookup_us:,.0f} us (get_revoked_..., n={len(c_probes)})",
        ],
        ["cryptography is_signature_valid", f"{c_sig_s:.2f} s", "", ""],
        [
            "cryptography iterate into set[int]",
            f"{c_set_s:.2f} s (+ load)",
            f"{c_set_bytes / 1e6:.1f} MB ({c_set_bytes / size:.2f}x DER)",
            f"{c_set_lookup_us:.2f} us",
        ],
    ]
    print()
    print(table(["path", "time", "memory", "lookup"], rows))
    goals = {
        "ingest_le_3s": ingest_best <= 3.0,
        "lookup_le_5us": lookup_med <= 5.0,
        "memory_le_1.5x_der": ratio <= 1.5,
        "lookups_correct": wrong == 0,
    }
    print()
    print(
        f"{verdict(goals['ingest_le_3s'])}: ingest incl. signature check {ingest_best:.2f} s <= 3 s"
    )
    print(
        f"{verdict(goals['lookup_le_5us'])}: lookup {lookup_med:.2f} us <= 5 us "
        f"(runs {', '.join(f'{x:.2f}' for x in lookup_runs)}; {len(probes)} serials, half listed)"
    )
    print(
        f"{verdict(goals['memory_le_1.5x_der'])}: index {retained / 1e6:.1f} MB = {ratio:.2f}x the DER "
        f"({size / 1e6:.1f} MB) <= 1.5x"
    )
    print(f"{verdict(goals['lookups_correct'])}: {wrong} wrong answers")

    write_result(
        "crl",
        {
            "entries": args.entries,
            "der_bytes": size,
            "width": idx.width,
            "buckets": idx.mask + 1,
            "generate_s": gen_s,
            "cardd": {
                "ingest_s": ingest_s,
                "verify_s": verify_s,
                "walk_s": walk_s,
                "build_s": build_s,
                "retained_bytes": retained,
                "peak_bytes": peak,
                "nbytes": idx.nbytes,
                "lookup_us_runs": lookup_runs,
                "lookups": len(probes),
                "wrong": wrong,
                "hit_with_date_us": hit_date_us,
                "save_s": save_s,
                "load_s": load_s,
                "file_bytes": file_size,
            },
            "cryptography": {
                "load_s": c_load_s,
                "signature_s": c_sig_s,
                "lookup_us": c_lookup_us,
                "lookups": len(c_probes),
                "rss_delta_load": c_rss_load,
                "rss_delta_after_lookups": c_rss_after,
                "set_build_s": c_set_s,
                "set_bytes": c_set_bytes,
                "set_lookup_us": c_set_lookup_us,
            },
            "goals": goals,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
