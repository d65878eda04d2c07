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
        assert "idle=1" in repr(pool)
        (conn,) = list(pool._idle)
    assert gateway.transports == {}
    assert conn.closed
    assert "idle=0" in repr(pool) and "busy=0" in repr(pool)


async def test_request_without_lifespan_gets_503_not_a_traceback(upstream: RunningServer) -> None:
    gateway = Gateway(GatewayConfig.single(upstream.url))
    async with run_gateway(gateway, lifespan="off") as server, httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/echo")
    assert response.status_code == 503
    assert response.json()["detail"] == "gateway is not running"
