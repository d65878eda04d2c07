"""The single-process families (observability/local_metrics.py) expose what prometheus-client's own classes do."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from fastgate.observability.local_metrics import LocalCollector, LocalCounter, LocalGauge, LocalHistogram
from fastgate.observability.metrics import DURATION_BUCKETS

OBSERVATIONS = [0.0005, 0.001, 0.0010001, 0.0025, 0.003, 0.1, 29.9, 30.0, 31.0, 1e9, 0.0]


def _without_created(text: str) -> str:
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", text)


def _pair() -> tuple[CollectorRegistry, CollectorRegistry, tuple[Any, Any], tuple[Any, Any]]:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("fastgate_requests", "Requests.", ["route", "code"], registry=theirs)
    histogram = Histogram("fastgate_d_seconds", "Durations.", ["route"], buckets=DURATION_BUCKETS, registry=theirs)
    local_counter = LocalCounter("fastgate_requests", "Requests.", ["route", "code"])
    local_histogram = LocalHistogram("fastgate_d_seconds", "Durations.", ["route"], DURATION_BUCKETS)
    LocalCollector([local_counter, local_histogram], ours)
    return theirs, ours, (counter, local_counter), (histogram, local_histogram)


@pytest.mark.parametrize("encoder", [generate_latest, generate_openmetrics], ids=["text", "openmetrics"])
def test_local_families_render_like_prometheus_clients_own(encoder: Callable[[CollectorRegistry], bytes]) -> None:
    theirs, ours, counters, histograms = _pair()
    for each in counters:
        each.labels("0", "200").inc()
        each.labels("0", "200").inc(2.5)
        each.labels('we"ird\\', "502")  # created, never incremented: shows 0
    for each in histograms:
        for value in OBSERVATIONS:
            each.labels("0").observe(value)
        each.labels("users")
    assert _without_created(encoder(ours).decode()) == _without_created(encoder(theirs).decode())


@pytest.mark.parametrize("encoder", [generate_latest, generate_openmetrics], ids=["text", "openmetrics"])
def test_local_gauges_render_like_prometheus_clients_own(encoder: Callable[[CollectorRegistry], bytes]) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    gauge = Gauge("fastgate_conns", "Connections.", ["upstream", "state"], registry=theirs)
    stamp = Gauge("fastgate_stamp_seconds", "A time.", registry=theirs)
    local_gauge = LocalGauge("fastgate_conns", "Connections.", ["upstream", "state"])
    local_stamp = LocalGauge("fastgate_stamp_seconds", "A time.", [])
    LocalCollector([local_gauge, local_stamp], ours)
    assert encoder(ours) == encoder(theirs)  # the label-less gauge shows 0 before it is set, as theirs does
    for each in (gauge, local_gauge):
        each.labels("api", "active").set(3)
        each.labels("api", "idle").inc()
        each.labels("api", "idle").inc(2.5)
        each.labels("api", "idle").dec()
        each.labels('we"ird\\', "active")  # created, never set: shows 0
    for each in (stamp, local_stamp):
        each.set(1765000000.25)
    assert encoder(ours) == encoder(theirs)


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    histogram = LocalHistogram("d", "D.", [], (0.1, 1.0))
    child = histogram.labels()
    for value in (0.1, 0.10000001, 1.0, 2.0):
        child.observe(value)
    assert child.counts == [1, 2, 1]
    assert child.sum == pytest.approx(3.20000001)


def test_wrong_label_count_is_refused() -> None:
    with pytest.raises(ValueError, match="2 label values expected"):
        LocalCounter("c", "C.", ["a", "b"]).labels("x")
    with pytest.raises(ValueError, match="ascending"):
        LocalHistogram("d", "D.", [], (1.0, 0.5))


def test_created_series_follow_prometheus_clients_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", "true")
    registry = CollectorRegistry()
    counter = LocalCounter("c", "C.", [])
    counter.labels().inc()
    LocalCollector([counter], registry)
    assert "c_created" not in generate_latest(registry).decode()
    assert "c_total 1.0" in generate_latest(registry).decode()


def test_a_scrape_from_another_thread_while_children_are_added() -> None:
    registry = CollectorRegistry()
    counter = LocalCounter("c", "C.", ["n"])
    LocalCollector([counter], registry)
    stop = threading.Event()
    errors: list[BaseException] = []

    def scrape() -> None:
        while not stop.is_set():
            try:
                generate_latest(registry)
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        for n in range(20_000):
            counter.labels(str(n % 5_000)).inc()
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    assert sum(child.value for child in counter.children.values()) == 20_000
