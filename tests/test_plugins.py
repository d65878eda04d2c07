"""Plugins on routes, through a real gateway in front of real upstreams (docs/plugins.md)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastgate import ConfigError, Gateway
from fastgate.config import build_config
from tests import plugin_fixtures
from tests.rawhttp import parse_response
from tests.servers import RunningServer, run_gateway
from tests.upstream_app import Recorder

pytestmark = pytest.mark.anyio


def _config(upstream_url: str, *routes: dict[str, Any]) -> Any:
    return build_config({"upstreams": {"main": {"url": upstream_url}}, "routes": list(routes)})


async def _client(gw: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gw.url, timeout=10)


@pytest.fixture(autouse=True)
def _clear_records() -> None:
    plugin_fixtures.EVENTS.clear()
    plugin_fixtures.FINISHED.clear()
    plugin_fixtures.BODY_CHUNKS.clear()


REFUSE = {"use": "tests.plugin_fixtures:Refuse"}


async def test_an_early_answer_never_reaches_the_upstream_and_reads_no_body(
    upstream: RunningServer, recorder: Recorder
) -> None:
    gateway = Gateway(_config(upstream.url, {"prefix": "/", "upstream": "main", "plugins": [REFUSE]}))
    async with run_gateway(gateway) as gw:
        # The head promises a body the client never sends: the answer comes without waiting for it.
        with anyio.fail_after(5):
            stream = await anyio.connect_tcp("127.0.0.1", gw.port)
            async with stream:
                await stream.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
                raw = b""
                while b"no token" not in raw:
                    raw += await stream.receive()
        response = parse_response(raw)
        assert response.status == 401
        assert response.header(b"www-authenticate") == [b'Bearer realm="test"']
        assert response.header(b"x-request-id")
        async with await _client(gw) as client:
            answer = await client.get("/echo")
            assert (answer.status_code, answer.text) == (401, "no token")
            assert not recorder.requests  # zero requests reached the upstream

            allowed = await client.get("/echo", headers={"x-token": "let-me-in"})
            assert allowed.status_code == 200
            assert recorder.header("x-identity") == ["tester"]
            assert recorder.header("x-token") == []


async def test_route_header_keys_apply_in_both_directions(upstream: RunningServer, recorder: Recorder) -> None:
    route = {
        "prefix": "/",
        "upstream": "main",
        "request_headers": {"set": {"x-tenant": "acme"}, "add": {"x-via-gw": "1"}, "remove": ["cookie"]},
        "response_headers": {"set": {"x-frame": "deny"}, "add": {"x-added": "yes"}, "remove": ["set-cookie"]},
    }
    async with run_gateway(Gateway(_config(upstream.url, route))) as gw, await _client(gw) as client:
        response = await client.get(
            "/cookies", headers=[("x-tenant", "evil"), ("x-tenant", "evil2"), ("x-via-gw", "0"), ("cookie", "a=1")]
        )
        assert response.status_code == 200
        assert recorder.header("x-tenant") == ["acme"]
        assert recorder.header("x-via-gw") == ["0", "1"]
        assert recorder.header("cookie") == []
        assert response.headers["x-frame"] == "deny"
        assert response.headers["x-added"] == "yes"
        assert "set-cookie" not in response.headers
        assert response.headers["via"] == "1.1 fastgate"  # fastgate's own rules still apply


async def test_rewrite_plugin_and_route_rewrite(upstream: RunningServer, recorder: Recorder) -> None:
    routes = (
        {"prefix": "/a", "upstream": "main", "plugins": [{"use": "rewrite", "options": {"path": "/echo"}}]},
        {"prefix": "/b", "upstream": "main", "rewrite": {"regex": "^/b/(.*)", "replacement": r"/\1"}},
    )
    async with run_gateway(Gateway(_config(upstream.url, *routes))) as gw, await _client(gw) as client:
        assert (await client.get("/a/anything?q=1")).status_code == 200
        assert (recorder.last()["raw_path"], recorder.last()["query_string"]) == ("/echo", "q=1")
        assert (await client.get("/b/echo?z")).status_code == 200
        assert (recorder.last()["raw_path"], recorder.last()["query_string"]) == ("/echo", "z")


@pytest.mark.parametrize("phase", ["on_request", "on_response"])
async def test_a_plugin_that_raises_gives_500_and_one_log_line_and_the_gateway_keeps_serving(
    upstream: RunningServer, caplog: pytest.LogCaptureFixture, phase: str
) -> None:
    route = {
        "prefix": "/",
        "upstream": "main",
        "plugins": [{"use": "tests.plugin_fixtures:Boom", "options": {"phase": phase}}],
    }
    async with run_gateway(Gateway(_config(upstream.url, route))) as gw, await _client(gw) as client:
        caplog.set_level(logging.INFO, logger="fastgate.error")
        response = await client.get("/boom")
        assert response.status_code == 500
        body = response.json()
        assert body["error"] == "internal_error" and body["detail"] == "internal error"
        assert "no such thing" not in response.text and "response broke" not in response.text
        lines = [r for r in caplog.records if r.name == "fastgate.error"]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        message = lines[0].getMessage()
        assert "tests.plugin_fixtures:Boom" in message and phase in message and body["request_id"] in message
        assert lines[0].exc_info is None and "\n" not in message
        assert (await client.get("/echo")).status_code == 200


async def test_a_body_plugin_gets_the_body_as_a_stream(upstream: RunningServer, recorder: Recorder) -> None:
    route = {"prefix": "/", "upstream": "main", "plugins": [{"use": "tests.plugin_fixtures:Upper"}]}
    chunks = [b"abc" * 1000, b"def" * 1000, b"ghi"]

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async with run_gateway(Gateway(_config(upstream.url, route))) as gw, await _client(gw) as client:
        response = await client.post("/upload", content=body())  # chunked
        assert response.status_code == 200
        assert response.json()["sha256"] == hashlib.sha256(b"".join(chunks).upper()).hexdigest()
        assert b"".join(plugin_fixtures.BODY_CHUNKS) == b"".join(chunks)
        response = await client.post("/upload", content=b"x" * 5000)  # Content-Length
        assert response.json() == {"size": 5000, "sha256": hashlib.sha256(b"X" * 5000).hexdigest()}
        plugin_fixtures.BODY_CHUNKS.clear()
        assert (await client.get("/echo")).status_code == 200
        assert plugin_fixtures.BODY_CHUNKS == []  # no body, no body hook


async def test_response_status_and_the_finished_exchange(upstream: RunningServer) -> None:
    route = {"prefix": "/", "upstream": "main", "plugins": [{"use": "tests.plugin_fixtures:StatusAndFinish"}]}
    async with run_gateway(Gateway(_config(upstream.url, route))) as gw, await _client(gw) as client:
        response = await client.get("/status/404")
        assert (response.status_code, response.headers["x-plugin"]) == (410, "seen")
        response = await client.get("/big?size=1000")
        assert response.status_code == 200
        with anyio.fail_after(5):
            while len(plugin_fixtures.FINISHED) < 2:  # noqa: ASYNC110 - on_finish runs after the last byte
                await anyio.sleep(0.01)
        gone, big = plugin_fixtures.FINISHED
        assert (gone.status, gone.upstream, gone.request_target, gone.outcome) == (410, "main", "/status/404", "")
        assert (big.status, big.bytes_sent, big.method) == (200, 1000, "GET")
        assert len(big.request_id) == 16 and big.duration > 0


async def test_lifespan_runs_startup_and_shutdown_hooks(upstream: RunningServer) -> None:
    routes = (
        {
            "prefix": "/a",
            "upstream": "main",
            "plugins": [{"use": "tests.plugin_fixtures:Lifespan", "options": {"label": "a"}}],
        },
        {
            "prefix": "/",
            "upstream": "main",
            "plugins": [{"use": "tests.plugin_fixtures:Lifespan", "options": {"label": "b"}}],
        },
    )
    gateway = Gateway(_config(upstream.url, *routes))
    assert plugin_fixtures.EVENTS == []  # built, not started
    async with run_gateway(gateway) as gw, await _client(gw) as client:
        assert plugin_fixtures.EVENTS == ["startup a", "startup b"]
        assert (await client.get("/echo")).status_code == 200
    assert plugin_fixtures.EVENTS == ["startup a", "startup b", "shutdown b", "shutdown a"]


def test_plugins_are_built_once_with_the_gateway_and_bad_options_are_config_errors() -> None:
    upstream_url = "http://127.0.0.1:1"
    bad = {
        "prefix": "/",
        "upstream": "main",
        "plugins": [{"use": "tests.plugin_fixtures:picky", "options": {"nope": 1}}],
    }
    with pytest.raises(ConfigError, match=r"routes\[0\]\.plugins\[0\]\.options: .*nope"):
        Gateway(_config(upstream_url, bad))
    with pytest.raises(ConfigError, match=r"routes\[0\]\.plugins\[0\]\.options"):
        Gateway(_config(upstream_url, {"upstream": "main", "plugins": [{"use": "rewrite", "options": {"x": 1}}]}))
    ok = {"prefix": "/", "upstream": "main", "plugins": [{"use": "tests.plugin_fixtures:picky", "options": {"ok": 1}}]}
    gateway = Gateway(_config(upstream_url, ok))
    assert [chain.names for chain in gateway.plugin_chains] == [("tests.plugin_fixtures:picky",)]
    assert Gateway(_config(upstream_url, {"upstream": "main"})).plugin_chains == []  # no plugins, no chain


async def test_a_websocket_handshake_passes_the_routes_request_plugins(
    ws_upstream: RunningServer, ws_recorder: Any
) -> None:
    config = build_config(
        {"upstreams": {"ws": {"url": ws_upstream.url}}, "routes": [{"upstream": "ws", "plugins": [REFUSE]}]}
    )
    async with run_gateway(Gateway(config)) as gw:
        url = f"ws://127.0.0.1:{gw.port}/ws/echo"
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, open_timeout=5):
                pass
        assert info.value.response.status_code == 401
        assert info.value.response.headers["WWW-Authenticate"] == 'Bearer realm="test"'
        assert info.value.response.body == b"no token"
        assert ws_recorder.handshakes == []
        async with connect(url, additional_headers={"x-token": "let-me-in"}, open_timeout=5) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        assert ws_recorder.header("x-identity") == ["tester"]


async def test_websocket_plugins_see_the_route_index_of_the_handshake(ws_upstream: RunningServer) -> None:
    route_of = {"use": "tests.plugin_fixtures:RouteOf"}
    routes = [
        {"prefix": "/other", "upstream": "ws", "plugins": [route_of]},
        {"prefix": "/ws", "upstream": "ws", "plugins": [route_of]},
    ]
    config = build_config({"upstreams": {"ws": {"url": ws_upstream.url}}, "routes": routes})
    async with run_gateway(Gateway(config)) as gw, await _client(gw) as client:
        async with connect(f"ws://127.0.0.1:{gw.port}/ws/echo", open_timeout=5) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        assert plugin_fixtures.EVENTS == ["route 1"]
        await client.get("/other/x")  # and an HTTP request on the other route, for comparison
        assert plugin_fixtures.EVENTS == ["route 1", "route 0"]


class _RecordingTransport:
    """Passes requests to the real transport, keeping each UpstreamRequest (the seam the cluster reads)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[Any] = []

    async def send(self, request: Any, body: Any) -> Any:
        self.requests.append(request)
        return await self.inner.send(request, body)


async def test_route_timeouts_and_retries_travel_on_the_upstream_request(upstream: RunningServer) -> None:
    routes = (
        {"prefix": "/limited", "upstream": "main", "timeouts": {"read": 0.5}, "retries": {"max_retries": 0}},
        {"prefix": "/", "upstream": "main"},
    )
    gateway = Gateway(_config(upstream.url, *routes))
    async with run_gateway(gateway) as gw, await _client(gw) as client:
        recording = _RecordingTransport(gateway._options["main"].transport)
        gateway._options["main"].transport = recording  # type: ignore[assignment]
        assert (await client.get("/limited/x")).status_code == 200
        assert (await client.get("/echo")).status_code == 200
        limited, plain = recording.requests
        assert limited.timeouts.read == 0.5 and limited.timeouts.connect == 5.0  # the upstream's, under the route's
        assert limited.retry.max_retries == 0
        assert plain.timeouts is None and plain.retry is None  # no override: the upstream's own


async def test_a_route_read_timeout_gives_504_from_a_slow_upstream(upstream: RunningServer) -> None:
    routes = (
        {"prefix": "/limited", "upstream": "main", "timeouts": {"read": 0.5}, "strip_prefix": True},
        {"prefix": "/", "upstream": "main"},
    )
    async with run_gateway(Gateway(_config(upstream.url, *routes))) as gw, await _client(gw) as client:
        assert (await client.get("/slow?delay=1")).status_code == 200
        assert (await client.get("/limited/slow?delay=1")).status_code == 504


async def test_a_target_a_plugin_sets_must_fit_a_request_line(upstream: RunningServer, recorder: Recorder) -> None:
    route = {"prefix": "/", "upstream": "main", "plugins": [{"use": "tests.plugin_fixtures:BadTarget"}]}
    async with run_gateway(Gateway(_config(upstream.url, route))) as gw, await _client(gw) as client:
        response = await client.get("/echo")
        assert (response.status_code, response.json()["error"]) == (500, "internal_error")
        assert not recorder.requests


async def test_a_client_leaving_cancels_a_waiting_request_plugin(upstream: RunningServer, recorder: Recorder) -> None:
    plugin_fixtures.Stall.started.clear()
    plugin_fixtures.Stall.cancelled.clear()
    route = {"prefix": "/", "upstream": "main", "plugins": [{"use": "tests.plugin_fixtures:Stall"}]}
    async with run_gateway(Gateway(_config(upstream.url, route))) as gw:
        with anyio.fail_after(5):
            stream = await anyio.connect_tcp("127.0.0.1", gw.port)
            await stream.send(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            while not plugin_fixtures.Stall.started:  # noqa: ASYNC110 - the plugin's own record
                await anyio.sleep(0.01)
            await stream.aclose()
            while not plugin_fixtures.FINISHED:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert plugin_fixtures.Stall.cancelled == plugin_fixtures.Stall.started
        (exchange,) = plugin_fixtures.FINISHED
        assert (exchange.status, exchange.outcome) == (499, "client disconnected")
        assert not recorder.requests


async def test_a_plugin_startup_failure_fails_the_lifespan(upstream: RunningServer) -> None:
    route = {"prefix": "/", "upstream": "main", "plugins": [{"use": "tests.plugin_fixtures:FailingStartup"}]}
    gateway = Gateway(_config(upstream.url, route))
    with pytest.raises(RuntimeError, match=r"plugin tests.plugin_fixtures:FailingStartup failed in startup: OSError"):
        async with gateway.lifespan():
            pass


async def test_a_plugin_startup_failure_shuts_down_the_plugins_already_started_in_reverse_order(
    upstream: RunningServer,
) -> None:
    route = {
        "prefix": "/",
        "upstream": "main",
        "plugins": [
            {"use": "tests.plugin_fixtures:Lifespan", "options": {"label": "a"}},
            {"use": "tests.plugin_fixtures:Lifespan", "options": {"label": "b"}},
            {"use": "tests.plugin_fixtures:FailingStartupAfter"},
            {"use": "tests.plugin_fixtures:Lifespan", "options": {"label": "c"}},
        ],
    }
    gateway = Gateway(_config(upstream.url, route))
    with pytest.raises(RuntimeError, match=r"FailingStartupAfter failed in startup: OSError: redis is down"):
        async with gateway.lifespan():
            pass
    assert plugin_fixtures.EVENTS == ["startup a", "startup b", "startup failing", "shutdown b", "shutdown a"]


async def test_a_plugin_raising_on_a_websocket_handshake_gives_500(
    ws_upstream: RunningServer, ws_recorder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = {"use": "tests.plugin_fixtures:Boom"}
    config = build_config(
        {"upstreams": {"ws": {"url": ws_upstream.url}}, "routes": [{"upstream": "ws", "plugins": [plugin]}]}
    )
    caplog.set_level(logging.INFO, logger="fastgate.error")
    async with run_gateway(Gateway(config)) as gw:
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://127.0.0.1:{gw.port}/boom", open_timeout=5):
                pass
        assert info.value.response.status_code == 500
        assert ws_recorder.handshakes == []
        lines = [r.getMessage() for r in caplog.records if r.name == "fastgate.error"]
        assert len(lines) == 1 and "tests.plugin_fixtures:Boom failed in on_request" in lines[0]


async def test_a_context_variable_a_plugin_sets_stays_with_its_request_on_a_kept_alive_connection(
    upstream: RunningServer,
) -> None:
    """fastgate's server serves a connection's requests from one task: each request still starts from a fresh copy of
    the context, as under a task per request, and keeps what its plugins set for its own later hooks."""
    gateway = Gateway(
        _config(
            upstream.url, {"prefix": "/", "upstream": "main", "plugins": [{"use": "tests.plugin_fixtures:ContextMark"}]}
        )
    )
    async with run_gateway(gateway) as gw:
        with anyio.fail_after(10):
            stream = await anyio.connect_tcp("127.0.0.1", gw.port)
            async with stream:
                for path in (b"/echo?first", b"/echo?second", b"/echo?third"):
                    await stream.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")  # one connection
                    raw = b""
                    while b"\r\n\r\n" not in raw or len(raw) < raw.index(b"\r\n\r\n") + 4 + int(
                        parse_response(raw[: raw.index(b"\r\n\r\n") + 4]).header(b"content-length")[0]
                    ):
                        raw += await stream.receive()
                    assert parse_response(raw).status == 200
    assert plugin_fixtures.EVENTS == ["mark -", "response mark /echo"] * 3


async def test_an_on_finish_hook_that_awaits_runs_to_its_end_after_the_client_left_mid_exchange(
    upstream: RunningServer, recorder: Recorder
) -> None:
    """The client goes while the upstream is still answering: the exchange is cancelled (the upstream sees its
    request cut), and the finish hook still runs its awaits to the end (fastgate's server cancels the connection's
    task, so the hook runs shielded)."""
    route = {"prefix": "/", "upstream": "main", "plugins": [{"use": "tests.plugin_fixtures:AwaitingFinish"}]}
    async with run_gateway(Gateway(_config(upstream.url, route))) as gw:
        with anyio.fail_after(10):
            stream = await anyio.connect_tcp("127.0.0.1", gw.port)
            await stream.send(b"GET /slow?delay=5 HTTP/1.1\r\nHost: x\r\n\r\n")
            await recorder.started.wait()
            await stream.aclose()
            while not plugin_fixtures.FINISHED:  # noqa: ASYNC110 - the plugin's own record
                await anyio.sleep(0.01)
    (exchange,) = plugin_fixtures.FINISHED
    assert (exchange.status, exchange.outcome) == (499, "client disconnected")
