# SPDX-License-Identifier: Apache-2.0
"""cardd.metrics: values, bounded label sets, and the exposition as Prometheus's parser reads it."""

from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cardd import metrics
from cardd.metrics import MAX_SERIES, Registry


def parse(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counter_gauge_histogram_round_trip_through_the_prometheus_parser():
    r = Registry()
    ops = r.counter("t_ops_total", "ops", ("operation", "result"))
    g = r.gauge("t_readers", "readers", ("kind",))
    h = r.histogram("t_seconds", "latency", ("operation",), buckets=(0.1, 1.0))
    ops.inc("burn", "ok")
    ops.inc("burn", "ok")
    ops.inc("burn", "already_issued")
    g.set(2, "contactless")
    for v in (0.05, 0.5, 0.5, 3.0):
        h.observe(v, "burn")
    text = r.expose()
    families = parse(text)
    assert families["t_ops"].type == "counter"
    assert families["t_seconds"].type == "histogram"
    s = samples(text)
    assert s[("t_ops_total", (("operation", "burn"), ("result", "ok")))] == 2
    assert s[("t_ops_total", (("operation", "burn"), ("result", "already_issued")))] == 1
    assert s[("t_readers", (("kind", "contactless"),))] == 2
    # cumulative buckets, +Inf equals the count
    assert s[("t_seconds_bucket", (("le", "0.1"), ("operation", "burn")))] == 1
    assert s[("t_seconds_bucket", (("le", "1.0"), ("operation", "burn")))] == 3
    assert s[("t_seconds_bucket", (("le", "+Inf"), ("operation", "burn")))] == 4
    assert s[("t_seconds_count", (("operation", "burn"),))] == 4
    assert s[("t_seconds_sum", (("operation", "burn"),))] == pytest.approx(4.05)


def test_label_values_are_escaped():
    r = Registry()
    c = r.counter("t_total", "help with \\ and\nnewline", ("x",))
    c.inc('quote" back\\slash\nnewline')
    s = samples(r.expose())
    assert s[("t_total", (("x", 'quote" back\\slash\nnewline'),))] == 1


def test_label_sets_are_bounded():
    r = Registry()
    c = r.counter("t_total", "bounded", ("x",))
    for i in range(MAX_SERIES + 50):
        c.inc(str(i))
    assert len(samples(r.expose())) == MAX_SERIES
    assert c.overflow == 50
    c.inc("0")  # existing series still count
    assert c.value("0") == 2


def test_wrong_label_count_and_negative_counter_are_refused():
    r = Registry()
    c = r.counter("t_total", "x", ("a", "b"))
    with pytest.raises(ValueError):
        c.inc("only-one")
    with pytest.raises(ValueError):
        c.inc("a", "b", amount=-1)
    with pytest.raises(ValueError):
        r.counter("t_total", "twice")


def test_concurrent_increments_are_not_lost():
    r = Registry()
    c = r.counter("t_total", "x", ("t",))
    h = r.histogram("t_seconds", "x")

    def work():
        for _ in range(5000):
            c.inc("a")
            h.observe(0.2)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.value("a") == 20000
    assert h.count() == 20000


def test_collectors_run_before_each_exposition_and_can_be_removed():
    r = Registry()
    g = r.gauge("t_live", "x", ("k",))
    state = {"n": 1}
    collect = r.add_collector(lambda: g.set_all({("a",): float(state["n"])}))
    assert samples(r.expose())[("t_live", (("k", "a"),))] == 1
    state["n"] = 5
    assert samples(r.expose())[("t_live", (("k", "a"),))] == 5
    r.remove_collector(collect)
    state["n"] = 9
    assert samples(r.expose())[("t_live", (("k", "a"),))] == 5


def test_cardds_registry_has_build_info_and_start_time():
    s = samples(metrics.REGISTRY.expose())
    build = [k for k in s if k[0] == "cardd_build_info"]
    assert build and dict(build[0][1])["version"] == __import__("cardd").__version__
    start = s[("cardd_process_start_time_seconds", ())]
    import time

    assert 0 < time.time() - start < 24 * 3600


def test_record_operation_feeds_counter_and_histogram():
    before = metrics.OPERATIONS.value("unit.op", "ok")
    count = metrics.OPERATION_SECONDS.count("unit.op")
    metrics.record_operation("unit.op", "ok", 0.02)
    assert metrics.OPERATIONS.value("unit.op", "ok") == before + 1
    assert metrics.OPERATION_SECONDS.count("unit.op") == count + 1
