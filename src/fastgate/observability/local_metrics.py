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

In a single process every family is local (counters, gauges, the histogram), so prometheus-client itself, whose
package imports its HTTP exposition server (``http.server``, ``wsgiref``, ``email``, ``urllib.request``), is
imported only when the first scrape renders them: ~2.8 MB of a worker's idle RSS (tests/test_lazy_imports.py).
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:  # imported where a scrape renders the families
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry


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


class GaugeChild:
    """One label combination of a :class:`LocalGauge`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


_Child = TypeVar("_Child", CountChild, HistogramChild, GaugeChild)


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
        from prometheus_client.metrics_core import Metric

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
        self._le: list[str] | None = None  # the bounds as "le" label values: at the first scrape

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def family(self, created: bool) -> Metric:
        from prometheus_client.metrics_core import Metric
        from prometheus_client.utils import floatToGoString

        if self._le is None:
            self._le = [floatToGoString(bound) for bound in (*self.bounds, float("inf"))]  # type: ignore[no-untyped-call]
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


class LocalGauge(_Family[GaugeChild]):
    """A gauge family: ``labels(*values)`` gives the child to ``set``, ``inc`` or ``dec``. Without label names it
    has its one child from the start, and ``set`` on the family sets it, as prometheus-client's ``Gauge``."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, documentation, labelnames)
        if not self.labelnames:
            self.labels()

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        """Set the child of a gauge without label names."""
        self.labels().set(value)

    def family(self, created: bool) -> Metric:
        from prometheus_client.metrics_core import Metric

        metric = Metric(self.name, self.documentation, "gauge")
        for values, child in list(self.children.items()):
            metric.add_sample(self.name, dict(zip(self.labelnames, values, strict=True)), child.value)
        return metric


LocalFamily = LocalCounter | LocalHistogram | LocalGauge


class LocalCollector:
    """Renders local families in a registry, in the order given (a prometheus-client collector: ``collect``)."""

    def __init__(self, families: Sequence[LocalFamily], registry: CollectorRegistry | None = None) -> None:
        self.families = tuple(families)
        self._created = _created_series()
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.family(self._created)
