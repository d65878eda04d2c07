"""Metrics, tracing, live stats and the access line wired into real exchanges through a real gateway (operations
issue): every request counted, every upstream try counted and traced, traceparent always sent upstream."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from fastgate import Gateway
from fastgate.config import GatewayConfig, build_config
from fastgate.observability.exchange import Observability
from fastgate.observability.metrics import Metrics, metrics_mapping
from fastgate.observability.tracing import Tracer, parse_traceparent
from tests.servers import (
    REFUSED_PORT,
    LogCapture,
    RunningServer,
    captured_logs,
    free_port,
    run_gateway,
    wait_for_port,
    wait_until,
)
from tests.upstream_app import Recorder
from tests.ws_upstream import WebSocketRecorder

pytestmark = pytest.mark.anyio

REFUSED = f"127.0.0.1:{REFUSED_PORT}"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


def _values(gateway: Gateway) -> dict[str, float]:
    metrics = gateway.observability.metrics
    assert metrics is not None
    return dict(metrics_mapping(metrics.render()[0].decode()))


def _config(upstream: dict[str, Any], *, server: dict[str, Any] | None = None, **extra: Any) -> GatewayConfig:
    return build_config(
        {
            "server": server or {},
            "upstreams": {"api": upstream},
            "routes": [
                {"prefix": "/named", "upstream": "api", "strip_prefix": True},
                {"prefix": "/", "upstream": "api"},
            ],
            **extra,
        }
    )


@pytest.fixture
def access_lines() -> Iterator[LogCapture]:
    logger = logging.getLogger("fastgate.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    with captured_logs("fastgate.access", logging.INFO) as capture:
        yield capture
    logger.setLevel(level)


@contextlib.asynccontextmanager
async def _serve(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with run_gateway(gateway) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


# -- metrics --------------------------------------------------------------------------------------------------------


async def test_requests_are_counted_per_route_upstream_method_and_code(upstream: RunningServer) -> None:
    gateway = Gateway(_config({"url": upstream.url}))
    async with _serve(gateway) as client:
        for _ in range(3):
            assert (await client.get("/echo")).status_code == 200
        assert (await client.post("/named/status/503", content=b"x")).status_code == 503
        assert (await client.request("PURGE", "/echo")).status_code == 200
        values = _values(gateway)
        target = f"127.0.0.1:{upstream.port}"
        assert values['fastgate_requests_total{code="200",method="GET",route="1",upstream="api"}'] == 3
        assert values['fastgate_requests_total{code="503",method="POST",route="0",upstream="api"}'] == 1
        assert values['fastgate_requests_total{code="200",method="other",route="1",upstream="api"}'] == 1
        assert values['fastgate_request_duration_seconds_count{route="1",upstream="api"}'] == 4
        assert values[f'fastgate_upstream_requests_total{{code="200",target="{target}",upstream="api"}}'] == 4
        assert values[f'fastgate_upstream_requests_total{{code="503",target="{target}",upstream="api"}}'] == 1
        # The pool's connections, read at scrape time: the one keep-alive connection is idle again.
        assert values[f'fastgate_upstream_connections{{state="idle",target="{target}",upstream="api"}}'] == 1
        assert values[f'fastgate_upstream_connections{{state="active",target="{target}",upstream="api"}}'] == 0
        assert values[f'fastgate_health_status{{target="{target}",upstream="api"}}'] == 1
        live = gateway.observability.live.snapshot()
        assert (live["requests"], live["errors"]) == (5, 1)
        assert live["latency_ms"]["p50"] is not None
        assert live["recent_errors"][0]["status"] == 503 and live["recent_errors"][0]["route"] == 0


async def test_a_connect_error_to_a_refused_port_is_counted_and_retried(upstream: RunningServer) -> None:
    good = f"127.0.0.1:{upstream.port}"
    config = _config(
        {
            "targets": [{"url": f"http://{REFUSED}"}, {"url": upstream.url}],
            "retries": {"max_retries": 1, "retry_on": ["connect_error"], "backoff": {"base": 0.001, "max": 0.002}},
        }
    )
    gateway = Gateway(config)
    async with _serve(gateway) as client:
        for _ in range(6):
            assert (await client.get("/echo")).status_code == 200
        values = _values(gateway)
    connect_errors = values[f'fastgate_upstream_connect_errors_total{{target="{REFUSED}",upstream="api"}}']
    assert connect_errors >= 1  # round robin sends some first tries to the refused target
    code = "upstream_connect_error"
    assert (
        values[f'fastgate_upstream_requests_total{{code="{code}",target="{REFUSED}",upstream="api"}}'] == connect_errors
    )
    assert values['fastgate_retries_total{upstream="api"}'] == connect_errors
    assert values[f'fastgate_upstream_requests_total{{code="200",target="{good}",upstream="api"}}'] == 6
    assert values['fastgate_requests_total{code="200",method="GET",route="1",upstream="api"}'] == 6


async def test_outlier_ejection_counts_and_marks_the_target_unhealthy(upstream: RunningServer) -> None:
    good = f"127.0.0.1:{upstream.port}"
    config = _config(
        {
            "targets": [{"url": f"http://{REFUSED}"}, {"url": upstream.url}],
            "retries": {"max_retries": 1, "retry_on": ["connect_error"], "backoff": {"base": 0.001, "max": 0.002}},
            "outlier_detection": {"consecutive_failures": 2, "base_ejection_time": 60},
        }
    )
    gateway = Gateway(config)
    async with _serve(gateway) as client:
        for _ in range(8):
            assert (await client.get("/echo")).status_code == 200
        values = _values(gateway)
    assert values[f'fastgate_ejections_total{{target="{REFUSED}",upstream="api"}}'] == 1
    assert values[f'fastgate_ejections_total{{target="{good}",upstream="api"}}'] == 0
    assert values[f'fastgate_health_status{{target="{REFUSED}",upstream="api"}}'] == 0
    assert values[f'fastgate_health_status{{target="{good}",upstream="api"}}'] == 1


async def test_metrics_off_gives_clusters_no_observer(upstream: RunningServer) -> None:
    gateway = Gateway(_config({"url": upstream.url}, metrics={"enabled": False}))
    async with _serve(gateway) as client:
        assert (await client.get("/echo")).status_code == 200
        assert gateway.observability.metrics is None
        assert all(transport.observer is None for transport in gateway.transports.values())  # type: ignore[attr-defined]
        assert gateway.observability.live.snapshot()["requests"] == 1


# -- trace context and the access line ------------------------------------------------------------------------------


async def test_traceparent_starts_a_new_trace_when_the_client_sent_none(
    upstream: RunningServer, recorder: Recorder, access_lines: LogCapture
) -> None:
    gateway = Gateway(_config({"url": upstream.url}))
    async with _serve(gateway) as client:
        response = await client.get("/echo", headers={"x-request-id": "rid-new", "tracestate": "a=1"})
        assert response.status_code == 200
    (sent,) = recorder.header("traceparent")
    parent = parse_traceparent(sent.encode())
    assert parent is not None and parent.sampled
    assert recorder.header("tracestate") == []  # no valid parent: the state is dropped
    (line,) = [r.getMessage() for r in access_lines.records if "rid-new" in r.getMessage()]
    assert line.endswith(f"request_id=rid-new trace_id={parent.trace_id}")


async def test_traceparent_sent_by_the_client_is_kept(
    upstream: RunningServer, recorder: Recorder, access_lines: LogCapture
) -> None:
    gateway = Gateway(_config({"url": upstream.url}))
    async with _serve(gateway) as client:
        headers = {"x-request-id": "rid-kept", "traceparent": CLIENT_TRACEPARENT, "tracestate": "vendor=x"}
        assert (await client.get("/echo", headers=headers)).status_code == 200
    assert recorder.header("traceparent") == [CLIENT_TRACEPARENT]  # tracing off: passed on unchanged
    assert recorder.header("tracestate") == ["vendor=x"]
    (line,) = [r.getMessage() for r in access_lines.records if "rid-kept" in r.getMessage()]
    assert f"request_id=rid-kept trace_id={CLIENT_TRACE}" in line


async def test_text_access_line_keeps_todays_shape(upstream: RunningServer, access_lines: LogCapture) -> None:
    gateway = Gateway(_config({"url": upstream.url}))
    async with _serve(gateway) as client:
        assert (await client.get("/big?size=1234", headers={"x-request-id": "rid-text"})).status_code == 200
    (line,) = [r.getMessage() for r in access_lines.records if "rid-text" in r.getMessage()]
    client_part, _, rest = line.partition(' - "GET /big?size=1234 HTTP/1.1" 200 1234 ')
    assert client_part.startswith("127.0.0.1:")
    duration, _, tail = rest.partition("ms upstream=api request_id=rid-text trace_id=")
    float(duration)
    assert len(tail) == 32


async def test_json_access_line_has_every_field(upstream: RunningServer, access_lines: LogCapture) -> None:
    config = _config(
        {"targets": [{"url": f"http://{REFUSED}"}, {"url": upstream.url}], "balancer": "round_robin"},
        server={"access_log_format": "json"},
    )
    gateway = Gateway(config)
    async with _serve(gateway) as client:
        for index in range(2):  # round robin: one of the two starts at the refused target and is retried
            headers = {"x-request-id": f"rid-json-{index}", "traceparent": CLIENT_TRACEPARENT}
            assert (await client.get("/named/echo?x=1", headers=headers)).status_code == 200
    lines = [json.loads(r.getMessage()) for r in access_lines.records if "rid-json" in r.getMessage()]
    assert len(lines) == 2
    for fields in lines:
        assert set(fields) == {
            "time", "client", "method", "target", "http_version", "status", "bytes", "duration", "route",
            "upstream", "upstream_address", "request_id", "trace_id", "retries", "outcome", "websocket",
        }  # fmt: skip
        assert fields["time"].endswith("Z") and fields["client"].startswith("127.0.0.1:")
        assert (fields["method"], fields["target"], fields["status"]) == ("GET", "/echo?x=1", 200)  # as forwarded
        assert fields["bytes"] > 0 and 0 < fields["duration"] < 30
        assert (fields["route"], fields["upstream"]) == ("0", "api")
        assert fields["upstream_address"] == f"127.0.0.1:{upstream.port}"
        assert fields["trace_id"] == CLIENT_TRACE and fields["websocket"] is False
    assert sorted(fields["retries"] for fields in lines) == [0, 1]


# -- spans ------------------------------------------------------------------------------------------------------------


async def test_one_client_span_per_upstream_try(upstream: RunningServer, recorder: Recorder) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = _config(
        {
            "targets": [{"url": f"http://{REFUSED}"}, {"url": upstream.url}],
            "retries": {"max_retries": 1, "retry_on": ["connect_error"], "backoff": {"base": 0.001, "max": 0.002}},
        }
    )
    observability = Observability(Tracer(provider), Metrics.from_config(config))
    gateway = Gateway(config, observability=observability)
    async with _serve(gateway) as client:
        for _ in range(2):  # round robin: one of the two requests starts at the refused target
            headers = {"traceparent": CLIENT_TRACEPARENT}
            assert (await client.get("/echo?q=1", headers=headers)).status_code == 200
    spans = exporter.get_finished_spans()
    servers = [span for span in spans if span.kind is SpanKind.SERVER]
    clients = [span for span in spans if span.kind is SpanKind.CLIENT]
    assert len(servers) == 2 and len(clients) == 3
    for server in servers:
        assert server.context is not None and server.parent is not None
        assert f"{server.context.trace_id:032x}" == CLIENT_TRACE
        assert f"{server.parent.span_id:016x}" == "00f067aa0ba902b7"
        assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    server_ids = {server.context.span_id for server in servers if server.context is not None}
    assert all(span.parent is not None and span.parent.span_id in server_ids for span in clients)
    failed = [span for span in clients if span.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1 and failed[0].attributes is not None
    assert failed[0].attributes["error.type"] == "upstream_connect_error"
    assert failed[0].attributes["server.port"] == REFUSED_PORT
    answered = [span for span in clients if span.status.status_code is not StatusCode.ERROR]
    for span in answered:
        assert span.attributes is not None
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["server.port"] == upstream.port
        assert span.attributes["http.request.method"] == "GET" and span.attributes["url.path"] == "/echo"
    # Each try's traceparent names its own CLIENT span: the upstream saw the answered tries' ids.
    seen = {parse_traceparent(value.encode()) for request in recorder.requests for key, value in request["headers"]
            if key == "traceparent"}  # fmt: skip
    assert {parent.span_id for parent in seen if parent is not None} == {
        f"{span.context.span_id:016x}" for span in answered if span.context is not None
    }


# -- WebSocket --------------------------------------------------------------------------------------------------------


async def test_websocket_session_gauge_goes_up_then_down(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder, access_lines: LogCapture
) -> None:
    gateway = Gateway(_config({"url": ws_upstream.url}))
    async with run_gateway(gateway) as server:
        key = 'fastgate_websocket_sessions{upstream="api"}'
        assert _values(gateway)[key] == 0
        url = f"ws://127.0.0.1:{server.port}/ws/echo?room=1"
        async with connect(url, proxy=None, open_timeout=5, additional_headers={"x-request-id": "rid-ws"}) as ws:
            await ws.send("hello")
            with anyio.fail_after(5):
                assert await ws.recv() == "hello"
            assert _values(gateway)[key] == 1
        await wait_until(lambda: _values(gateway)[key] == 0, limit=10)
        values = _values(gateway)
    assert values['fastgate_requests_total{code="101",method="GET",route="1",upstream="api"}'] == 1
    assert ws_recorder.header("traceparent")  # the handshake went upstream with a trace context
    (line,) = [r.getMessage() for r in access_lines.records if "rid-ws" in r.getMessage()]
    assert line.startswith("127.0.0.1:") and '"WebSocket /ws/echo?room=1" 101 ' in line
    assert "upstream=api request_id=rid-ws trace_id=" in line


async def test_active_health_checks_set_the_health_gauge(upstream: RunningServer) -> None:
    good = f"127.0.0.1:{upstream.port}"
    config = _config(
        {
            "targets": [{"url": f"http://{REFUSED}"}, {"url": upstream.url}],
            "health_check": {"path": "/echo", "interval": 0.2, "timeout": 1, "unhealthy_threshold": 1},
        }
    )
    gateway = Gateway(config)
    async with run_gateway(gateway):
        down = f'fastgate_health_status{{target="{REFUSED}",upstream="api"}}'
        await wait_until(lambda: _values(gateway)[down] == 0, limit=10)
        assert _values(gateway)[f'fastgate_health_status{{target="{good}",upstream="api"}}'] == 1
        assert _values(gateway)[f'fastgate_ejections_total{{target="{REFUSED}",upstream="api"}}'] == 0


async def test_json_access_line_reaches_stdout_as_it_is_from_fastgate_run(
    upstream: RunningServer, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"server: {{port: {port}, access_log_format: json}}\n"
        f"upstreams:\n  api: {{url: '{upstream.url}'}}\n"
        "routes:\n  - {prefix: /, upstream: api}\n"
    )
    out = tmp_path / "stdout"
    with out.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "fastgate", "run", str(config)], stdout=log, stderr=log)
    try:
        wait_for_port(port, process=process)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/echo", headers={"x-request-id": "rid-stdout"})).status_code == 200
        await wait_until(lambda: "rid-stdout" in out.read_text(), limit=10)
    finally:
        process.terminate()
        process.wait(10)
    (line,) = [line for line in out.read_text().splitlines() if "rid-stdout" in line]
    fields = json.loads(line)  # the whole line: no time or level prefix before the object
    assert (fields["request_id"], fields["status"], fields["upstream"]) == ("rid-stdout", 200, "api")
    assert len(fields["trace_id"]) == 32


async def test_a_try_cut_short_by_the_client_leaving_is_counted_as_cancelled(upstream: RunningServer) -> None:
    gateway = Gateway(_config({"url": upstream.url}))
    target = f"127.0.0.1:{upstream.port}"
    async with _serve(gateway) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/slow?delay=10", timeout=0.5)
        cancelled = f'fastgate_upstream_requests_total{{code="cancelled",target="{target}",upstream="api"}}'
        await wait_until(lambda: _values(gateway).get(cancelled) == 1, limit=10)
        values = _values(gateway)
    assert values['fastgate_requests_total{code="499",method="GET",route="1",upstream="api"}'] == 1


async def test_a_route_name_is_the_route_label_in_metrics_live_stats_and_the_admin_stats(
    upstream: RunningServer,
) -> None:
    from fastgate.admin.app import AdminApp

    config = build_config(
        {
            "upstreams": {"api": {"url": upstream.url}},
            "routes": [
                {"name": "status-pages", "prefix": "/named", "upstream": "api", "strip_prefix": True},
                {"prefix": "/", "upstream": "api"},
            ],
        }
    )
    gateway = Gateway(config)
    async with _serve(gateway) as client:
        assert (await client.get("/named/status/503")).status_code == 503
        assert (await client.get("/echo")).status_code == 200
        values = _values(gateway)
        assert values['fastgate_requests_total{code="503",method="GET",route="status-pages",upstream="api"}'] == 1
        assert values['fastgate_request_duration_seconds_count{route="status-pages",upstream="api"}'] == 1
        assert values['fastgate_requests_total{code="200",method="GET",route="1",upstream="api"}'] == 1
        assert not [key for key in values if 'route="0"' in key]
        assert gateway.observability.live.snapshot()["recent_errors"][0]["route"] == "status-pages"
        admin = httpx.AsyncClient(transport=httpx.ASGITransport(app=AdminApp(gateway)), base_url="http://admin")
        async with admin:
            routes = (await admin.get("/stats")).json()["routes"]
        assert [(route["index"], route["name"]) for route in routes] == [(0, "status-pages"), (1, "1")]
