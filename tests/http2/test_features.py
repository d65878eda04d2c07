"""Every gateway feature on HTTP/2 requests (issue 18, client side), and what an h2 request becomes on its way to an
HTTP/1.1 upstream.

Each feature's HTTP/1.1 test lives with the feature (tests/test_app_routing.py, tests/auth/, tests/policies/,
tests/observability/...); here the same behaviour is asked over h2c (httpx with prior knowledge, or the raw client
of ``tests/http2/client.py`` where trailers, resets or exact header fields matter). One config carries a route per
feature; the upstream is the recording one of tests/upstream_app.py.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import bcrypt
import httpx
import pytest

from fastgate import Answer, Gateway, Plugin, RequestContext, ResponseHead
from fastgate.config import build_config
from fastgate.observability.metrics import metrics_mapping
from tests.auth.helpers import jwks, rsa_key
from tests.http2.client import h2_connect
from tests.proxy.test_trailers import gateway_and_upstream
from tests.servers import LogCapture, RunningServer, answer_lifespan, captured_logs, run_gateway, run_server
from tests.upstream_app import Recorder

pytestmark = pytest.mark.anyio

RSA = rsa_key("h2-key")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ORIGIN = "https://app.example"


class Stamp(Plugin):
    """on_request adds ``x-stamp`` going upstream (or answers 418 to ``x-refuse``); on_response adds ``x-stamped``."""

    async def on_request(self, request: RequestContext) -> Answer | None:
        if request.headers.get("x-refuse"):
            return Answer(418, {"x-refused-by": "stamp"}, b"refused")
        request.headers.set("x-stamp", f"{request.method} {request.path}")
        return None

    async def on_response(self, request: RequestContext, response: ResponseHead) -> None:
        response.headers.set("x-stamped", str(response.status))


def features_config(upstream_url: str, tmp_path: Path) -> Any:
    users = tmp_path / "htpasswd"
    users.write_text("alice:" + bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode() + "\n")
    keys = tmp_path / "keys"
    keys.write_text("alice:k3y-alice\n")
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks(RSA)))

    def route(prefix: str, **extra: Any) -> dict[str, Any]:
        return {"prefix": prefix, "upstream": "main", "strip_prefix": True, **extra}

    def tag(value: str) -> dict[str, Any]:
        return {"set": {"x-route": value}}

    routes = [
        {"prefix": "/", "host": "api.test", "upstream": "main", "request_headers": tag("host"), "priority": 10},
        {"prefix": "/v", "headers": {"x-version": "2"}, "upstream": "main", "request_headers": tag("v2")},
        {"prefix": "/v", "methods": ["POST"], "upstream": "main", "request_headers": tag("post")},
        {"prefix": "/v", "upstream": "main", "request_headers": tag("v")},
        route("/strip"),
        {"prefix": "/old", "upstream": "main", "rewrite": {"regex": "^/old/(.*)$", "replacement": r"/\1"}},
        route("/plug", plugins=[{"use": "tests.http2.test_features:Stamp"}]),
        route("/limited", rate_limit={"rate": 1, "per": "1h", "burst": 2}),
        route("/basic", plugins=[{"use": "basic_auth", "options": {"users_file": str(users), "realm": "h2"}}]),
        route("/key", plugins=[{"use": "api_key", "options": {"keys_file": str(keys)}}]),
        route(
            "/jwt",
            plugins=[
                {
                    "use": "jwt",
                    "options": {"jwks_file": str(jwks_file), "issuer": "https://idp.test/", "audience": "api"},
                }
            ],
        ),
        route("/cors", plugins=[{"use": "cors", "options": {"allow_origins": [ORIGIN], "max_age": 60}}]),
        route("/small", max_body_bytes=1000),
        route("/medium", max_body_bytes=100_000),
        route(
            "/rules",
            request_headers={"set": {"x-set": "1"}, "add": {"x-added": "2"}, "remove": ["x-drop"]},
            response_headers={"set": {"x-resp": "r"}, "remove": ["content-type"]},
        ),
        {"prefix": "/retried", "upstream": "retried", "strip_prefix": True},
        {"prefix": "/guarded", "upstream": "guarded", "strip_prefix": True},
        {"prefix": "/", "upstream": "main"},
    ]
    return build_config(
        {
            "server": {},
            "upstreams": {
                "main": {"url": upstream_url},
                "retried": {"url": upstream_url, "retries": {"max_retries": 1, "retry_on": [503]}},
                "guarded": {"url": upstream_url, "circuit_breaker": {"max_requests": 1}},
            },
            "routes": routes,
        }
    )


@contextlib.asynccontextmanager
async def serve(upstream: RunningServer, tmp_path: Path) -> AsyncIterator[tuple[Gateway, RunningServer]]:
    gateway = Gateway(features_config(upstream.url, tmp_path))
    async with run_gateway(gateway) as server:
        yield gateway, server


def h2c_client(server: RunningServer) -> httpx.AsyncClient:
    """httpx speaking h2c by prior knowledge; every response asserted to be HTTP/2."""

    async def check(response: httpx.Response) -> None:
        assert response.http_version == "HTTP/2"

    return httpx.AsyncClient(
        base_url=server.url, http1=False, http2=True, timeout=15, event_hooks={"response": [check]}
    )


@pytest.fixture
def access_lines() -> Iterator[LogCapture]:
    logger = logging.getLogger("fastgate.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    with captured_logs("fastgate.access", logging.INFO) as capture:
        yield capture
    logger.setLevel(level)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- routing, rewrites, plugins, header rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers", "route", "upstream_path"),
    [
        ("GET", "/echo", {"host": "api.test"}, "host", "/echo"),  # :authority matched as the host
        ("GET", "/v/echo", {"x-version": "2"}, "v2", "/v/echo"),
        ("POST", "/v/echo", {}, "post", "/v/echo"),
        ("GET", "/v/echo", {"x-version": "3"}, "v", "/v/echo"),
        ("GET", "/strip/echo?q=1", {}, None, "/echo"),
        ("GET", "/old/echo?q=1", {}, None, "/echo"),
    ],
)
async def test_routing_matchers_and_rewrites_on_http2(
    upstream: RunningServer,
    recorder: Recorder,
    tmp_path: Path,
    method: str,
    path: str,
    headers: dict[str, str],
    route: str | None,
    upstream_path: str,
) -> None:
    async with serve(upstream, tmp_path) as (_, gw), h2c_client(gw) as client:
        response = await client.request(method, path, headers=headers)
    assert response.status_code == 200
    assert recorder.last()["raw_path"] == upstream_path
    assert recorder.header("x-route") == ([route] if route else [])
    if "?" in path:
        assert recorder.last()["query_string"] == "q=1"


async def test_python_plugin_runs_on_request_and_on_response_over_http2(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    async with serve(upstream, tmp_path) as (_, gw), h2c_client(gw) as client:
        passed = await client.post("/plug/echo", content=b"abc")
        refused = await client.get("/plug/echo", headers={"x-refuse": "1"})
    assert passed.status_code == 200 and passed.headers["x-stamped"] == "200"
    assert recorder.header("x-stamp") == ["POST /plug/echo"] and recorder.last()["body"] == "abc"
    assert refused.status_code == 418 and refused.content == b"refused"
    assert refused.headers["x-refused-by"] == "stamp"
    assert len(recorder.requests) == 1  # the refusal never went upstream


async def test_header_rules_on_http2(upstream: RunningServer, recorder: Recorder, tmp_path: Path) -> None:
    async with serve(upstream, tmp_path) as (_, gw), h2c_client(gw) as client:
        response = await client.get("/rules/echo", headers={"x-set": "0", "x-drop": "gone", "x-added": "1"})
    assert response.status_code == 200
    assert response.headers["x-resp"] == "r" and "content-type" not in response.headers
    assert recorder.header("x-set") == ["1"] and recorder.header("x-drop") == []
    assert recorder.header("x-added") == ["1", "2"]


# -- policies: rate limit, retries, circuit breaker -------------------------------------------------------------------


async def test_rate_limit_answers_429_on_http2(upstream: RunningServer, recorder: Recorder, tmp_path: Path) -> None:
    async with serve(upstream, tmp_path) as (_, gw), h2c_client(gw) as client:
        statuses = [(await client.get("/limited/echo")).status_code for _ in range(2)]
        refused = await client.get("/limited/echo")
    assert statuses == [200, 200]
    assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
    assert int(refused.headers["retry-after"]) > 0
    assert len(recorder.requests) == 2


async def test_retries_on_http2(upstream: RunningServer, recorder: Recorder, tmp_path: Path) -> None:
    async with serve(upstream, tmp_path) as (_, gw), h2c_client(gw) as client:
        response = await client.get("/retried/status/503")
    assert response.status_code == 503
    assert [r["raw_path"] for r in recorder.requests] == ["/status/503", "/status/503"]  # one retry


class FailsFirst:
    """An upstream that reads each request's body and answers the first 503, the rest with the body's size and
    sha256; it records the size of every body it read."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.sizes.append(len(body))
        status = 503 if len(self.sizes) == 1 else 200
        answer = json.dumps({"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode()
        headers = [(b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


async def test_a_retried_post_replays_the_h2_request_body(tmp_path: Path) -> None:
    retries = {"max_retries": 1, "retry_on": [503], "non_idempotent": True}
    app = FailsFirst()
    body = bytes(range(256)) * 160  # 40 KiB: kept for a replay (replay_buffer_bytes 64 KiB)
    async with run_server(app) as flaky:
        config = build_config(
            {"upstreams": {"flaky": {"url": flaky.url, "retries": retries}}, "routes": [{"upstream": "flaky"}]}
        )
        async with run_gateway(Gateway(config)) as gw, h2_connect(gw.port) as h2:
            state = await h2.response(await h2.request("POST", "/post", body=body))
    assert state.status == 200
    assert json.loads(state.body) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert app.sizes == [len(body), len(body)]


async def test_circuit_breaker_overflows_a_second_stream_on_the_same_connection(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    # max_requests: 1 — while stream 1 holds the upstream's one request, stream 3 of the same connection is refused.
    async with serve(upstream, tmp_path) as (_, gw), h2_connect(gw.port) as h2:
        held = await h2.request("GET", "/guarded/slow?delay=30")
        with anyio.fail_after(10):
            await recorder.started.wait()
        overflow = await h2.get("/guarded/echo")
        assert overflow.status == 503
        assert json.loads(overflow.body)["error"] == "upstream_overflow"
        await h2.reset(held)
        with anyio.fail_after(10):
            await recorder.disconnect_event.wait()  # RST_STREAM cancelled the upstream request
        assert (await h2.get("/guarded/echo")).status == 200  # the breaker's count came back


# -- auth and CORS ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "good", "bad", "credential"),
    [
        (
            "/basic",
            {"authorization": basic("alice", "secret")},
            {"authorization": basic("alice", "no")},
            "authorization",
        ),
        ("/key", {"x-api-key": "k3y-alice"}, {"x-api-key": "wrong"}, "x-api-key"),
        ("/jwt", {"authorization": f"Bearer {RSA.token()}"}, {"authorization": "Bearer x.y.z"}, "authorization"),
    ],
)
async def test_auth_refuses_with_401_and_passes_on_http2(
    upstream: RunningServer,
    recorder: Recorder,
    tmp_path: Path,
    prefix: str,
    good: dict[str, str],
    bad: dict[str, str],
    credential: str,
) -> None:
    async with serve(upstream, tmp_path) as (_, gw), h2c_client(gw) as client:
        missing = await client.get(f"{prefix}/echo")
        wrong = await client.get(f"{prefix}/echo", headers=bad)
        assert not recorder.requests
        passed = await client.get(f"{prefix}/echo", headers=good)
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"] == wrong.json()["error"]
    assert passed.status_code == 200
    assert recorder.header("x-fastgate-identity") == ["alice"]
    assert recorder.header(credential) == []  # stripped by default


async def test_cors_preflight_and_actual_request_on_http2(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    preflight = {"origin": ORIGIN, "access-control-request-method": "PUT", "access-control-request-headers": "x-a"}
    async with serve(upstream, tmp_path) as (_, gw), h2c_client(gw) as client:
        answered = await client.options("/cors/echo", headers=preflight)
        refused = await client.options("/cors/echo", headers={**preflight, "origin": "https://evil.test"})
        assert not recorder.requests
        actual = await client.put("/cors/echo", headers={"origin": ORIGIN}, content=b"x")
    assert answered.status_code == 204 and answered.content == b""
    assert answered.headers["access-control-allow-origin"] == ORIGIN
    assert "PUT" in answered.headers["access-control-allow-methods"]
    assert answered.headers["access-control-max-age"] == "60"
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert actual.status_code == 200 and actual.headers["access-control-allow-origin"] == ORIGIN
    assert len(recorder.requests) == 1


# -- body limits ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-content-length"])
async def test_body_over_max_body_bytes_gets_413_and_never_completes_upstream(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path, declared: bool
) -> None:
    body = b"x" * 5000
    headers = [("content-length", str(len(body)))] if declared else []
    async with serve(upstream, tmp_path) as (_, gw), h2_connect(gw.port) as h2:
        stream_id = await h2.request("POST", "/small/upload", headers, end=False)
        await h2.send_available(stream_id, body)  # within the 1 MiB window: sent whole at once
        state = await h2.response(stream_id)
        assert state.status == 413 and json.loads(state.body)["error"] == "payload_too_large"
        # The connection serves on.
        assert (await h2.get("/echo")).status == 200
        # Within the limit, both framings pass.
        small = await h2.request("POST", "/small/upload", [("content-length", "900")] if declared else [], b"y" * 900)
        assert json.loads((await h2.response(small)).body)["size"] == 900
    # The refused body never reached the upstream (under the 64 KiB prebuffer, it was refused before connecting).
    assert [(r["raw_path"], r.get("body_size")) for r in recorder.requests] == [("/echo", None), ("/upload", 900)]


async def test_body_growing_past_max_body_bytes_upstream_gets_413_and_the_upstream_request_is_aborted(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    # No content-length and past the 64 KiB prebuffer: forwarding has begun when the limit is crossed.
    async with serve(upstream, tmp_path) as (_, gw), h2_connect(gw.port) as h2:
        stream_id = await h2.request("POST", "/medium/upload", end=False)
        await h2.send_available(stream_id, b"m" * 70_000)
        with anyio.fail_after(10):
            await recorder.started.wait()  # the request (head and first piece) is upstream already
        await h2.send_available(stream_id, b"m" * 70_000)
        state = await h2.response(stream_id)
        assert state.status == 413 and json.loads(state.body)["error"] == "payload_too_large"
        with anyio.fail_after(10):
            await recorder.disconnect_event.wait()
        assert (await h2.get("/echo")).status == 200
    assert "/upload" in recorder.disconnected and "body_size" not in recorder.requests[0]


# -- observability ----------------------------------------------------------------------------------------------------


async def test_metrics_tracing_and_the_access_line_on_http2(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path, access_lines: LogCapture
) -> None:
    async with serve(upstream, tmp_path) as (gateway, gw), h2c_client(gw) as client:
        for _ in range(3):
            assert (await client.get("/echo", headers={"traceparent": TRACEPARENT})).status_code == 200
        response = await client.get("/echo", headers={"x-request-id": "rid-h2"})
        metrics = gateway.observability.metrics
        assert metrics is not None
        values = dict(metrics_mapping(metrics.render()[0].decode()))
    assert response.status_code == 200
    counted = [value for key, value in values.items() if key.startswith('fastgate_requests_total{code="200"')]
    assert sum(counted) == 4
    assert recorder.header("traceparent", 0) == [TRACEPARENT]  # passed on unchanged (tracing off)
    (line,) = [r.getMessage() for r in access_lines.records if "rid-h2" in r.getMessage()]
    assert ' - "GET /echo HTTP/2.0" 200 ' in line
    assert sum('"GET /echo HTTP/2.0" 200' in r.getMessage() for r in access_lines.records) == 4
    assert any("trace_id=4bf92f3577b34da6a3ce929d0e0e4736" in r.getMessage() for r in access_lines.records)


# -- forwarding h2 -> HTTP/1.1 ----------------------------------------------------------------------------------------


async def test_authority_becomes_host_and_cookie_fields_are_joined(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    async with serve(upstream, tmp_path) as (_, gw), h2_connect(gw.port) as h2:
        state = await h2.get("/echo", [("cookie", "a=1"), ("x-one", "1"), ("cookie", "b=2"), ("cookie", "c=3")])
    assert state.status == 200
    assert recorder.header("host") == [f"127.0.0.1:{gw.port}"]
    assert recorder.header("cookie") == ["a=1; b=2; c=3"]  # RFC 9113 §8.2.3
    assert recorder.last()["http_version"] == "1.1"
    assert recorder.header("via") == ["2.0 fastgate"]  # RFC 9110 §7.6.3: the protocol the request came with


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_request_body_reaches_the_upstream_whole_with_its_framing(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path, declared: bool
) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, sent in pieces as the windows open
    headers = [("content-length", str(len(body)))] if declared else []
    async with serve(upstream, tmp_path) as (_, gw), h2_connect(gw.port) as h2:
        state = await h2.response(await h2.request("POST", "/upload", headers, body))
    assert state.status == 200
    assert json.loads(state.body) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    if declared:
        assert recorder.header("content-length") == [str(len(body))]
        assert recorder.header("transfer-encoding") == []
    else:
        assert recorder.header("transfer-encoding") == ["chunked"]
        assert recorder.header("content-length") == []


async def test_response_headers_are_lowercase_and_connection_specific_ones_dropped(
    upstream: RunningServer, tmp_path: Path
) -> None:
    async with serve(upstream, tmp_path) as (_, gw), h2_connect(gw.port) as h2:
        hop = await h2.get("/hop")
        cookies = await h2.get("/cookies")
        streamed = await h2.get("/stream?n=3&delay=0")
    names = {name for name, _ in hop.headers}
    assert all(name == name.lower() for name in names)
    assert not names & {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
    assert b"x-upstream-secret" not in names and hop.header(b"x-kept") == [b"yes"]
    assert cookies.header(b"set-cookie") == [b"a=1; Path=/", b"b=2; Path=/; HttpOnly"]
    # A chunked upstream response: DATA frames, no transfer-encoding.
    assert streamed.body == b"chunk 0\nchunk 1\nchunk 2\n" and not streamed.header(b"transfer-encoding")


@pytest.mark.parametrize(
    ("method", "path", "status", "length"),
    [("HEAD", "/big?size=1000", 200, b"1000"), ("GET", "/status/204", 204, None), ("GET", "/status/304", 304, None)],
)
async def test_responses_without_a_body(
    upstream: RunningServer, tmp_path: Path, method: str, path: str, status: int, length: bytes | None
) -> None:
    async with serve(upstream, tmp_path) as (_, gw), h2_connect(gw.port) as h2:
        state = await h2.response(await h2.request(method, path))
        assert state.status == status and state.ended and state.body == b""
        if length is not None:
            assert state.header(b"content-length") == [length]
        assert (await h2.get("/echo")).status == 200  # and the connection serves on


@pytest.mark.parametrize("te", [True, False], ids=["te-trailers", "no-te"])
async def test_trailers_from_a_chunked_http1_upstream_become_http2_trailers(te: bool) -> None:
    async with gateway_and_upstream("fastgate-protocol") as (port, upstream, _), h2_connect(port) as h2:
        state = await h2.get("/trailers", [("te", "trailers")] if te else [])
    assert state.status == 200 and state.body == b"hello world" and state.ended
    if te:
        assert state.trailers == [(b"grpc-status", b"0"), (b"x-checksum", b"abc")]
        assert upstream.te_headers() == [[b"trailers"]]
    else:
        assert state.trailers is None
        assert upstream.te_headers() == [[]]
