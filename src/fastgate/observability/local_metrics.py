"""Per-request counters and histograms as plain numbers, rendered at scrape time (single-process mode).

prometheus-client's ``Counter.inc`` and ``Histogram.observe`` take a lock, check the metric is observable and, for a
histogram, walk the bucket bounds in Python: about 27,000 instructions of a proxied request's ~297,000 were the
three or four such calls an exchange makes (bench/instructions.py, metrics on against off). A worker serves on one
event loop thread, so its per-request metrics need no lock: here a counter child is a float that ``inc`` adds to,
and a histogram child a list of per-bucket counts that ``observe`` updates after one C ``bisect``. A collector
registered in the worker's registry turns them into the same families, samples and labels a prometheus-client
``Counter``/``Histogram`` of that name exposes (``_total``/``_created``; ``_bucket``/``_count``/``_sum``/
``_created``), at scrape time only.

The families are read from the admin listener's rendering thread while the loop updates them: each child's values
are plain numbers (read whole under the GIL) and the children are listed once per scrape, so a scrape sees every
child created before it and each child's value at some moment of the scrape.

With ``--workers N`` (prometheus-client's multiprocess mode) values must reach the shared files on every update,
so :class:`~fastgate.observability.metrics.Metrics` uses prometheus-client's own classes there.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


def _created_series() -> bool:
    """prometheus-client's own switch for the ``_created`` samples (the environment variable it reads)."""
    return os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() not in ("true", "1", "t")


class CountChild:
    """One label combination of a :class:`LocalCounter`."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class HistogramChild:
    """One label combination of a :class:`LocalHistogram`: counts per bucket (not cumulative), the sum."""

    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf's own
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. the "le" bucket the value belongs to
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


_Child = TypeVar("_Child", CountChild, HistogramChild)


class _Family(Generic[_Child]):
    """A family's name, help text, label names and children; ``labels(*values)`` gives (or makes) one child."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], _Child] = {}

    def labels(self, *values: str) -> _Child:
        child = self.children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected, got {values!r}")
            child = self.children[values] = self._new_child()
        return child

    def _new_child(self) -> _Child:
        raise NotImplementedError


class LocalCounter(_Family[CountChild]):
    """A counter family: ``labels(*values)`` gives the child to ``inc``. Exposed as ``<name>_total``."""

    def _new_child(self) -> CountChild:
        return CountChild()

    def family(self, created: bool) -> Metric:
        metric = Metric(self.name, self.documentation, "counter")
        for values, child in list(self.children.items()):
            labels = dict(zip(self.labelnames, values, strict=True))
            metric.add_sample(f"{self.name}_total", labels, child.value)
            if created:
                metric.add_sample(f"{self.name}_created", labels, child.created)
        return metric


class LocalHistogram(_Family[HistogramChild]):
    """A histogram family with fixed ``buckets`` (upper bounds, ascending; +Inf is added)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        super().__init__(name, documentation, labelnames)
        self.bounds = tuple(float(bound) for bound in buckets if bound != float("inf"))
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"{self.name}: buckets must be ascending and distinct, got {buckets!r}")
        self._le = [floatToGoString(bound) for bound in (*self.bounds, float("inf"))]  # type: ignore[no-untyped-call]

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def family(self, created: bool) -> Metric:
        metric = Metric(self.name, self.documentation, "histogram")
        for values, child in list(self.children.items()):
            labels = dict(zip(self.labelnames, values, strict=True))
            counts, total = list(child.counts), child.sum  # _count is the buckets' total, as a scrape expects
            cumulative = 0
            for le, count in zip(self._le, counts, strict=True):
                cumulative += count
                metric.add_sample(f"{self.name}_bucket", {**labels, "le": le}, cumulative)
            metric.add_sample(f"{self.name}_count", labels, cumulative)
            metric.add_sample(f"{self.name}_sum", labels, total)
            if created:
                metric.add_sample(f"{self.name}_created", labels, child.created)
        return metric


class LocalCollector(Collector):
    """Renders local families in a registry, in the order given."""

    def __init__(self, families: Sequence[LocalCounter | LocalHistogram], registry: CollectorRegistry) -> None:
        self.families = tuple(families)
        self._created = _created_series()
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.family(self._created)
