from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from fastgate import Gateway, GatewayConfig
from tests.redis_server import RedisServer
from tests.servers import RunningServer, run_gateway, run_server
from tests.upstream_app import Recorder, UpstreamApp
from tests.ws_upstream import WebSocketRecorder, WebSocketUpstreamApp


@pytest.fixture(scope="session")
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return ("asyncio", {"use_uvloop": True})


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def upstream(recorder: Recorder) -> AsyncIterator[RunningServer]:
    async with run_server(UpstreamApp(recorder)) as server:
        yield server


GatewayFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningServer]]


@pytest.fixture
def gateway_for() -> GatewayFactory:
    """``async with gateway_for(url, timeouts=..., http=...) as gw``: a real gateway in front of ``url``."""

    @contextlib.asynccontextmanager
    async def factory(url: str, *, http: Any = None, **upstream: Any) -> AsyncIterator[RunningServer]:
        gateway = Gateway(GatewayConfig.single(url, **upstream))
        kwargs = {"http": http} if http is not None else {}
        async with run_gateway(gateway, **kwargs) as server:
            server.app = gateway
            yield server

    return factory


@pytest.fixture
async def gateway(upstream: RunningServer, gateway_for: GatewayFactory) -> AsyncIterator[RunningServer]:
    async with gateway_for(upstream.url) as server:
        yield server


@pytest.fixture
async def client(gateway: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        yield client


@pytest.fixture
def ws_recorder() -> WebSocketRecorder:
    return WebSocketRecorder()


@pytest.fixture
async def ws_upstream(ws_recorder: WebSocketRecorder) -> AsyncIterator[RunningServer]:
    """A WebSocket upstream on stock uvicorn (the gateway's own server protocol is what is under test)."""
    async with run_server(WebSocketUpstreamApp(ws_recorder), ws="websockets-sansio") as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session, on a private Unix socket; tests use keys of their own."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def private_redis_server() -> Iterator[RedisServer]:
    """A redis-server for one test, which it may stop, restart or pause."""
    with RedisServer() as server:
        yield server
