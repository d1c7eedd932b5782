# SPDX-License-Identifier: Apache-2.0
"""Shared pieces of the benchmarks: a private pcscd, `cardd serve` as a subprocess, stats, output.

Import this module FIRST in a benchmark and call :func:`start_pcscd` before anything touches
PC/SC: libpcsclite reads ``PCSCLITE_CSOCK_NAME`` once per process.

Nothing here is imported from ``tests/``: the benchmarks must run from a plain checkout.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
FIXTURES = REPO / "tests" / "fixtures" / "cards"
VENV_BIN = REPO / ".venv" / "bin"
CARDD_SCRIPT = VENV_BIN / "cardd"
READER0, READER1 = "Virtual PCD 00 00", "Virtual PCD 00 01"

def _proc_stat() -> list[int]:
    """Aggregate CPU jiffies from /proc/stat: user nice system idle iowait irq softirq steal."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return []


_LOAD_AT_IMPORT = os.getloadavg()
_STAT_AT_IMPORT = _proc_stat()


def system_cpu_since_start() -> dict[str, float]:
    """Whole-machine CPU use since this module was imported (all processes, ours included)."""
    now = _proc_stat()
    if not now or not _STAT_AT_IMPORT:
        return {}
    d = [b - a for a, b in zip(_STAT_AT_IMPORT, now, strict=True)]
    total = sum(d) or 1
    idle = d[3] + d[4]
    return {"busy_pct_of_all_cpus": 100 * (total - idle) / total, "steal_pct": 100 * d[7] / total}

if str(REPO) not in sys.path:  # `python bench/bench_x.py` from anywhere
    sys.path.insert(0, str(REPO))


# -- environment ------------------------------------------------------------------------------


def _port_pair_free(port: int) -> bool:
    for p in (port, port + 1):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def free_vpcd_channel() -> int:
    """A vpcd channel (= TCP port of slot 0; slot 1 is +1) that nobody else uses right now.

    The tests' private pcscd uses 0x9C7B and the system one 0x8C7B; the benchmarks must not
    collide with a test session running at the same time.
    """
    for port in range(0xAC7B, 0xAC7B + 400, 2):
        if _port_pair_free(port):
            return port
    raise RuntimeError("no free port pair for vpcd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Env:
    """A private pcscd (with vpcd) for one benchmark process, torn down at exit."""

    def __init__(self) -> None:
        from cardd.sim.pcscd import PrivatePcscd

        reason = PrivatePcscd.usable()
        if reason:
            print(f"cannot run: {reason}", file=sys.stderr)
            sys.exit(2)
        self.tmp = Path(tempfile.mkdtemp(prefix="cardd-bench-"))
        self.pcscd = PrivatePcscd(self.tmp / "pcscd", channel_id=free_vpcd_channel())
        # BEFORE any PC/SC call in this process (and inherited by `cardd serve` children).
        os.environ.update(self.pcscd.environ())
        os.environ.pop("CARDD_CONFIG", None)
        self.pcscd.start()
        self._readers: Any = None
        atexit.register(self.close)

    @property
    def vreaders(self) -> Any:
        if self._readers is None:
            from cardd.sim.vpcd import VirtualReaders

            self._readers = VirtualReaders(port=self.pcscd.vpcd_port)
        return self._readers

    def wait_readers(self, names: Sequence[str] = (READER0, READER1), timeout: float = 10.0) -> None:
        """Until pcscd lists the vpcd readers (it loads the driver asynchronously)."""
        from smartcard import scard

        deadline = time.monotonic() + timeout
        hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hr:
            raise RuntimeError(f"SCardEstablishContext: 0x{hr & 0xFFFFFFFF:08X}")
        try:
            while True:
                hr, readers = scard.SCardListReaders(ctx, [])
                if hr == 0 and all(n in readers for n in names):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"readers {names} not listed by pcscd: {readers!r}")
                time.sleep(0.05)
        finally:
            scard.SCardReleaseContext(ctx)

    def pcscd_process(self) -> Any:
        """psutil.Process of the pcscd binary (unshare execs sh which execs pcscd)."""
        import psutil

        assert self.pcscd.proc is not None
        proc = psutil.Process(self.pcscd.proc.pid)
        if proc.name() == "pcscd":
            return proc
        for child in proc.children(recursive=True):
            if child.name() == "pcscd":
                return child
        raise RuntimeError(f"no pcscd under pid {proc.pid} ({proc.name()})")

    def close(self) -> None:
        try:
            if self._readers is not None:
                self._readers.remove_all()
        except Exception:  # noqa: BLE001 - teardown
            pass
        self.pcscd.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def load_card(name: str) -> Any:
    from cardd.sim.cards.loader import load_card as _load

    return _load(FIXTURES / name)


def wait_card(reader: str, present: bool, timeout: float = 3.0) -> bytes | None:
    """Wait through PC/SC until a card is (not) present (same loop as tests/helpers.py)."""
    from smartcard import scard

    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr:
        raise RuntimeError(f"SCardEstablishContext: 0x{hr & 0xFFFFFFFF:08X}")
    try:
        states = [(reader, scard.SCARD_STATE_UNAWARE)]
        deadline = time.monotonic() + timeout
        while True:
            ms = max(0, int((deadline - time.monotonic()) * 1000))
            hr, states = scard.SCardGetStatusChange(ctx, ms, states)
            if hr == scard.SCARD_E_TIMEOUT:
                raise TimeoutError(f"{reader}: present={present} not reached in {timeout} s")
            if hr:
                raise RuntimeError(f"SCardGetStatusChange: 0x{hr & 0xFFFFFFFF:08X}")
            name, event, atr = states[0]
            if bool(event & scard.SCARD_STATE_PRESENT) == present:
                return bytes(atr) if present else None
            states = [(name, event & ~scard.SCARD_STATE_CHANGED)]
    finally:
        scard.SCardReleaseContext(ctx)


# -- cardd serve ------------------------------------------------------------------------------


class Daemon:
    """`cardd serve` (the venv's console script) with its own config and state dir."""

    def __init__(self, workdir: Path, *, log_level: str | None = None, trace_gc: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = workdir / "state"
        self.config = workdir / "cardd.toml"
        # Default log level (info) unless asked: the benchmarks measure cardd as shipped.
        log = f'[log]\nlevel = "{log_level}"\n' if log_level else ""
        self.config.write_text(f"[api]\nport = {self.port}\n{log}")
        self.log_path = workdir / "cardd.log"
        env = dict(os.environ, CARDD_STATE_DIR=str(self.state))
        env.pop("CARDD_CONFIG", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        # trace_gc: the same main() through bench/_gc_trace_cardd.py, which logs collections
        exe = [str(VENV_BIN / "python"), str(BENCH_DIR / "_gc_trace_cardd.py")] if trace_gc \
            else [str(CARDD_SCRIPT)]
        self.proc = subprocess.Popen(
            [*exe, "--config", str(self.config), "serve"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("cardd serve exited at start:\n" + self.log_path.read_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("cardd serve did not listen in 20 s") from None
                time.sleep(0.05)
        self.token = (self.state / "token").read_text().strip()

    def gc_trace(self) -> list[tuple[int, float, float]]:
        """(generation, start monotonic s, duration ms) from the log (with trace_gc)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("GCTRACE "):
                _, gen, start, dur = line.split()
                out.append((int(gen), float(start), float(dur)))
        return out

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


# -- stats and output -------------------------------------------------------------------------


def quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default) of an already sorted sequence."""
    if not sorted_xs:
        return math.nan
    pos = (len(sorted_xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def summary(xs: Iterable[float]) -> dict[str, float]:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return {"n": 0}
    mean = sum(s) / n
    return {
        "n": n,
        "mean": mean,
        "min": s[0],
        "p50": quantile(s, 0.50),
        "p90": quantile(s, 0.90),
        "p99": quantile(s, 0.99),
        "max": s[-1],
        "stdev": math.sqrt(sum((x - mean) ** 2 for x in s) / (n - 1)) if n > 1 else 0.0,
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for i, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in _LOAD_AT_IMPORT],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "system_cpu_during_run": system_cpu_since_start(),
    }


def cardd_source() -> dict[str, Any]:
    """Fingerprint of cardd/**/*.py: the code changes under a shared checkout, and git is off
    limits to the benchmarks. Same sha256 = same code."""
    import hashlib

    h = hashlib.sha256()
    newest = 0.0
    files = sorted((REPO / "cardd").rglob("*.py"))
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
        newest = max(newest, f.stat().st_mtime)
    return {
        "files": len(files),
        "sha256": h.hexdigest()[:16],
        "newest_mtime": _dt.datetime.fromtimestamp(newest, _dt.UTC).isoformat(timespec="seconds"),
    }


_SOURCE_AT_IMPORT = cardd_source()


def write_result(name: str, result: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "cardd_source_at_start": _SOURCE_AT_IMPORT,
        "cardd_source_at_end": cardd_source(),
        **result,
    }
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    m = result["machine"]
    sc = m.get("system_cpu_during_run") or {}
    print(f"\nmachine during the run: loadavg {m['loadavg_at_start'][0]} -> {m['loadavg_at_end'][0]}, "
          f"all CPUs {sc.get('busy_pct_of_all_cpus', float('nan')):.1f} % busy "
          f"(steal {sc.get('steal_pct', float('nan')):.1f} %), this benchmark included")
    src0, src1 = result["cardd_source_at_start"], result["cardd_source_at_end"]
    changed = "" if src0["sha256"] == src1["sha256"] else f" -> {src1['sha256']} (CHANGED during the run)"
    print(f"cardd source {src0['sha256']} (newest file {src0['newest_mtime']}){changed}")
    print(f"result written to {path}")
    return path
