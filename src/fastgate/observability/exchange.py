"""The three consumers of an :class:`ExchangeRecord` behind one object the proxy holds: the wiring seam.

``Gateway`` builds one :class:`Observability` from its config; ``forward_http``/``forward_websocket`` call
:meth:`Observability.begin` once the request head is rewritten and :meth:`Observability.finish` in their
``finally`` (trace end, metrics, the one access line, in that order).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .access import Formatter, access_formatter, format_text
from .logging import access_logger
from .record import ExchangeRecord
from .tracing import ExchangeTrace, Headers, Tracer

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from .metrics import Metrics


@dataclass(slots=True)
class Observability:
    """Tracer, metrics (``None`` when off) and the access-line formatter of one gateway.

    >>> trace = observability.begin(head.headers, record, scheme="http", host=head.host)
    >>> observability.finish(record, trace)   # in the finally
    """

    tracer: Tracer = field(default_factory=Tracer)
    metrics: Metrics | None = None
    format_access: Formatter = format_text

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Observability:
        """What ``config`` asks for: metrics unless ``metrics.enabled`` is false, spans when ``tracing`` is set."""
        metrics = None
        if config.metrics.enabled:
            from .metrics import Metrics

            metrics = Metrics.from_config(config)
        return cls(Tracer.from_config(config.tracing), metrics, access_formatter(config.server.access_log_format))

    def begin(self, headers: Headers, record: ExchangeRecord, *, scheme: str, host: bytes = b"") -> ExchangeTrace:
        """Propagate (``headers`` changed in place) and start the server span; sets ``record.trace_id``."""
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
        if access_logger.isEnabledFor(logging.INFO):
            access_logger.info(self.format_access(record))

    def close(self) -> None:
        """At lifespan shutdown: flush spans, drop this worker's live gauges."""
        self.tracer.shutdown()
        if self.metrics is not None:
            self.metrics.close()
