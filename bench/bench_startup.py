#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Start-up of `cardd serve` to READY=1 (systemd Type=notify), against pcscd's own start.

Set-up as on a desk PC that has run for a while: a private pcscd with both vpcd readers, and
a state directory holding a MOICA-sized CRL index (412,000 entries: the synthetic CRL of
bench_crl.py is ~20 MB DER, its index file ~12 MB) next to the token file.

* cardd: the venv's console script ``cardd serve`` is started ``--runs`` times, each a fresh
  process with ``$NOTIFY_SOCKET`` pointing at a datagram socket this benchmark owns, as systemd
  does. Measured: Popen -> READY=1 received (the API listens and the reader layer has seen
  both readers or decided pcscd is down), then the idle RSS after ``--settle`` seconds.
* pcscd (the reference a technician knows): a second private pcscd (``unshare`` + bind mount +
  ``pcscd -f``, what tests and benchmarks use) is started the same number of times, interleaved
  with cardd's runs: Popen -> its socket accepts a connection; RSS of the pcscd process after
  the same settling time.

Bytecode: an installed cardd (pip, a Debian package) has its .pyc files compiled at install
time. A development shell often sets PYTHONDONTWRITEBYTECODE=1, and then every start compiles all
of cardd from source (~0.4 s). By default the benchmark therefore gives the cardd processes a
private bytecode cache (PYTHONPYCACHEPREFIX in the work directory, filled by the uncounted first
start; the repository is not written); ``--no-bytecode`` measures the inherited environment as is.

"Cold" = a new process each run; the page cache is warm (dropping it would disturb everyone
else on a shared machine). Also shown: what loading the CRL index would cost if ``serve`` did
it at start (it does not: the revocation store is created at the first citizen-card check).

Goal: READY=1 within 1 s (median).

Run as root (private pcscd): .venv/bin/python bench/bench_startup.py [--runs 7] [--settle 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def write_crl_index(state: Path, entries: int) -> dict[str, float]:
    import datetime as dt
    import random

    from cryptography import x509

    from cardd.moica import crl as cardd_crl
    from cardd.sim import testpki

    # the synthetic MOICA-sized CRL of bench_crl.py (same serial and date distribution)
    rng = random.Random(20260316)
    pki = testpki.make_test_pki()
    serials = [rng.getrandbits(127) | (1 << 63) for _ in range(entries)]
    start = dt.datetime(2014, 1, 1, tzinfo=dt.UTC)
    dates = [start + dt.timedelta(seconds=rng.randrange(10 * 365 * 86400)) for _ in serials]
    der = testpki.make_crl_der_fast(pki.moica, serials, revoked_at=dates, crl_number=2026031610)
    issuer = pki.moica.certificate
    idx = cardd_crl.ingest(der, issuer, url="bench")
    kid = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    path = state / "crl" / f"{kid.hex()}.idx"
    path.parent.mkdir(parents=True, exist_ok=True)
    cardd_crl.write_atomic(path, idx.to_file_bytes())
    t = time.perf_counter()
    cardd_crl.CrlIndex.from_file_bytes(path.read_bytes())
    load_s = time.perf_counter() - t
    return {"der_mb": len(der) / 1e6, "index_mb": path.stat().st_size / 1e6, "index_load_s": load_s}


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                if proc.poll() is not None:
                    raise RuntimeError("cardd serve exited before READY=1") from None
                continue
            fields = dict(line.split("=", 1) for line in msg.split("\n") if "=" in line)
            if fields.get("READY") == "1":
                return fields.get("STATUS", "")
        raise RuntimeError("no READY=1")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


#: extra environment of every measured Python process (see --no-bytecode)
CHILD_ENV: dict[str, str] = {}


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **CHILD_ENV, **extra)
    if CHILD_ENV:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def start_cardd(work: Path, state: Path, settle: float) -> dict[str, object]:
    port = C.free_port()
    config = work / "cardd.toml"
    config.write_text(f"[api]\nport = {port}\n")
    notify = NotifySocket(work / "notify.sock")
    env = child_env(CARDD_STATE_DIR=str(state), NOTIFY_SOCKET=str(notify.path))
    log = open(work / "cardd.log", "ab")  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(C.CARDD_SCRIPT), "--config", str(config), "serve"], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        status = notify.wait_ready(proc)
        ready_s = time.perf_counter() - t0
        time.sleep(settle)
        rss = psutil.Process(proc.pid).memory_info().rss / 1e6
    finally:
        proc.terminate()
        rc = proc.wait(30)
        log.close()
        notify.close()
    return {"ready_s": ready_s, "rss_mb": rss, "status": status, "exit": rc}


def start_pcscd(work: Path, settle: float) -> dict[str, float]:
    from cardd.sim.pcscd import PrivatePcscd

    ref = PrivatePcscd(work / "ref-pcscd", channel_id=C.free_vpcd_channel())
    t0 = time.perf_counter()
    ref.start()  # returns once its socket accepts a connection
    ready_s = time.perf_counter() - t0
    time.sleep(settle)
    assert ref.proc is not None
    proc = psutil.Process(ref.proc.pid)
    pcscd = proc if proc.name() == "pcscd" else next(
        c for c in proc.children(recursive=True) if c.name() == "pcscd")
    rss = pcscd.memory_info().rss / 1e6
    ref.stop()
    return {"ready_s": ready_s, "rss_mb": rss}


def import_floor() -> dict[str, float]:
    """A new interpreter importing what serve imports, and nothing else: the floor of READY."""
    code = ("import cardd.cli.main, cardd.daemon, cardd.api.app, cardd.rfid.station, "
            "cardd.rfid.taps, cardd.readers.pcsc, cardd.supervision")
    t0 = time.perf_counter()
    subprocess.run([str(C.VENV_BIN / "python"), "-c", code], check=True, env=child_env())
    return {"ready_s": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after start before RSS")
    ap.add_argument("--crl-entries", type=int, default=412_000)
    ap.add_argument("--no-bytecode", action="store_true",
                    help="no private .pyc cache: the inherited environment as is")
    args = ap.parse_args()

    env = C.Env()
    env.wait_readers()
    work = Path(tempfile.mkdtemp(prefix="cardd-bench-startup-"))
    state = work / "state"
    if not args.no_bytecode:
        CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    print("bytecode: " + ("as inherited (PYTHONDONTWRITEBYTECODE="
                          f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r})" if args.no_bytecode
                          else "private .pyc cache, as an installed cardd"))
    crl = write_crl_index(state, args.crl_entries)
    print(f"state dir: CRL index of {args.crl_entries} entries, {crl['index_mb']:.1f} MB "
          f"(from a {crl['der_mb']:.1f} MB CRL); loading it would take {crl['index_load_s']:.3f} s")
    start_cardd(work, state, 0.0)  # first start creates the token file (and .pyc); not counted
    import_floor()

    cardd_runs, pcscd_runs, floor_runs = [], [], []
    for _ in range(args.runs):  # interleaved: machine load hits all alike
        cardd_runs.append(start_cardd(work, state, args.settle))
        pcscd_runs.append(start_pcscd(work, args.settle))
        floor_runs.append(import_floor())
    env.close()

    def med(runs: list, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)

    c_ready, p_ready = med(cardd_runs, "ready_s"), med(pcscd_runs, "ready_s")
    c_rss, p_rss = med(cardd_runs, "rss_mb"), med(pcscd_runs, "rss_mb")
    rows = [
        ["cardd serve: Popen -> READY=1", f"{c_ready * 1000:.0f}",
         f"{min(float(r['ready_s']) for r in cardd_runs) * 1000:.0f}",
         f"{max(float(r['ready_s']) for r in cardd_runs) * 1000:.0f}", f"{c_rss:.1f}"],
        ["pcscd: Popen -> socket accepts", f"{p_ready * 1000:.0f}",
         f"{min(float(r['ready_s']) for r in pcscd_runs) * 1000:.0f}",
         f"{max(float(r['ready_s']) for r in pcscd_runs) * 1000:.0f}", f"{p_rss:.1f}"],
        ["python: only the imports of serve", f"{med(floor_runs, 'ready_s') * 1000:.0f}",
         f"{min(float(r['ready_s']) for r in floor_runs) * 1000:.0f}",
         f"{max(float(r['ready_s']) for r in floor_runs) * 1000:.0f}", "-"],
    ]
    print(f"\n{args.runs} interleaved starts each; RSS {args.settle:g} s after start\n")
    print(C.table(["start", "median ms", "min ms", "max ms", "RSS MB (median)"], rows))
    print(f"\nratio cardd/pcscd: start {c_ready / p_ready:.1f}x, RSS {c_rss / p_rss:.1f}x")
    statuses = sorted({str(r["status"]) for r in cardd_runs})
    print(f"STATUS with READY=1: {statuses}")
    exits = sorted({r["exit"] for r in cardd_runs})
    print(f"exit status after SIGTERM: {exits}")
    ok = c_ready <= 1.0 and exits == [0]
    print(f"\n{C.verdict(ok)}: READY=1 median {c_ready * 1000:.0f} ms <= 1000 ms"
          f"{'' if exits == [0] else ' (but an exit status was not 0)'}")
    C.write_result("startup", {
        "args": vars(args), "crl": crl, "cardd": cardd_runs, "pcscd": pcscd_runs,
        "import_floor": floor_runs,
        "median": {"cardd_ready_s": c_ready, "pcscd_ready_s": p_ready, "cardd_rss_mb": c_rss,
                   "pcscd_rss_mb": p_rss},
        "goals": {"ready_le_1s": c_ready <= 1.0},
    })
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
