"""The three consumers of an :class:`ExchangeRecord` behind one object the proxy holds: the wiring seam.

``Gateway`` builds one :class:`Observability` from its config (``gateway.observability``); ``forward_http`` and
``forward_websocket`` call :meth:`Observability.begin` once the request head is rewritten and
:meth:`Observability.finish` in their ``finally`` (trace end, metrics, live stats, the one access line, in that
order). The gateway's lifespan enters :meth:`Observability.running` with its transports: each cluster gets a
:class:`~fastgate.observability.upstream.TryObserver` when metrics or tracing are on, its gauges are read at scrape
time, and, under ``--workers N``, refreshed every few seconds in every worker so that a scrape answered by any
worker sees them all.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from .access import Formatter, access_formatter, format_text
from .live import LiveStats
from .logging import access_logger, write_access_line
from .record import ExchangeRecord
from .tracing import ExchangeTrace, Headers, Tracer, propagate

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from .metrics import Metrics

_ACCESS = access_logger.name

# Under --workers N, how often each worker writes its connection and health gauges to the shared files.
MULTIPROCESS_REFRESH_SECONDS = 2.0


@dataclass(slots=True)
class Observability:
    """Tracer, metrics (``None`` when off) and the access-line formatter of one gateway.

    >>> trace = observability.begin(head.headers, record, scheme="http", host=head.host)
    >>> observability.finish(record, trace)   # in the finally
    """

    tracer: Tracer = field(default_factory=Tracer)
    metrics: Metrics | None = None
    format_access: Formatter = format_text
    live: LiveStats = field(default_factory=LiveStats)
    tracing: bool = field(init=False, default=False)  # spans are recorded: forward_http hands the trace to tries

    def __post_init__(self) -> None:
        self.tracing = self.tracer.enabled

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Observability:
        """What ``config`` asks for: metrics unless ``metrics.enabled`` is false, spans when ``tracing`` is set."""
        metrics = None
        if config.metrics.enabled:
            from .metrics import Metrics

            metrics = Metrics.from_config(config)
        return cls(Tracer.from_config(config.tracing), metrics, access_formatter(config.server.access_log_format))

    def begin(
        self, headers: Headers, record: ExchangeRecord, *, scheme: str = "http", host: bytes = b""
    ) -> ExchangeTrace | None:
        """Propagate (``headers`` changed in place) and start the server span; sets ``record.trace_id``.

        Tracing off: the trace context only (the client's ``traceparent``, or a new one), and None.
        """
        if not self.tracing:
            record.trace_id = propagate(headers)[0]
            return None
        trace = self.tracer.begin(
            headers,
            method=record.method,
            scheme=scheme,
            target=record.target,
            http_version=record.http_version,
            host=host,
            client=record.client,
        )
        record.trace_id = trace.trace_id
        return trace

    def finish(self, record: ExchangeRecord, trace: ExchangeTrace | None = None) -> None:
        """The exchange is over: end its span, count it, write its access line."""
        if trace is not None:
            trace.end(record)
        if self.metrics is not None:
            self.metrics.observe(record)
        self.live.record(record)
        if access_logger.isEnabledFor(logging.INFO):
            line = self.format_access(record)
            # The default logging configuration: the line goes straight to the handler's buffer for this loop turn,
            # as the handler's formatter would write it (no LogRecord, no dispatch). Any other configuration:
            # what ``Logger.info`` does, less its search for the caller's frame (``findCaller``, ~2 µs a line): the
            # record comes from the logger's ``makeRecord`` (so a custom record factory still applies) and goes to
            # its handlers. The same line comes out of every handler.
            if not write_access_line(line):
                access_logger.handle(access_logger.makeRecord(_ACCESS, logging.INFO, __file__, 0, line, (), None))

    def websocket_opened(self, upstream: str) -> None:
        if self.metrics is not None:
            self.metrics.websocket_opened(upstream)

    def websocket_closed(self, upstream: str) -> None:
        if self.metrics is not None:
            self.metrics.websocket_closed(upstream)

    def watch(self, transports: Mapping[str, object]) -> None:
        """Observe the clusters among ``transports``: per-try metrics and spans, gauges read at scrape time."""
        from ..upstream.cluster import Cluster
        from ..upstream.guarded import GuardedCluster
        from .upstream import BreakerRefresher, TryObserver, refresh_cluster

        metrics = self.metrics
        for name, transport in transports.items():
            if not isinstance(transport, Cluster):
                continue
            if metrics is not None or self.tracing:
                transport.observer = TryObserver(name, transport.config.targets, metrics)
            if metrics is not None:
                refresh = functools.partial(refresh_cluster, metrics, transport)
                metrics.add_refresher(("cluster", name, id(transport)), refresh)
                if isinstance(transport, GuardedCluster):
                    metrics.bind_breaker(name)
                    metrics.add_refresher(("breaker", name, id(transport)), BreakerRefresher(metrics, transport))

    def unwatch(self, transports: Mapping[str, object]) -> None:
        """Stop reading the gauges of ``transports`` (they are closing; a reload may have replaced them)."""
        if self.metrics is not None:
            for name, transport in transports.items():
                self.metrics.remove_refresher(("cluster", name, id(transport)))
                self.metrics.remove_refresher(("breaker", name, id(transport)), last=True)  # count the last refusals

    @contextlib.asynccontextmanager
    async def running(self, transports: Mapping[str, object]) -> AsyncIterator[None]:
        """For the gateway's lifespan: watch ``transports``; at the end, stop and :meth:`close`.

        >>> async with observability.running(gateway.transports): ...
        """
        self.watch(transports)
        watched = dict(transports)
        try:
            if self.metrics is not None and self.metrics.multiprocess:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._refresh_every, MULTIPROCESS_REFRESH_SECONDS, name="fastgate metrics")
                    try:
                        yield
                    finally:
                        group.cancel_scope.cancel()
            else:
                yield
        finally:
            self.unwatch(watched)
            self.close()

    async def _refresh_every(self, interval: float) -> None:
        assert self.metrics is not None
        while True:
            self.metrics.refresh()
            await anyio.sleep(interval)

    def close(self) -> None:
        """At lifespan shutdown: flush spans, drop this worker's live gauges."""
        self.tracer.shutdown()
        if self.metrics is not None:
            self.metrics.close()
