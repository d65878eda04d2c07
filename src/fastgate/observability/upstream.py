"""Upstream tries as metrics and spans: the :class:`~fastgate.upstream.cluster.ClusterObserver` a cluster calls.

How this works
--------------
A :class:`Cluster` calls its observer around each try (``start_try`` before the send, then ``answered`` or
``failed``) and with each health transition. :class:`TryObserver` turns those calls into
``fastgate_upstream_requests_total``, ``fastgate_upstream_connect_errors_total``, ``fastgate_health_status`` and
``fastgate_ejections_total``, and, when the exchange is traced (``UpstreamRequest.trace``), into one CLIENT span per
try whose context goes upstream in that try's ``traceparent``. Label children are bound once per target here, so a
try costs one list index and one ``inc()``. A gateway with metrics and tracing both off gives its clusters no
observer at all.

Pool occupancy and health are also read at scrape time (:func:`refresh_cluster`, registered with
``Metrics.add_refresher``): gauges that are set from the pools' own counters cost nothing per request. So are an
upstream's circuit-breaker counts (:class:`BreakerRefresher`): its gauges, and ``fastgate_upstream_overflow_total``
advanced by the refusals the breaker counted since the last scrape (a plain counter, so multiprocess mode sums it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..upstream.health_state import HealthEvent, TargetState
from .tracing import TryTrace

if TYPE_CHECKING:
    from ..config import UpstreamTarget
    from ..upstream.cluster import Cluster
    from ..upstream.guarded import GuardedCluster
    from ..upstream.transport import UpstreamRequest
    from .metrics import Metrics


class _Target:
    """What one target's tries need: its address label, where a span says it is, its bound metric children."""

    __slots__ = ("address", "scheme", "host", "port", "prefix", "tries", "connect_errors")

    def __init__(self, target: UpstreamTarget) -> None:
        self.address = target.address
        self.scheme = target.scheme
        self.host = target.host
        self.port = target.port
        self.prefix = target.path_prefix
        self.tries: dict[int | str, Any] = {}
        self.connect_errors: Any = None


class TryObserver:
    """Metrics (``metrics``, None when off) and client spans for one upstream's tries.

    >>> cluster.observer = TryObserver("api", config.targets, metrics)
    """

    __slots__ = ("upstream", "_metrics", "_targets")

    def __init__(self, upstream: str, targets: Sequence[UpstreamTarget], metrics: Metrics | None) -> None:
        self.upstream = upstream
        self._metrics = metrics
        self._targets = [_Target(target) for target in targets]
        if metrics is not None:
            for target in self._targets:
                target.connect_errors = metrics.connect_errors.labels(upstream, target.address)
                metrics.set_health(upstream, target.address, True)  # targets start healthy (health_state.py)

    def __repr__(self) -> str:
        return f"<TryObserver {self.upstream} metrics={self._metrics is not None} targets={len(self._targets)}>"

    def start_try(self, request: UpstreamRequest, index: int) -> TryTrace | None:
        trace = request.trace
        if trace is None:
            return None
        target = self._targets[index]
        span = trace.start_try(
            request.method.decode("latin-1"),
            target.scheme,
            target.host,
            target.port,
            (target.prefix + request.target).decode("latin-1"),
        )
        span.inject(request.headers)  # this try's traceparent names its own span
        return span

    def _count(self, target: _Target, code: int | str) -> None:
        assert self._metrics is not None
        child = target.tries.get(code)
        if child is None:
            child = target.tries[code] = self._metrics.upstream_requests.labels(
                self.upstream, target.address, str(code)
            )
        child.inc()

    def answered(self, index: int, status: int, token: TryTrace | None) -> None:
        if self._metrics is not None:
            self._count(self._targets[index], status)
        if token is not None:
            token.end(status)

    def failed(self, index: int, code: str, connect_error: bool, token: TryTrace | None) -> None:
        if self._metrics is not None:
            target = self._targets[index]
            self._count(target, code)
            if connect_error:
                target.connect_errors.inc()
        if token is not None:
            token.end(error=code)

    def health_changed(self, events: list[HealthEvent]) -> None:
        metrics = self._metrics
        if metrics is None:
            return
        for event in events:
            address = self._targets[event.target].address
            metrics.set_health(self.upstream, address, event.new is TargetState.HEALTHY)
            if event.new is TargetState.EJECTED:
                metrics.inc_ejection(self.upstream, address)


def refresh_cluster(metrics: Metrics, cluster: Cluster) -> None:
    """Set ``cluster``'s connection and health gauges from its pools and health state (at scrape time)."""
    for stats in cluster.stats():
        if stats.pool is not None:
            metrics.set_upstream_connections(cluster.name, stats.address, stats.pool.busy, stats.pool.idle)
        metrics.set_health(cluster.name, stats.address, stats.state == TargetState.HEALTHY.value)


class BreakerRefresher:
    """At scrape time: a guarded cluster's breaker counts as gauges, its new refusals onto the overflow counter."""

    __slots__ = ("metrics", "cluster", "_seen")

    def __init__(self, metrics: Metrics, cluster: GuardedCluster) -> None:
        self.metrics = metrics
        self.cluster = cluster
        self._seen: dict[str, int] = {}

    def __call__(self) -> None:
        stats = self.cluster.breaker_stats()
        name = self.cluster.name
        self.metrics.set_breaker(name, stats.requests, stats.pending, stats.connections, stats.retries)
        for threshold, count in stats.overflows.items():
            new = count - self._seen.get(threshold, 0)
            if new > 0:
                self.metrics.overflowed(name, threshold, new)
                self._seen[threshold] = count
