"""OpenTelemetry spans as forward_http will drive them, caught by the SDK's in-memory exporter (operations issue)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from fastgate.config import TracingConfig
from fastgate.observability.record import ExchangeRecord
from fastgate.observability.tracing import Tracer, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = Tracer(provider)
    yield tracer
    tracer.shutdown()


def _exchange(tracer: Tracer, headers: list[tuple[bytes, bytes]], statuses: list[int | str]) -> str:
    """What forward_http does: begin, one CLIENT span per try (injected into that try's headers), end."""
    trace = tracer.begin(
        headers, method="GET", scheme="http", target="/api/items?id=1", http_version="1.1",
        host=b"gw.example:8080", client="192.0.2.1:5555",
    )  # fmt: skip
    sent: list[bytes] = []
    for status in statuses:
        attempt = trace.start_try("GET", "http", "10.0.0.7", 9000, "/items?id=1")
        try_headers = attempt.inject(list(headers))
        sent += [value for name, value in try_headers if name == b"traceparent"]
        if isinstance(status, int):
            attempt.end(status)
        else:
            attempt.end(error=status)
    final = statuses[-1] if isinstance(statuses[-1], int) else 504
    trace.end(
        ExchangeRecord(route="0", upstream="api", status=final, retries=len(statuses) - 1, trace_id=trace.trace_id)
    )
    assert len(sent) == len(statuses)
    return trace.trace_id


def _by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind == kind]


def test_one_server_span_and_a_client_span_per_try(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    headers = [(b"host", b"gw.example:8080"), (b"traceparent", f"00-{TRACE}-{CLIENT_PARENT}-01".encode())]
    trace_id = _exchange(tracer, headers, ["upstream_connect_error", 200])
    assert trace_id == TRACE  # the client's trace goes on
    spans = exporter.get_finished_spans()
    (server,) = _by_kind(spans, SpanKind.SERVER)
    clients = _by_kind(spans, SpanKind.CLIENT)
    assert len(clients) == 2
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CLIENT_PARENT
    assert server.name == "GET"
    assert dict(server.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/api/items",
        "url.scheme": "http",
        "server.address": "gw.example",
        "server.port": 8080,
        "network.protocol.version": "1.1",
        "client.address": "192.0.2.1",
        "http.response.status_code": 200,
        "fastgate.route": "0",
        "fastgate.upstream": "api",
        "fastgate.retries": 1,
    }
    for client in clients:
        assert client.context is not None and server.context is not None
        assert client.parent is not None and client.parent.span_id == server.context.span_id
        assert client.context.trace_id == int(TRACE, 16)
        attributes = dict(client.attributes or {})
        assert attributes["http.request.method"] == "GET"
        assert attributes["server.address"] == "10.0.0.7"
        assert attributes["server.port"] == 9000
        assert attributes["url.full"] == "http://10.0.0.7:9000/items?id=1"
        assert attributes["url.path"] == "/items"
        assert attributes["url.scheme"] == "http"
        assert attributes["network.protocol.version"] == "1.1"
    failed, ok = clients
    assert failed.status.status_code == StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "upstream_connect_error"
    assert dict(ok.attributes or {})["http.response.status_code"] == 200
    assert ok.status.status_code == StatusCode.UNSET


def test_each_try_sends_its_client_span_as_parent(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    trace = tracer.begin([], method="POST", scheme="https", target="/", http_version="2", host=b"gw.example")
    first = trace.start_try("POST", "http", "a", 80, "/")
    second = trace.start_try("POST", "http", "a", 80, "/")
    parents = []
    for attempt in (first, second):
        (value,) = [v for n, v in attempt.inject([(b"traceparent", b"x")]) if n == b"traceparent"]
        parent = parse_traceparent(value)
        assert parent is not None and parent.trace_id == trace.trace_id
        parents.append(parent.span_id)
        attempt.end(503)
    trace.end(ExchangeRecord(status=503))
    spans = exporter.get_finished_spans()
    assert parents == [f"{span.context.span_id:016x}" for span in _by_kind(spans, SpanKind.CLIENT) if span.context]
    (server,) = _by_kind(spans, SpanKind.SERVER)
    assert server.parent is None  # no traceparent from the client: a root span, and its trace id is logged
    assert server.status.status_code == StatusCode.ERROR
    assert dict(server.attributes or {})["server.port"] == 443


def test_the_upstream_parent_is_the_server_span_until_a_try_starts(
    tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    headers = [(b"traceparent", f"00-{TRACE}-{CLIENT_PARENT}-01".encode()), (b"tracestate", b"congo=t61rcWkgMzE")]
    trace = tracer.begin(headers, method="GET", scheme="http", target="/", http_version="1.1")
    trace.end(ExchangeRecord(status=404))
    (server,) = exporter.get_finished_spans()
    assert server.context is not None
    assert (b"traceparent", f"00-{TRACE}-{server.context.span_id:016x}-01".encode()) in headers
    assert (b"tracestate", b"congo=t61rcWkgMzE") in headers
    assert server.status.status_code == StatusCode.UNSET  # a 4xx is not a server error


def test_a_non_standard_method_is_other(tracer: Tracer, exporter: InMemorySpanExporter) -> None:
    trace = tracer.begin([], method="BREW", scheme="http", target="/", http_version="1.1")
    trace.end(ExchangeRecord(method="BREW", status=405))
    (server,) = exporter.get_finished_spans()
    assert server.name == "HTTP"
    assert dict(server.attributes or {})["http.request.method"] == "_OTHER"
    assert dict(server.attributes or {})["http.request.method_original"] == "BREW"


def test_from_config_builds_an_otlp_provider_without_touching_the_network() -> None:
    tracer = Tracer.from_config(TracingConfig(otlp_endpoint="http://127.0.0.1:9", service_name="edge"), {})
    try:
        assert tracer.enabled
        assert repr(tracer) == "<Tracer otel>"
    finally:
        tracer.shutdown()  # nothing recorded: nothing to send
