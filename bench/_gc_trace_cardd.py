# SPDX-License-Identifier: Apache-2.0
"""`cardd` with a GC trace: like the console script, plus one stderr line per garbage collection.

Used by ``bench_event_latency.py --trace-gc`` to tell whether a latency outlier coincides with
a collection in the daemon. Lines: ``GCTRACE <gen> <start monotonic s> <duration ms>``;
CLOCK_MONOTONIC is system-wide, so the bench process can compare them with its own times.
"""

import gc
import sys
import time

_start = [0.0]


def _trace(phase: str, info: dict) -> None:
    if phase == "start":
        _start[0] = time.monotonic()
    else:
        t0 = _start[0]
        sys.stderr.write(f"GCTRACE {info['generation']} {t0:.6f} {(time.monotonic() - t0) * 1000:.3f}\n")


gc.callbacks.append(_trace)

from cardd.cli.main import main  # noqa: E402

sys.exit(main())
