"""A client that leaves cancels the work, at once, under every server path (issue 2).

The gateway is served two ways: with fastgate's own protocol (the server calls us back on disconnect) and with
uvicorn's h11 protocol (a watcher task reads ``receive()``), the latter also as an ASGI spec 2.4 server whose
``send`` raises ``OSError`` after a disconnect.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from fastgate import Gateway, GatewayConfig
from fastgate._types import ASGIApp
from fastgate.config import UpstreamConfig
from fastgate.exceptions import UpstreamProtocolError
from fastgate.proxy.http import ForwardOptions, forward_http
from fastgate.upstream.transport import UpstreamRequest
from tests.servers import SERVER_PATHS, RunningServer, Spec24, run_gateway, wait_until
from tests.upstream_app import Recorder

pytestmark = pytest.mark.anyio


@pytest.fixture(params=list(SERVER_PATHS))
async def served(request: pytest.FixtureRequest, upstream: RunningServer) -> Any:
    http, spec24 = SERVER_PATHS[request.param]
    gateway = Gateway(GatewayConfig.single(upstream.url))
    app: ASGIApp = Spec24(gateway) if spec24 else gateway
    async with run_gateway(app, http=http) as server:
        server.app = gateway
        yield server


async def _abort_after(port: int, request: bytes, ready: Any) -> float:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        await ready(stream)
    return time.monotonic()  # the socket is closed here


async def test_client_disconnect_cancels_upstream_request_while_waiting_for_headers(
    served: RunningServer, recorder: Recorder
) -> None:
    async def ready(_: Any) -> None:
        with anyio.fail_after(5):
            await recorder.started.wait()

    closed_at = await _abort_after(served.port, b"GET /slow?delay=5 HTTP/1.1\r\nHost: x\r\n\r\n", ready)
    with anyio.fail_after(2):
        await recorder.disconnect_event.wait()
    latency = recorder.disconnected["/slow"] - closed_at
    print(f"cancel latency while waiting for headers: {latency * 1000:.1f} ms")  # measured in bench/cancel_latency.py
    assert latency < 2.5  # the upstream would answer after 5 s: this is the cancel, not the end of the request
    await _pool_settles(served)


async def test_client_disconnect_cancels_upstream_request_while_streaming_the_body(
    served: RunningServer, recorder: Recorder
) -> None:
    async def ready(stream: Any) -> None:
        with anyio.fail_after(5):
            data = b""
            while b"chunk 1" not in data:
                data += await stream.receive()

    closed_at = await _abort_after(served.port, b"GET /stream?n=200&delay=0.02 HTTP/1.1\r\nHost: x\r\n\r\n", ready)
    with anyio.fail_after(2):
        await recorder.disconnect_event.wait()
    latency = recorder.disconnected["/stream"] - closed_at
    print(f"cancel latency while streaming: {latency * 1000:.1f} ms")
    assert latency < 2.0  # the stream would run 4 s more: this is the cancel, not its end
    await _pool_settles(served)


async def test_client_disconnect_during_upload_cancels_upstream_request(
    served: RunningServer, recorder: Recorder
) -> None:
    async def ready(stream: Any) -> None:
        # past server.request_prebuffer_bytes (64 KiB), so the body is streaming upstream when the client leaves
        await stream.send(b"%x\r\n%s\r\n" % (70_000, b"x" * 70_000))
        await wait_until(lambda: recorder.first_body_byte_at is not None)

    request = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    closed_at = await _abort_after(served.port, request, ready)
    with anyio.fail_after(2):
        await recorder.disconnect_event.wait()
    assert recorder.disconnected["/upload"] - closed_at < 2.0  # the upload never ends by itself
    await _pool_settles(served)


async def _pool_settles(served: RunningServer) -> None:
    """The aborted exchange's upstream response was closed: nothing is left busy in the pool."""
    pool = served.app.transports["default"].pool
    await wait_until(lambda: pool.stats().busy == 0, limit=2)


async def test_upstream_response_is_closed_on_success_and_connection_reused(
    served: RunningServer, recorder: Recorder
) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=served.url) as client:
        for _ in range(5):
            assert (await client.get("/echo")).status_code == 200
    pool = served.app.transports["default"].pool
    assert (pool.stats().busy, pool.stats().idle) == (0, 1)


class _SlowClosingResponse:
    """An upstream response that breaks off mid-body and whose ``aclose`` suspends, like httpx's."""

    status = 200
    headers = [(b"content-length", b"100")]
    target = "127.0.0.1:1"  # UpstreamResponse's address of the target that answered
    tries = 1
    aclose_waits = True

    def __init__(self) -> None:
        self.closing = anyio.Event()
        self.may_finish = anyio.Event()
        self.closed = self.interrupted = self._sent = False

    async def read(self) -> bytes:
        if not self._sent:
            self._sent = True
            return b"hello"
        raise UpstreamProtocolError("upstream closed the connection mid-body", "fake", "127.0.0.1:1")

    def read_buffered(self) -> tuple[bytes, bool]:
        return b"", False

    async def aclose(self) -> None:
        self.closing.set()
        try:
            await self.may_finish.wait()
        except BaseException:
            self.interrupted = True
            raise
        self.closed = True


class _FakeTransport:
    def __init__(self) -> None:
        self.responses: list[_SlowClosingResponse] = []

    async def __aenter__(self) -> _FakeTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, request: UpstreamRequest, body: object) -> _SlowClosingResponse:
        self.responses.append(_SlowClosingResponse())
        return self.responses[-1]


@pytest.mark.parametrize("server_path", ["fastgate-protocol", "h11"])
async def test_disconnect_during_the_shielded_upstream_close_does_not_interrupt_it(server_path: str) -> None:
    transport = _FakeTransport()
    options = ForwardOptions.from_config("fake", transport, UpstreamConfig(url="http://127.0.0.1:1"))
    hooks: list[Any] = []
    disconnect_seen = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        hooks.append(scope.get("extensions", {}).get("fastgate.server"))

        async def watched_receive() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnect_seen.set()
            return message

        await forward_http(scope, watched_receive, send, options, b"/")

    async with run_gateway(app, http=SERVER_PATHS[server_path][0], lifespan="off") as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with anyio.fail_after(5):
                while not transport.responses:  # noqa: ASYNC110 - the request reaches the app
                    await anyio.sleep(0.01)
                await transport.responses[0].closing.wait()
        # The client is gone while the upstream response is being closed (under fastgate's protocol the gateway
        # aborted it itself, having relayed a broken body): the disconnect is delivered now, mid-cleanup.
        response = transport.responses[0]
        if hooks[0] is not None:
            await wait_until(lambda: hooks[0].on_disconnect is None)  # the server has called the hook
        else:
            with anyio.fail_after(5):
                await disconnect_seen.wait()  # the watcher has read http.disconnect
        response.may_finish.set()
        await wait_until(lambda: response.closed or response.interrupted)
    assert response.closed and not response.interrupted
