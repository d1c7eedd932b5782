# SPDX-License-Identifier: Apache-2.0
"""A small metrics registry: counters, gauges, histograms, Prometheus text exposition 0.0.4.

Why not ``prometheus_client``: cardd needs about a dozen series, one exposition format and no
push gateway, multiprocess mode or default process collectors; the registry here is ~200 lines
without a dependency on a kiosk, and the format is checked in the tests by prometheus_client's
own parser (a test-only dependency), so it cannot drift from what Prometheus reads.

Label values are bounded by construction: backends, reader kinds, operation names and result
codes come from cardd's code, never from a request (no UIDs, ID numbers or reader names).
Updates are thread-safe (hardware threads and the event loop both count); a scrape renders a
consistent copy under one lock per metric.

Values that are cheaper to read than to keep up to date (readers present, subscribers, CRL ages,
ledger counts) are filled in at scrape time by collectors the daemon registers
(:meth:`Registry.add_collector`).
"""

from __future__ import annotations

import math
import platform
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from cardd import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: seconds; card operations run from ~10 ms (a UID) to tens of seconds (a PIN typed slowly)
DEFAULT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: a metric that grows past this many label sets stops adding new ones (and counts the refusals)
MAX_SERIES = 200

LabelValues = tuple[str, ...]


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._lock = threading.Lock()
        self.overflow = 0

    def _key(self, values: Sequence[str], size: int) -> LabelValues | None:
        key = tuple(str(v) for v in values)
        if len(key) != len(self.label_names):
            raise ValueError(f"{self.name}: expected labels {self.label_names}, got {key}")
        if size >= MAX_SERIES:
            self.overflow += 1
            return None
        return key

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class _Series(_Metric):
    """One number per label set: what counters and gauges share."""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {}

    def _update(self, labels: Sequence[str], change: Callable[[float], float]) -> None:
        with self._lock:
            key = tuple(str(v) for v in labels)
            if key not in self._values and self._key(labels, len(self._values)) is None:
                return  # over MAX_SERIES: counted in ``overflow``
            self._values[key] = change(self._values.get(key, 0.0))

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [
            f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items
        ]


class Counter(_Series):
    """Only goes up. ``name`` should end in ``_total``."""

    kind = "counter"

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter cannot go down")
        self._update(labels, lambda v: v + amount)


class Gauge(_Series):
    """Set to the current value; ``set_all`` replaces every series at once (scrape collectors)."""

    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        self._update(labels, lambda _v: float(value))

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self._update(labels, lambda v: v + amount)

    def dec(self, *labels: str, amount: float = 1.0) -> None:
        self.inc(*labels, amount=-amount)

    def set_all(self, values: dict[LabelValues, float]) -> None:
        for key in values:
            if len(key) != len(self.label_names):
                raise ValueError(f"{self.name}: expected labels {self.label_names}, got {key}")
        with self._lock:
            self._values = dict(list(values.items())[:MAX_SERIES])


class Histogram(_Metric):
    """Cumulative buckets, ``_sum`` and ``_count`` per label set."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))
        # per label set: counts per bucket (non-cumulative; +Inf last), sum
        self._values: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            key = tuple(str(v) for v in labels)
            entry = self._values.get(key)
            if entry is None:
                if self._key(labels, len(self._values)) is None:
                    return
                entry = self._values[key] = ([0] * (len(self.buckets) + 1), [0.0])
            counts, total = entry
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            total[0] += value

    def count(self, *labels: str) -> int:
        with self._lock:
            entry = self._values.get(tuple(labels))
            return sum(entry[0]) if entry else 0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._values.items())
        lines = self.header()
        for key, (counts, total) in items:
            cumulative = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += n
                # le as a float ("1.0"), as client libraries write it: "1" and "1.0" are two
                # different label values to a query that matches on them
                le = 'le="' + ("+Inf" if math.isinf(bound) else repr(float(bound))) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {cumulative}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def register(self, metric: _Metric) -> _Metric:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} registered twice")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        m = Counter(name, help, labels)
        self.register(m)
        return m

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        m = Gauge(name, help, labels)
        self.register(m)
        return m

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        m = Histogram(name, help, labels, buckets)
        self.register(m)
        return m

    def add_collector(self, collect: Callable[[], None]) -> Callable[[], None]:
        """``collect()`` runs before each exposition (to set gauges from live state)."""
        with self._lock:
            self._collectors.append(collect)
        return collect

    def remove_collector(self, collect: Callable[[], None]) -> None:
        with self._lock:
            if collect in self._collectors:
                self._collectors.remove(collect)

    def expose(self) -> str:
        """The Prometheus text format (0.0.4) of every metric, collectors run first."""
        with self._lock:
            collectors = list(self._collectors)
            metrics = list(self._metrics.values())
        for collect in collectors:
            collect()
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


# -- cardd's metrics ------------------------------------------------------------------------

REGISTRY = Registry()

BUILD_INFO = REGISTRY.gauge(
    "cardd_build_info", "cardd's version and Python's, always 1", ("version", "python")
)
PROCESS_START = REGISTRY.gauge(
    "cardd_process_start_time_seconds", "Start time of the process since the Unix epoch"
)
READERS = REGISTRY.gauge(
    "cardd_readers", "Readers connected, by backend and kind", ("backend", "kind")
)
CARDS_PRESENT = REGISTRY.gauge(
    "cardd_readers_card_present",
    "Readers with a card present, by backend and kind",
    ("backend", "kind"),
)
BACKEND_UP = REGISTRY.gauge(
    "cardd_backend_up", "1 when a reader backend is reachable", ("backend",)
)
TAPS = REGISTRY.counter(
    "cardd_taps_total",
    "Contactless cards that arrived on a reader (taps), by backend",
    ("backend",),
)
OPERATIONS = REGISTRY.counter(
    "cardd_operations_total",
    "Card operations finished, by name and result (ok, timeout, cancelled or an error code)",
    ("operation", "result"),
)
OPERATION_SECONDS = REGISTRY.histogram(
    "cardd_operation_duration_seconds", "Card operation latency, by name", ("operation",)
)
EVENTS_PUBLISHED = REGISTRY.counter(
    "cardd_events_published_total", "Events published on the event bus, by type", ("type",)
)
EVENTS_DROPPED = REGISTRY.counter(
    "cardd_events_dropped_total",
    "Events a slow subscriber lost (its bounded queue was full)",
)
SUBSCRIBERS = REGISTRY.gauge(
    "cardd_event_subscribers", "Open event streams, by transport (sse, ws)", ("transport",)
)
CRL_AGE = REGISTRY.gauge(
    "cardd_crl_age_seconds",
    "Seconds since thisUpdate of the CRL held per issuer (key id)",
    ("issuer",),
)
CRL_NEXT_UPDATE = REGISTRY.gauge(
    "cardd_crl_next_update_seconds",
    "Seconds until nextUpdate of the CRL held per issuer (negative: expired)",
    ("issuer",),
)
LEDGER_NUMBERS = REGISTRY.gauge(
    "cardd_ledger_numbers", "Library numbers in the ledger, by state", ("state",)
)
CONFIG_RELOADS = REGISTRY.counter(
    "cardd_config_reloads_total",
    "Configuration reloads (SIGHUP), by result (ok, refused)",
    ("result",),
)


def _process_start_time() -> float:
    """When this process started (Linux: /proc), else when this module was imported."""
    try:
        import os
        from pathlib import Path

        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the (comm) field
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


BUILD_INFO.set(1, __version__, platform.python_version())
PROCESS_START.set(_process_start_time())
for _transport in ("sse", "ws"):
    SUBSCRIBERS.set(0, _transport)


def record_operation(name: str, result: str, seconds: float) -> None:
    """One finished card operation (the reader manager calls this for every operation)."""
    OPERATIONS.inc(name, result)
    OPERATION_SECONDS.observe(seconds, name)


class Streams:
    """``with stream_open("sse"):`` counts an open SSE/WebSocket stream."""

    def __init__(self, transport: str) -> None:
        self.transport = transport

    def __enter__(self) -> None:
        SUBSCRIBERS.inc(self.transport)

    def __exit__(self, *exc: object) -> None:
        SUBSCRIBERS.dec(self.transport)


def stream_open(transport: str) -> Streams:
    return Streams(transport)
