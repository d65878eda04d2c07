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
from fastgate._protocol import FastgateHttpProtocol
from fastgate._types import ASGIApp
from tests.servers import RunningServer, Spec24, run_gateway, wait_until
from tests.upstream_app import Recorder

pytestmark = pytest.mark.anyio


SERVER_PATHS = {
    "fastgate-protocol": (FastgateHttpProtocol, lambda app: app),
    "h11-watcher": ("h11", lambda app: app),
    "h11-watcher-spec-2.4": ("h11", Spec24),
}


@pytest.fixture(params=list(SERVER_PATHS))
async def served(request: pytest.FixtureRequest, upstream: RunningServer) -> Any:
    http, wrap = SERVER_PATHS[request.param]
    gateway = Gateway(GatewayConfig.single(upstream.url))
    app: ASGIApp = wrap(gateway)
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
        await anyio.sleep(0.05)

    closed_at = await _abort_after(served.port, b"GET /slow?delay=5 HTTP/1.1\r\nHost: x\r\n\r\n", ready)
    with anyio.fail_after(2):
        await recorder.disconnect_event.wait()
    latency = recorder.disconnected["/slow"] - closed_at
    print(f"cancel latency while waiting for headers: {latency * 1000:.1f} ms")
    assert latency < 0.1
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
    assert latency < 0.1
    await _pool_settles(served)


async def test_client_disconnect_during_upload_cancels_upstream_request(
    served: RunningServer, recorder: Recorder
) -> None:
    async def ready(stream: Any) -> None:
        await stream.send(b"5\r\nhello\r\n")
        await wait_until(lambda: recorder.first_body_byte_at is not None)

    request = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    closed_at = await _abort_after(served.port, request, ready)
    with anyio.fail_after(2):
        await recorder.disconnect_event.wait()
    assert recorder.disconnected["/upload"] - closed_at < 0.1
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
