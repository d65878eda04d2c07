"""OpenTelemetry spans for :class:`fastgate.observability.tracing.Tracer`; imported only when tracing is on.

One SERVER span per exchange (child of the client's ``traceparent`` when it sent a valid one) and one CLIENT
span per upstream try, child of the server span; each try's ``traceparent`` names its CLIENT span. Attributes
follow the stable HTTP semantic conventions (``http.request.method``, ``url.path``, ``url.scheme``,
``http.response.status_code``, ``server.address``, ``server.port``, ``network.protocol.version``). The provider
is our own, never the global one, so an embedding app's tracing is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from .record import STANDARD_METHODS, ExchangeRecord
from .safe_url import SafeUrlFilter
from .tracing import Headers, TraceParent, set_trace_headers

if TYPE_CHECKING:
    from ..config import TracingConfig

INSTRUMENTATION_NAME = "fastgate"
OTLP_LOG_FILTER = SafeUrlFilter()  # on the OTLP exporter's logger, once per process
DEFAULT_SERVICE_NAME = "fastgate"


def build_provider(config: TracingConfig | None, environ: Mapping[str, str]) -> TracerProvider:
    """A provider exporting over OTLP/HTTP in batches; the ``OTEL_*`` environment fills what ``config`` omits."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    service = (config.service_name if config else None) or environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    sampler = None  # the SDK reads OTEL_TRACES_SAMPLER(_ARG); its default follows the parent, else samples all
    if config is not None and config.sample_ratio is not None:
        sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
    provider = TracerProvider(sampler=sampler, resource=Resource.create({"service.name": service}))
    endpoint = config.otlp_endpoint if config else None
    if endpoint and urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"  # as the exporter does with OTEL_EXPORTER_OTLP_ENDPOINT
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    # The exporter's connection errors print the endpoint's path and query: its secrets go as in our own lines.
    exporter_logger = logging.getLogger(OTLPSpanExporter.__module__)
    if OTLP_LOG_FILTER not in exporter_logger.filters:
        exporter_logger.addFilter(OTLP_LOG_FILTER)
    for url in (
        endpoint,
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ):
        if url:
            OTLP_LOG_FILTER.watch(url)
    return provider


def _method(method: str, attributes: dict[str, Any]) -> str:
    if method in STANDARD_METHODS:
        attributes["http.request.method"] = method
        return method
    attributes["http.request.method"] = "_OTHER"
    attributes["http.request.method_original"] = method
    return "HTTP"


def _host_port(host: bytes, scheme: str) -> tuple[str, int]:
    text = host.decode("latin-1")
    name, colon, port = text.rpartition(":")
    if colon and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name.strip("[]"), int(port)
    return text.strip("[]"), 443 if scheme in ("https", "wss") else 80


class _ClientTry:
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def inject(self, headers: Headers) -> Headers:
        context = self._span.get_span_context()
        parent = TraceParent(f"{context.trace_id:032x}", f"{context.span_id:016x}", int(context.trace_flags))
        state = context.trace_state.to_header()
        return set_trace_headers(headers, parent.header(), [state.encode("latin-1")] if state else [])

    def end(self, status: int = 0, error: str = "") -> None:
        span = self._span
        if status:
            span.set_attribute("http.response.status_code", status)
        if error or status >= 400:
            span.set_attribute("error.type", error or str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class _ServerExchange:
    __slots__ = ("trace_id", "_tracer", "_span", "_context")

    def __init__(self, tracer: Any, span: Span) -> None:
        self._tracer = tracer
        self._span = span
        self._context = set_span_in_context(span)
        self.trace_id = f"{span.get_span_context().trace_id:032x}"

    def start_try(self, method: str, scheme: str, host: str, port: int, target: str) -> _ClientTry:
        attributes: dict[str, Any] = {
            "server.address": host,
            "server.port": port,
            "url.scheme": scheme,
            "url.path": target.partition("?")[0],
            "url.full": f"{scheme}://{host}:{port}{target}",
            "network.protocol.version": "1.1",
        }
        name = _method(method, attributes)
        span = self._tracer.start_span(name, self._context, SpanKind.CLIENT, attributes)
        return _ClientTry(span)

    def end(self, record: ExchangeRecord) -> None:
        span = self._span
        status = record.logged_status
        if status:
            span.set_attribute("http.response.status_code", status)
        span.set_attribute("fastgate.route", record.route)
        span.set_attribute("fastgate.upstream", record.upstream)
        if record.retries:
            span.set_attribute("fastgate.retries", record.retries)
        if status >= 500:
            # Server spans are errors for 5xx only (4xx are the client's doing: semantic conventions, HTTP spans).
            span.set_attribute("error.type", record.outcome.partition(":")[0] if record.outcome else str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class OtelTracer:
    """The SDK side of :class:`~fastgate.observability.tracing.Tracer`."""

    __slots__ = ("_tracer",)

    def __init__(self, provider: TracerProvider) -> None:
        self._tracer = provider.get_tracer(INSTRUMENTATION_NAME)

    def begin(
        self,
        headers: Headers,
        parent: TraceParent | None,
        states: list[bytes],
        method: str,
        scheme: str,
        target: str,
        http_version: str,
        host: bytes,
        client: str,
    ) -> _ServerExchange:
        context = None
        if parent is not None:
            remote = SpanContext(
                int(parent.trace_id, 16),
                int(parent.span_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(parent.flags),
                trace_state=TraceState.from_header([state.decode("latin-1") for state in states]),
            )
            context = set_span_in_context(NonRecordingSpan(remote))
        address, port = _host_port(host, scheme)
        attributes: dict[str, Any] = {
            "url.scheme": scheme,
            "url.path": target.partition("?")[0],
            "network.protocol.version": http_version,
        }
        if address:
            attributes["server.address"] = address
            attributes["server.port"] = port
        if client:
            attributes["client.address"] = client.rpartition(":")[0] or client
        name = _method(method, attributes)
        span = self._tracer.start_span(name, context, SpanKind.SERVER, attributes)
        exchange = _ServerExchange(self._tracer, span)
        # Until a try names its CLIENT span, the upstream's parent is our SERVER span.
        span_context = span.get_span_context()
        own = TraceParent(exchange.trace_id, f"{span_context.span_id:016x}", int(span_context.trace_flags))
        set_trace_headers(headers, own.header(), states)
        return exchange
