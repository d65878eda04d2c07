"""forward_websocket() inside a FastAPI app, and WebSockets through a mounted upstream (issue 5)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fastgate import Gateway, GatewayConfig, ProxyApp, Upstreams, forward_websocket
from tests.integrations.conftest import serve
from tests.servers import REFUSED_PORT, RunningServer
from tests.ws_upstream import WebSocketRecorder

pytestmark = pytest.mark.anyio


# uvicorn 0.54's websockets-sansio logs this after every denial response it sent (it never marks that handshake
# complete); the client got the answer.
DENIAL_LOGGED = ("ASGI callable returned without completing handshake",)


@contextlib.asynccontextmanager
async def serve_ws(app: Any, expected_errors: tuple[str, ...] = ()) -> AsyncIterator[str]:
    async with serve(app, ws="websockets-sansio", expected_errors=expected_errors) as server:
        yield f"ws://127.0.0.1:{server.port}"


def client(url: str) -> connect:
    return connect(url, proxy=None, open_timeout=5)


async def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    with anyio.fail_after(5), contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()
    rcvd = ws.protocol.close_rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)


def relay_app(upstream_url: str) -> FastAPI:
    app = FastAPI(lifespan=Upstreams(chat=upstream_url))

    @app.websocket("/relay/{room}")
    async def relay(websocket: WebSocket, room: str) -> None:
        await forward_websocket(websocket, "chat", f"/ws/{room}", headers={"x-room": room})

    @app.websocket("/too-late")
    async def too_late(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            await forward_websocket(websocket, "chat")
        except RuntimeError as exc:
            await websocket.close(4000, str(exc)[:100])

    return app


async def test_forward_websocket_relays_messages_and_close_codes(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder
) -> None:
    async with serve_ws(relay_app(ws_upstream.url)) as url, client(f"{url}/relay/lobby?x=1") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01")
        assert await ws.recv() == b"\x00\x01"
        await ws.send("close:4001:bye")
        assert await closed_with(ws) == (4001, "bye")
    handshake = ws_recorder.handshakes[0]
    assert (handshake["path"], handshake["query_string"]) == ("/ws/lobby", "x=1")
    assert ["x-room", "lobby"] in handshake["headers"]


async def test_forward_websocket_passes_the_client_close_code_upstream(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder
) -> None:
    async with serve_ws(relay_app(ws_upstream.url)) as url:
        async with client(f"{url}/relay/lobby") as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            await ws.close(4002, "client leaves")
        assert await ws_recorder.wait_closed() == (4002, "client leaves")


async def test_forward_websocket_refuses_with_502_when_the_upstream_is_unreachable() -> None:
    async with serve_ws(relay_app(f"http://127.0.0.1:{REFUSED_PORT}"), DENIAL_LOGGED) as url:
        with pytest.raises(InvalidStatus) as caught:
            async with client(f"{url}/relay/lobby"):
                pass
    assert caught.value.response.status_code == 502


async def test_forward_websocket_must_come_before_accept(ws_upstream: RunningServer) -> None:
    async with serve_ws(relay_app(ws_upstream.url)) as url, client(f"{url}/too-late") as ws:
        code, reason = await closed_with(ws)
    assert code == 4000 and reason is not None and "before websocket.accept()" in reason


async def test_mounted_upstream_relays_websockets(ws_upstream: RunningServer, ws_recorder: WebSocketRecorder) -> None:
    app = FastAPI(lifespan=Upstreams(chat=ws_upstream.url))
    app.mount("/chat", ProxyApp("chat"))
    async with serve_ws(app) as url, client(f"{url}/chat/ws/echo?room=1") as ws:
        await ws.send("through the mount")
        assert await ws.recv() == "through the mount"
    assert (ws_recorder.handshakes[0]["path"], ws_recorder.handshakes[0]["query_string"]) == ("/ws/echo", "room=1")


async def test_mounted_gateway_relays_websockets(ws_upstream: RunningServer, ws_recorder: WebSocketRecorder) -> None:
    gateway = Gateway(GatewayConfig.single(ws_upstream.url))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with gateway.lifespan():
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/gw", ProxyApp(gateway))
    async with serve_ws(app) as url, client(f"{url}/gw/ws/echo") as ws:
        await ws.send("through the gateway")
        assert await ws.recv() == "through the gateway"
        await ws.send("close:4004:done")
        assert await closed_with(ws) == (4004, "done")
    assert ws_recorder.handshakes[0]["path"] == "/ws/echo"
