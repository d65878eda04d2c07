"""The Gateway's lifespan owns its transports: opened on startup, closed on shutdown (issue 2)."""

from __future__ import annotations

import httpx
import pytest

from fastgate import Gateway, GatewayConfig
from tests.servers import RunningServer, run_gateway

pytestmark = pytest.mark.anyio


async def test_pools_open_in_the_lifespan_and_close_on_shutdown(upstream: RunningServer) -> None:
    gateway = Gateway(GatewayConfig.single(upstream.url))
    assert gateway.transports == {}
    async with run_gateway(gateway) as server:
        pool = gateway.transports["default"].pool  # type: ignore[attr-defined]
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/echo")).status_code == 200
        assert pool.stats().idle == 1
        (conn,) = list(pool._idle)
    assert gateway.transports == {}
    assert conn.closed
    assert (pool.stats().idle, pool.stats().busy) == (0, 0)


async def test_request_without_lifespan_gets_503_not_a_traceback(upstream: RunningServer) -> None:
    gateway = Gateway(GatewayConfig.single(upstream.url))
    async with run_gateway(gateway, lifespan="off") as server, httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/echo")
    assert response.status_code == 503
    assert response.json()["detail"] == "gateway is not running"


async def test_gateway_mounted_under_a_prefix_forwards_paths_inside_the_mount(
    upstream: RunningServer, recorder: object
) -> None:
    import contextlib
    from collections.abc import AsyncIterator

    from starlette.applications import Starlette
    from starlette.routing import Mount

    from tests.servers import run_server
    from tests.upstream_app import Recorder

    assert isinstance(recorder, Recorder)
    gateway = Gateway(GatewayConfig.single(upstream.url))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with gateway.lifespan():  # Starlette sends no lifespan events to mounted apps
            yield

    host = Starlette(routes=[Mount("/api", app=gateway)], lifespan=lifespan)
    async with run_server(host, proxy_headers=False) as server, httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/api/echo?a=%2F")
    assert response.status_code == 200
    assert recorder.last()["raw_path"] == "/echo"
    assert recorder.last()["query_string"] == "a=%2F"


async def test_unexpected_error_gives_json_500_and_the_traceback_only_in_the_log(
    upstream: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenTransport:
        async def send(self, request: object, body: object) -> None:
            raise RuntimeError("a bug in a transport")

    gateway = Gateway(GatewayConfig.single(upstream.url))
    async with run_gateway(gateway) as server, httpx.AsyncClient(base_url=server.url) as client:
        gateway._options["default"].transport = BrokenTransport()  # type: ignore[assignment]
        response = await client.get("/echo")
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert "a bug" not in response.text and "Traceback" not in response.text
    assert any(r.name == "fastgate.error" and r.exc_info for r in caplog.records)
