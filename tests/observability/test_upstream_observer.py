"""TryObserver: what a cluster's tries and health transitions become in metrics, without sockets (operations issue)."""

from __future__ import annotations

import pytest

from fastgate.config import UpstreamTarget
from fastgate.observability.metrics import Metrics, metrics_mapping
from fastgate.observability.tracing import Tracer, parse_traceparent
from fastgate.observability.upstream import TryObserver
from fastgate.upstream.health_state import HealthEvent, TargetState
from fastgate.upstream.transport import UpstreamRequest

TARGETS = [UpstreamTarget(url="http://10.0.0.1:9000/base"), UpstreamTarget(url="http://10.0.0.2:9000")]


def _values(metrics: Metrics) -> dict[str, float]:
    return dict(metrics_mapping(metrics.render()[0].decode()))


def test_tries_count_by_target_and_code_and_connect_errors_apart() -> None:
    metrics = Metrics(process_metrics=False)
    observer = TryObserver("api", TARGETS, metrics)
    request = UpstreamRequest(b"GET", b"/x", [(b"host", b"api")])
    assert observer.start_try(request, 0) is None  # not traced: no span, headers untouched
    assert request.headers == [(b"host", b"api")]
    observer.answered(0, 200, None)
    observer.answered(0, 200, None)
    observer.failed(1, "upstream_connect_error", True, None)
    observer.failed(1, "upstream_timeout", False, None)
    values = _values(metrics)
    assert values['fastgate_upstream_requests_total{code="200",target="10.0.0.1:9000",upstream="api"}'] == 2
    assert (
        values['fastgate_upstream_requests_total{code="upstream_connect_error",target="10.0.0.2:9000",upstream="api"}']
        == 1
    )
    assert (
        values['fastgate_upstream_requests_total{code="upstream_timeout",target="10.0.0.2:9000",upstream="api"}'] == 1
    )
    assert values['fastgate_upstream_connect_errors_total{target="10.0.0.2:9000",upstream="api"}'] == 1
    assert values['fastgate_upstream_connect_errors_total{target="10.0.0.1:9000",upstream="api"}'] == 0


def test_health_transitions_set_the_gauge_and_count_ejections() -> None:
    metrics = Metrics(process_metrics=False)
    observer = TryObserver("api", TARGETS, metrics)
    health = 'fastgate_health_status{target="10.0.0.2:9000",upstream="api"}'
    ejections = 'fastgate_ejections_total{target="10.0.0.2:9000",upstream="api"}'
    assert _values(metrics)[health] == 1  # targets start healthy
    observer.health_changed([HealthEvent(1, TargetState.HEALTHY, TargetState.EJECTED, "consecutive_failures", 1.0)])
    assert (_values(metrics)[health], _values(metrics)[ejections]) == (0, 1)
    observer.health_changed([HealthEvent(1, TargetState.EJECTED, TargetState.HEALTHY, "ejection_expired", 2.0)])
    observer.health_changed([HealthEvent(1, TargetState.HEALTHY, TargetState.UNHEALTHY, "active_check_failed", 3.0)])
    assert (_values(metrics)[health], _values(metrics)[ejections]) == (0, 1)  # unhealthy: not an ejection
    assert _values(metrics)['fastgate_health_status{target="10.0.0.1:9000",upstream="api"}'] == 1


def test_a_traced_try_sends_its_own_traceparent() -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = TryObserver("api", TARGETS, None)  # tracing without metrics
    headers = [(b"host", b"api")]
    trace = Tracer(provider).begin(headers, method="GET", scheme="http", target="/x", http_version="1.1")
    request = UpstreamRequest(b"GET", b"/x", headers, trace=trace)
    span = observer.start_try(request, 0)
    observer.answered(0, 204, span)
    (client,) = exporter.get_finished_spans()
    assert client.attributes is not None and client.context is not None
    assert client.attributes["url.full"] == "http://10.0.0.1:9000/base/x"  # the target's path prefix included
    assert client.attributes["http.response.status_code"] == 204
    (sent,) = [value for name, value in request.headers if name == b"traceparent"]
    parent = parse_traceparent(sent)
    assert parent is not None and parent.span_id == f"{client.context.span_id:016x}"
