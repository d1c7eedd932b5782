#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Ledger: reserve + commit cycles on SQLite and PostgreSQL, against a bare INSERT/UPDATE loop.

Each cardd cycle is what a burn costs the ledger: reserve (pending, UID bound) then commit
(pending → active, the previous number superseded), each its own transaction with the audit rows
and checks. The bare loop does one INSERT and one UPDATE per cycle, each its own transaction, on
the same database settings (SQLite: WAL, synchronous=FULL; PostgreSQL: the same private server).
The ratio says what the ledger's rules and audit trail cost over the least a ledger could do.

    sudo .venv/bin/python bench/bench_ledger.py [--cycles 10000] [--ids 500]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cardd.rfid.idnumber import check_digit  # noqa: E402
from cardd.rfid.ledger import open_ledger  # noqa: E402


def make_ids(n: int) -> list[str]:
    out = []
    for i in range(n):
        prefix = f"A1{i:07d}"
        out.append(prefix + str(check_digit(prefix)))
    return out


def cardd_cycles(url: str, ids: list[str], cycles: int) -> float:
    ledger = open_ledger(url)
    try:
        start = time.perf_counter()
        for n in range(cycles):
            person = ids[n % len(ids)]
            r = ledger.reserve(person, reissue=True, station="bench", operator="bench", uid=f"{n:08X}")
            ledger.commit(r.number, uid=f"{n:08X}", station="bench", operator="bench")
        return time.perf_counter() - start
    finally:
        ledger.close()


def bare_sqlite(path: Path, cycles: int) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE n (number TEXT PRIMARY KEY, state TEXT, uid TEXT)")
    start = time.perf_counter()
    for i in range(cycles):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO n VALUES (?, 'pending', ?)", (f"N{i:011d}", f"{i:08X}"))
        db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE n SET state = 'active' WHERE number = ?", (f"N{i:011d}",))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def bare_pg(url: str, cycles: int) -> float:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE n (number TEXT PRIMARY KEY, state TEXT, uid TEXT)")
        start = time.perf_counter()
        for i in range(cycles):
            with db.transaction():
                db.execute("INSERT INTO n VALUES (%s, 'pending', %s)", (f"N{i:011d}", f"{i:08X}"))
            with db.transaction():
                db.execute("UPDATE n SET state = 'active' WHERE number = %s", (f"N{i:011d}",))
        return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=10000)
    ap.add_argument("--ids", type=int, default=500, help="distinct IDs (each gets cycles/ids reissues; at most 99)")
    args = ap.parse_args()
    if args.cycles / args.ids > 99:
        ap.error("more than 99 reissues per ID: raise --ids")
    ids = make_ids(args.ids)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        results["sqlite"] = {"cardd": cardd_cycles(str(t / "ledger.sqlite3"), ids, args.cycles),
                             "bare": bare_sqlite(t / "bare.sqlite3", args.cycles)}
    sys.path.insert(0, str(ROOT / "tests"))
    from tests.pg import PrivatePostgres

    reason = PrivatePostgres.usable()
    if reason is None:
        with PrivatePostgres().start() as pg:
            a, b = pg.create_database("cardd_bench"), pg.create_database("bare_bench")
            results["postgresql"] = {"cardd": cardd_cycles(a, ids, args.cycles), "bare": bare_pg(b, args.cycles)}
            results["postgresql"]["note"] = "private server with fsync=off, synchronous_commit=off (tests/pg.py)"
    else:
        print(f"PostgreSQL skipped: {reason}")
    print(f"{args.cycles} reserve+commit cycles over {args.ids} IDs")
    print(f"{'backend':<11} {'cardd ms/cycle':>15} {'bare ms/cycle':>14} {'ratio':>7} {'cardd cycles/s':>15}")
    for name, r in results.items():
        per, bare = r["cardd"] / args.cycles * 1000, r["bare"] / args.cycles * 1000
        r.update(cardd_ms=per, bare_ms=bare, ratio=per / bare)
        print(f"{name:<11} {per:>15.3f} {bare:>14.3f} {per / bare:>7.2f} {args.cycles / r['cardd']:>15.0f}")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ledger.json").write_text(json.dumps({"cycles": args.cycles, "ids": args.ids, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
