"""Prometheus metrics: names, types and bounded labels; /metrics with content negotiation (operations issue)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from fastgate.config import build_config
from fastgate.observability.metrics import DURATION_BUCKETS, Metrics, metrics_app, metrics_mapping
from fastgate.observability.record import ExchangeRecord

CONFIG = build_config(
    {
        "upstreams": {
            "api": {"targets": [{"url": "http://10.0.0.1:9000"}, {"url": "http://10.0.0.2:9000"}]},
            "chat": {"url": "http://10.0.0.3:80"},
        },
        "routes": [{"prefix": "/api", "upstream": "api"}, {"prefix": "/ws", "upstream": "chat"}],
    }
)

# name -> (type, label names) as the issue names them (families, so counters without _total).
EXPECTED = {
    "fastgate_requests": ("counter", {"route", "upstream", "method", "code"}),
    "fastgate_request_duration_seconds": ("histogram", {"route", "upstream"}),
    "fastgate_upstream_requests": ("counter", {"upstream", "target", "code"}),
    "fastgate_upstream_connect_errors": ("counter", {"upstream", "target"}),
    "fastgate_upstream_connections": ("gauge", {"upstream", "target", "state"}),
    "fastgate_retries": ("counter", {"upstream"}),
    "fastgate_health_status": ("gauge", {"upstream", "target"}),
    "fastgate_ejections": ("counter", {"upstream", "target"}),
    "fastgate_websocket_sessions": ("gauge", {"upstream"}),
    "fastgate_config_reload": ("counter", {"result"}),
    "fastgate_config_last_reload_success_timestamp_seconds": ("gauge", set()),
}


def _families(metrics: Metrics) -> dict[str, Any]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def _exercised() -> Metrics:
    metrics = Metrics.from_config(CONFIG)
    metrics.observe(ExchangeRecord("0", "api", "10.0.0.1:9000", "GET", "/api/x?secret=1", status=200, duration_s=0.004))
    metrics.observe(ExchangeRecord("0", "api", "10.0.0.2:9000", "BREW", "/api/y", status=405, duration_s=0.02))
    metrics.observe(ExchangeRecord("0", "api", "", "GET", "/api/z", status=200, outcome="client disconnected"))
    metrics.observe(ExchangeRecord("0", "api", "10.0.0.1:9000", "POST", "/api", status=502, retries=2))
    metrics.observe(ExchangeRecord("1", "chat", "10.0.0.3:80", "GET", "/ws", status=101, websocket=True))
    metrics.upstream_try("api", "10.0.0.1:9000", 200)
    metrics.upstream_try("api", "10.0.0.1:9000", "upstream_timeout")
    metrics.connect_error("api", "10.0.0.2:9000")
    metrics.set_upstream_connections("api", "10.0.0.1:9000", active=3, idle=5)
    metrics.set_health("api", "10.0.0.1:9000", True)
    metrics.set_health("api", "10.0.0.2:9000", False)
    metrics.inc_ejection("api", "10.0.0.2:9000")
    metrics.websocket_opened("chat")
    metrics.websocket_opened("chat")
    metrics.websocket_closed("chat")
    metrics.reload("success")
    metrics.reload("error")
    return metrics


def test_every_metric_is_exposed_with_its_type_and_labels() -> None:
    families = _families(_exercised())
    for name, (kind, labels) in EXPECTED.items():
        assert families[name].type == kind, name
        assert families[name].samples, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    assert families["process_cpu_seconds"].type == "counter"
    assert families["process_resident_memory_bytes"].type == "gauge"


def test_values_count_what_happened_with_bounded_labels() -> None:
    values = metrics_mapping(_exercised().render()[0].decode())
    assert values['fastgate_requests_total{code="200",method="GET",route="0",upstream="api"}'] == 1
    assert values['fastgate_requests_total{code="405",method="other",route="0",upstream="api"}'] == 1
    assert values['fastgate_requests_total{code="499",method="GET",route="0",upstream="api"}'] == 1
    assert values['fastgate_requests_total{code="101",method="GET",route="1",upstream="chat"}'] == 1
    assert values['fastgate_request_duration_seconds_count{route="0",upstream="api"}'] == 4
    assert values['fastgate_request_duration_seconds_bucket{le="0.005",route="0",upstream="api"}'] == 3
    assert 'fastgate_request_duration_seconds_count{route="1",upstream="chat"}' in values  # bound, not observed
    assert values['fastgate_request_duration_seconds_count{route="1",upstream="chat"}'] == 0
    assert values['fastgate_retries_total{upstream="api"}'] == 2
    assert values['fastgate_upstream_requests_total{code="200",target="10.0.0.1:9000",upstream="api"}'] == 1
    assert values['fastgate_upstream_requests_total{code="upstream_timeout",target="10.0.0.1:9000",upstream="api"}']
    assert values['fastgate_upstream_connect_errors_total{target="10.0.0.2:9000",upstream="api"}'] == 1
    assert values['fastgate_upstream_connect_errors_total{target="10.0.0.3:80",upstream="chat"}'] == 0
    assert values['fastgate_upstream_connections{state="active",target="10.0.0.1:9000",upstream="api"}'] == 3
    assert values['fastgate_upstream_connections{state="idle",target="10.0.0.1:9000",upstream="api"}'] == 5
    assert values['fastgate_health_status{target="10.0.0.2:9000",upstream="api"}'] == 0
    assert values['fastgate_ejections_total{target="10.0.0.2:9000",upstream="api"}'] == 1
    assert values['fastgate_websocket_sessions{upstream="chat"}'] == 1
    assert values['fastgate_config_reload_total{result="success"}'] == 1
    assert values['fastgate_config_reload_total{result="error"}'] == 1
    assert values["fastgate_config_last_reload_success_timestamp_seconds"] > 1_600_000_000
    assert not [key for key in values if "secret" in key or "/api" in key]  # never the raw path


def test_duration_buckets_run_from_1ms_to_30s() -> None:
    assert DURATION_BUCKETS[0] == 0.001 and DURATION_BUCKETS[-1] == 30.0
    family = _families(_exercised())["fastgate_request_duration_seconds"]
    bounds = {sample.labels["le"] for sample in family.samples if sample.name.endswith("_bucket")}
    assert {"0.001", "30.0", "+Inf"} <= bounds


def test_two_gateways_in_one_process_do_not_collide() -> None:
    first, second = Metrics(process_metrics=False), Metrics(process_metrics=False)
    first.observe(ExchangeRecord("0", "api", status=200))
    assert 'fastgate_requests_total{code="200",method="GET",route="0",upstream="api"}' not in metrics_mapping(
        second.render()[0].decode()
    )


async def _get(
    app: Any, path: str = "/metrics", method: str = "GET", accept: bytes | None = None
) -> tuple[int, dict[bytes, bytes], bytes]:
    headers = [(b"accept", accept)] if accept is not None else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.anyio
async def test_metrics_app_serves_prometheus_text_by_default() -> None:
    status, headers, body = await _get(metrics_app(_exercised()), accept=b"text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    assert status == 200
    assert headers[b"content-type"] == b"text/plain; version=0.0.4; charset=utf-8"
    assert int(headers[b"content-length"]) == len(body)
    assert {family.name for family in text_string_to_metric_families(body.decode())} >= set(EXPECTED)


@pytest.mark.anyio
async def test_metrics_app_serves_openmetrics_when_asked() -> None:
    accept = b"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    status, headers, body = await _get(metrics_app(_exercised()), accept=accept)
    assert status == 200
    assert headers[b"content-type"].startswith(b"application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    families = {family.name: family for family in parse_openmetrics(body.decode())}
    assert families["fastgate_requests"].type == "counter"
    assert families["fastgate_request_duration_seconds"].type == "histogram"


@pytest.mark.anyio
async def test_metrics_app_answers_other_paths_and_methods() -> None:
    app = metrics_app(Metrics(process_metrics=False))
    assert (await _get(app, "/other"))[0] == 404
    status, headers, _ = await _get(app, method="POST")
    assert (status, headers[b"allow"]) == (405, b"GET, HEAD")
    status, headers, body = await _get(app, method="HEAD")
    assert status == 200 and body == b"" and int(headers[b"content-length"]) > 0
