from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from fastgate import Gateway, GatewayConfig
from fastgate.app import DRIVER_ENV
from tests.redis_server import RedisServer
from tests.servers import RunningServer, run_gateway, run_server
from tests.upstream_app import Recorder, UpstreamApp
from tests.ws_upstream import WebSocketRecorder, WebSocketUpstreamApp

# The two drivers of the gateway's exchange core: fastgate's HTTP/1.1 server calling Gateway.handle directly, and the
# same server serving the gateway as an ASGI app through the adapter (FASTGATE_DRIVER=asgi, read by Gateway()).
DRIVERS = ("native", "asgi")
# What marks a test as serving a gateway in this process: it runs once per driver. A test that runs `fastgate` as a
# child process runs it with the environment's driver (the default, native): the two drivers differ only in this
# process's code, and tests/test_driver_process.py runs real processes under FASTGATE_DRIVER=asgi.
_GATEWAY_FIXTURES = frozenset({"gateway", "client", "gateway_for"})
_PROCESS_HELPERS = ("fastgate_run", "fastgate_process", "gateway_process", "GatewayProcess")


def _serves_a_gateway(metafunc: pytest.Metafunc) -> bool:
    if _GATEWAY_FIXTURES.intersection(metafunc.fixturenames):
        return True
    if not hasattr(metafunc.module, "run_gateway"):
        return False
    try:
        source = inspect.getsource(metafunc.function)
    except (OSError, TypeError):
        return True
    return not any(helper in source for helper in _PROCESS_HELPERS)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "gateway_driver" in metafunc.fixturenames and _serves_a_gateway(metafunc):
        metafunc.parametrize("gateway_driver", DRIVERS, indirect=True)


@pytest.fixture(autouse=True)
def gateway_driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The driver a gateway-serving test runs with (``[native]`` / ``[asgi]`` in its id); other tests keep the
    environment's (``FASTGATE_DRIVER=asgi scripts/test`` runs everything through the adapter)."""
    driver: str | None = getattr(request, "param", None)
    if driver == "asgi":
        monkeypatch.setenv(DRIVER_ENV, "asgi")
    elif driver == "native":
        monkeypatch.delenv(DRIVER_ENV, raising=False)
    return driver or ("asgi" if os.environ.get(DRIVER_ENV) == "asgi" else "native")


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
