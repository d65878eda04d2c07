"""gRPC through the exchange core (issue 18): the gateway's own answers are Trailers-Only gRPC answers, the
upstream's grpc-status reaches the access line and the metrics, grpc-timeout bounds the request, and nothing holds a
streaming body back. HTTP/1.1 on both sides (gRPC framing is the same bytes; trailers ride the chunked encoding)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from fastgate import Gateway
from fastgate._protocol import FastgateHttpProtocol
from fastgate.config import build_config
from fastgate.exceptions import (
    BadRequest,
    FastgateError,
    RateLimited,
    RequestTooLarge,
    RouteNotFound,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamOverflow,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from fastgate.observability.access import format_json, format_text
from fastgate.observability.record import ExchangeRecord
from fastgate.plugins.chain import PluginError
from fastgate.proxy import grpc
from fastgate.proxy.buffering import prebuffer
from tests.grpc_http1 import GrpcUpstream, chunk, frame, grpc_request, messages, read_response
from tests.servers import LogCapture, captured_logs, free_port, run_gateway, run_server, wait_until

pytestmark = pytest.mark.anyio


# -- pure: classification, timeout, status mapping, message encoding --------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"application/grpc+json; charset=utf-8", True),
        (b"Application/GRPC", True),
        (b"application/grpc-web", False),
        (b"application/grpc-web-text+proto", False),
        (b"application/grpcx", False),
        (b"application/json", False),
    ],
)
def test_is_grpc_takes_application_grpc_and_its_codecs_but_not_grpc_web(value: bytes, expected: bool) -> None:
    assert grpc.is_grpc([(b"host", b"x"), (b"content-type", value)]) is expected


def test_is_grpc_without_a_content_type_is_false() -> None:
    assert not grpc.is_grpc([(b"host", b"x")])


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"1H", 3600.0),
        (b"2M", 120.0),
        (b"3S", 3.0),
        (b"250m", 0.25),
        (b"1000u", 0.001),
        (b"99999999n", 0.099999999),
        (b"0S", 0.0),
        (b"12345678S", 12345678.0),
    ],
)
def test_grpc_timeout_parses_every_unit(value: bytes, seconds: float) -> None:
    assert grpc.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", [b"", b"S", b"1", b"123456789S", b"1s", b"1h", b"-1S", b"+1S", b"1.5S", b" 1S", b"1 S", b"\xd9\xa1S"]
)
def test_a_grpc_timeout_that_does_not_parse_is_ignored(value: bytes) -> None:
    assert grpc.parse_timeout(value) is None


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (RouteNotFound("no route"), 12),
        (RateLimited("slow down"), 8),
        (UpstreamOverflow("max_requests", "api"), 8),
        (UpstreamUnavailable("no healthy target", "api"), 14),
        (UpstreamConnectError("refused", "api"), 14),
        (UpstreamConnectTimeout("connect", "api"), 14),
        (UpstreamTimeout("read", "api"), 4),
        (UpstreamProtocolError("bad", "api"), 14),
        (RequestTooLarge("big"), 8),
        (BadRequest("bad"), 13),
        (FastgateError("internal error"), 13),
        (PluginError("p", "on_request", ValueError("x")), 13),
    ],
)
def test_gateway_errors_map_to_the_issues_grpc_status(exc: FastgateError, status: int) -> None:
    assert grpc.grpc_status_for(exc) == status


@pytest.mark.parametrize(
    ("http", "status"), [(401, 16), (403, 7), (404, 12), (429, 8), (400, 13), (502, 14), (503, 14), (504, 14), (418, 2)]
)
def test_http_status_falls_back_to_the_grpc_specs_table(http: int, status: int) -> None:
    assert grpc.grpc_status_for_http(http) == status


def test_grpc_message_is_percent_encoded_outside_printable_ascii_and_decodes_back() -> None:
    text = "bad\r\nthing 100% ✓ é"
    encoded = grpc.encode_message(text)
    assert encoded == b"bad%0D%0Athing 100%25 %E2%9C%93 %C3%A9"
    assert grpc.decode_message(encoded) == text
    assert grpc.decode_message(b"50%zz%") == "50%zz%"  # a bad escape is kept as it is


def test_trailers_only_head_has_the_status_message_and_request_id_and_keeps_safe_extras() -> None:
    head = grpc.trailers_only(
        16,
        "missing API key",
        b"rid",
        [
            (b"content-type", b"application/json"),
            (b"content-length", b"55"),
            (b"www-authenticate", b"ApiKey"),
            (b"grpc-status", b"0"),
            (b"Access-Control-Allow-Origin", b"*"),
        ],
    )
    assert head == [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"16"),
        (b"grpc-message", b"missing API key"),
        (b"x-request-id", b"rid"),
        (b"www-authenticate", b"ApiKey"),
        (b"access-control-allow-origin", b"*"),
    ]


def test_answer_message_takes_the_json_detail_or_the_text_or_the_reason() -> None:
    assert grpc.answer_message(403, b'{"error":"forbidden","detail":"not yours"}') == "not yours"
    assert grpc.answer_message(401, b"login first") == "login first"
    assert grpc.answer_message(403, b"") == "Forbidden"


def test_access_line_carries_grpc_status_only_for_grpc_requests() -> None:
    plain = ExchangeRecord(method="POST", target="/x", status=200, request_id="r")
    assert "grpc_status" not in format_text(plain) and "grpc_status" not in format_json(plain, now=0.0)
    record = ExchangeRecord(method="POST", target="/a.B/C", status=200, request_id="r", grpc=True, grpc_status=14)
    assert format_text(record).endswith("request_id=r grpc_status=14")
    assert format_json(record, now=0.0).endswith(',"websocket":false,"grpc_status":14}')
    record.grpc_status = None
    assert format_text(record).endswith("grpc_status=-")
    assert format_json(record, now=0.0).endswith(',"grpc_status":null}')


async def test_prebuffer_takes_what_came_and_a_grpc_request_skips_it() -> None:
    """A bidi client sends one message and waits for the server's: the gateway must not wait for more bytes.
    ``prebuffer`` itself reads up to its bound by design; gRPC requests never go through it (checked end to end in
    ``test_a_streaming_body_reaches_the_upstream_message_by_message``)."""
    pieces = [(frame(b"one"), True)]

    async def read() -> tuple[bytes, bool]:
        if pieces:
            return pieces.pop(0)
        await anyio.sleep_forever()
        raise AssertionError

    with anyio.move_on_after(0.2) as waited:
        await prebuffer(read, 65536)
    assert waited.cancelled_caught  # what a gRPC request would deadlock on, hence the bypass


# -- through a real gateway ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def access_log() -> Iterator[LogCapture]:
    logger = logging.getLogger("fastgate.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with captured_logs("fastgate.access", logging.INFO) as capture:
            yield capture
    finally:
        logger.setLevel(level)


def _config(url: str, route: dict[str, Any] | None = None, **top: Any) -> Any:
    routes = [{"prefix": "/test.Echo/", "upstream": "main", **(route or {})}]
    return build_config({"upstreams": {"main": {"url": url, "timeouts": {"read": 30}}}, "routes": routes, **top})


@contextlib.asynccontextmanager
async def gateway_for(route: dict[str, Any] | None = None, **top: Any) -> AsyncIterator[tuple[int, GrpcUpstream]]:
    upstream = GrpcUpstream()
    async with run_server(upstream, http=FastgateHttpProtocol) as up:
        async with run_gateway(Gateway(_config(up.url, route, **top))) as gw:
            yield gw.port, upstream


async def call(port: int, data: bytes) -> Any:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        return await read_response(stream)


def assert_trailers_only(response: Any, status: int, *, ours: bool = True) -> None:
    assert response.status == 200
    assert response.headers[b"content-type"] == b"application/grpc"
    assert response.headers[b"grpc-status"] == b"%d" % status
    assert not ours or response.headers[b"x-request-id"]
    assert response.body == b""
    assert b"error" not in response.body  # never the JSON body


async def test_unary_passes_through_with_trailers_and_metadata_and_logs_the_grpc_status() -> None:
    async with gateway_for() as (port, upstream):
        with access_log() as logs:
            body = frame(b"hello") + frame(b"world")
            response = await call(port, grpc_request("/test.Echo/Unary", body, b"X-Echo-Bin: AAEC"))
        assert response.status == 200 and messages(response.body) == [b"hello", b"world"]
        assert response.trailers == {b"grpc-status": b"0", b"x-echo-bin": b"AAEC"}
        assert upstream.requests[0][b"te"] == b"trailers"  # kept upstream
        assert upstream.requests[0][b"content-type"] == b"application/grpc"
        line = logs.records[-1].getMessage()
        assert "POST /test.Echo/Unary" in line and "grpc_status=0" in line


async def test_an_upstream_trailers_only_answer_is_relayed_and_its_status_recorded() -> None:
    async with gateway_for(metrics={"enabled": True}) as (port, _):
        with access_log() as logs:
            response = await call(port, grpc_request("/test.Echo/Fail", frame(b"x")))
        assert_trailers_only(response, 5, ours=False)
        assert response.headers[b"grpc-message"] == b"no such thing %E2%9C%93"
        assert "grpc_status=5" in logs.records[-1].getMessage()


async def test_no_route_is_unimplemented_not_json() -> None:
    async with gateway_for() as (port, _):
        response = await call(port, grpc_request("/other.Service/Call", frame(b"x")))
    assert_trailers_only(response, 12)
    assert response.headers[b"grpc-message"].startswith(b"no route for /other.Service/Call")


async def test_a_json_client_still_gets_json() -> None:
    async with gateway_for() as (port, _):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = await read_response(stream)
    assert response.status == 404 and response.headers[b"content-type"] == b"application/json"


async def test_upstream_down_is_unavailable_and_counted_in_the_grpc_metric() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = _config(url, metrics={"enabled": True})
    gateway = Gateway(config)
    async with run_gateway(gateway) as gw:
        with access_log() as logs:
            response = await call(gw.port, grpc_request("/test.Echo/Unary", frame(b"x")))
        assert_trailers_only(response, 14)
        line = logs.records[-1].getMessage()
        assert '" 200 ' in line and "grpc_status=14" in line and "upstream_connect_error" in line
        assert gateway.metrics is not None
        metrics = gateway.metrics.render()[0].decode()
    assert 'fastgate_grpc_responses_total{grpc_status="14",route="0",upstream="main"} 1.0' in metrics
    assert 'fastgate_requests_total{code="200",method="POST",route="0",upstream="main"} 1.0' in metrics


async def test_missing_credentials_is_unauthenticated(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("svc:k-0123456789abcdef\n")
    plugin = {"use": "api_key", "options": {"keys_file": str(keys)}}
    async with gateway_for({"plugins": [plugin]}) as (port, upstream):
        response = await call(port, grpc_request("/test.Echo/Unary", frame(b"x")))
        assert_trailers_only(response, 16)
        assert response.headers[b"grpc-message"] == b"missing API key"
        assert response.headers[b"www-authenticate"]  # the plugin's challenge stays
        ok = await call(port, grpc_request("/test.Echo/Unary", frame(b"x"), b"X-Api-Key: k-0123456789abcdef"))
        assert ok.trailers[b"grpc-status"] == b"0"
        assert len(upstream.requests) == 1


async def test_rate_limited_is_resource_exhausted() -> None:
    async with gateway_for({"rate_limit": {"rate": 1, "per": "1m", "burst": 1}}) as (port, _):
        first = await call(port, grpc_request("/test.Echo/Unary", frame(b"x")))
        second = await call(port, grpc_request("/test.Echo/Unary", frame(b"x")))
    assert first.trailers[b"grpc-status"] == b"0"
    assert_trailers_only(second, 8)
    assert second.headers[b"retry-after"]


async def test_grpc_timeout_before_the_head_is_a_trailers_only_deadline_exceeded_and_cancels_upstream() -> None:
    async with gateway_for() as (port, upstream):
        with access_log() as logs:
            response = await call(port, grpc_request("/test.Echo/Hang", frame(b"x"), b"Grpc-Timeout: 200m"))
        assert_trailers_only(response, 4)
        with anyio.fail_after(10):
            await upstream.cancelled.wait()
        assert upstream.requests[0][b"grpc-timeout"] == b"200m"  # passed on unchanged
        line = logs.records[-1].getMessage()
        assert "grpc_status=4" in line and "grpc-timeout expired" in line


async def test_grpc_timeout_after_the_head_ends_the_body_with_a_deadline_exceeded_trailer() -> None:
    async with gateway_for() as (port, upstream):
        response = await call(port, grpc_request("/test.Echo/Stall", frame(b"x"), b"Grpc-Timeout: 300m"))
        assert response.status == 200 and messages(response.body) == [b"first"]
        assert response.trailers[b"grpc-status"] == b"4"
        with anyio.fail_after(10):
            await upstream.cancelled.wait()


async def test_grpc_timeout_without_te_trailers_cuts_the_client_off() -> None:
    async with gateway_for() as (port, _):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(grpc_request("/test.Echo/Stall", frame(b"x"), b"Grpc-Timeout: 300m", te=False))
            raw = b""
            with anyio.fail_after(10):
                while True:
                    try:
                        raw += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
    assert raw.startswith(b"HTTP/1.1 200")
    assert not raw.endswith(b"0\r\n\r\n")  # incomplete: no last chunk


async def test_an_invalid_grpc_timeout_is_ignored() -> None:
    async with gateway_for() as (port, _):
        response = await call(port, grpc_request("/test.Echo/Unary", frame(b"x"), b"Grpc-Timeout: soon"))
    assert response.trailers[b"grpc-status"] == b"0"


@pytest.mark.parametrize("buffering", [False, True])
async def test_a_streaming_body_reaches_the_upstream_message_by_message(buffering: bool) -> None:
    """The client sends each message only once the upstream has seen the one before: a gateway that held the body
    back (the 64 KiB prebuffer, request_buffering) would deadlock here, as it would a bidi client waiting for the
    server's answer before its next message."""
    route = {"request_buffering": True} if buffering else None
    async with gateway_for(route) as (port, upstream):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(grpc_request("/test.Echo/Stream"))
            words = [b"one", b"two", b"three"]
            for count, word in enumerate(words, 1):
                await stream.send(chunk(frame(word)))
                await wait_until(lambda count=count: len(upstream.seen) == count, 10)  # type: ignore[misc]
            await stream.send(b"0\r\n\r\n")
            response = await read_response(stream)
    assert upstream.seen == words
    assert messages(response.body) == words
    assert response.trailers[b"grpc-status"] == b"0"
