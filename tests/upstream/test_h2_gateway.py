"""An HTTP/1.1 client through an in-process gateway to an h2c upstream (Hypercorn): a client that goes away resets
its upstream stream, and the upstream's failures are the usual 502/504 JSON answers."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import httpx
import pytest

from fastgate import Gateway, GatewayConfig
from tests.rawhttp import raw_exchange
from tests.servers import free_port, run_gateway
from tests.upstream.h2_servers import H2App, run_hypercorn

pytestmark = pytest.mark.anyio


async def wait_until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - the upstream changes it
            await anyio.sleep(0.01)


async def test_client_disconnect_resets_the_upstream_stream() -> None:
    app = H2App()
    async with run_hypercorn(app) as upstream:
        config = GatewayConfig.single(f"http://127.0.0.1:{upstream.port}", protocol="h2c")
        async with run_gateway(Gateway(config)) as gateway:
            async with await anyio.connect_tcp("127.0.0.1", gateway.port) as stream:
                await stream.send(b"GET /hold HTTP/1.1\r\nHost: gw\r\n\r\n")
                await wait_until(lambda: app.holding == 1)
            # the client is gone: the gateway resets the stream, Hypercorn tells its app
            await wait_until(lambda: app.disconnects == ["/hold"])
            response = await raw_exchange(gateway.port, b"GET /echo HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            assert response.status == 200 and json.loads(response.body)["http_version"] == "2"
            assert app.connections == 1  # the upstream connection outlived the cancelled stream


async def test_upstream_failures_are_502_and_504_json_answers() -> None:
    app = H2App()
    async with run_hypercorn(app) as upstream:
        config = GatewayConfig.single(f"http://127.0.0.1:{upstream.port}", protocol="h2c", timeouts={"read": 0.5})
        async with run_gateway(Gateway(config)) as gateway, httpx.AsyncClient(timeout=15) as client:
            slow = await client.get(f"http://127.0.0.1:{gateway.port}/slow?delay=2")
            assert slow.status_code == 504 and slow.json()["error"] == "upstream_timeout"
    refused = GatewayConfig.single(f"http://127.0.0.1:{free_port()}", protocol="h2c")
    async with run_gateway(Gateway(refused)) as gateway, httpx.AsyncClient(timeout=15) as client:
        down = await client.get(f"http://127.0.0.1:{gateway.port}/")
        assert down.status_code == 502 and down.json()["error"] == "upstream_connect_error"
