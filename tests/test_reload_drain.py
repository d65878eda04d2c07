"""``server.drain_timeout`` in process (issue 17 item 13): a retired config lets go of its transports once it has
passed, under fastgate's server protocol and under Uvicorn (the disconnect watcher's path) alike."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from fastgate import Gateway
from fastgate.config import GatewayConfig, build_config
from tests.reload_support import NamedUpstream, gateway_config
from tests.servers import SERVER_PATHS, RunningServer, captured_logs, run_gateway, run_server

pytestmark = pytest.mark.anyio


@pytest.fixture
async def first() -> AsyncIterator[RunningServer]:
    async with run_server(NamedUpstream("first")) as server:
        yield server


@pytest.fixture
async def second() -> AsyncIterator[RunningServer]:
    async with run_server(NamedUpstream("second")) as server:
        yield server


def config(name: str, url: str, drain_timeout: float) -> GatewayConfig:
    routes = [{"prefix": "/", "upstream": name}]
    return build_config(gateway_config({name: url}, routes, server={"drain_timeout": drain_timeout}))


@pytest.mark.parametrize("server_path", ["fastgate-protocol", "h11"])
async def test_issue17_13_a_request_held_past_drain_timeout_ends_and_the_retired_transport_closes(
    first: RunningServer, second: RunningServer, server_path: str
) -> None:
    upstream = first.app
    assert isinstance(upstream, NamedUpstream)
    gateway = Gateway(config("first", first.url, 0.5))
    http, _ = SERVER_PATHS[server_path]
    async with run_gateway(gateway, http=http) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
        held_transport = gateway.snapshot.held["first"]
        outcome: list[object] = []

        async def hold() -> None:
            try:
                outcome.append((await client.get("/hold")).status_code)
            except httpx.TransportError as exc:
                outcome.append(exc)

        with captured_logs("fastgate.error") as logs:
            async with anyio.create_task_group() as group:
                group.start_soon(hold)
                with anyio.fail_after(5):
                    await upstream.holding.wait()
                await gateway.reload(config("second", second.url, 0.5))
                reloaded_at = time.monotonic()
                with anyio.fail_after(15):
                    await held_transport.closed.wait()  # released without the upstream ever answering
                closed_after = time.monotonic() - reloaded_at
            assert (await client.get("/x")).json()["upstream"] == "second"
            upstream.release.set()  # the upstream's handler never saw the abort: let it end before teardown
    assert closed_after >= 0.5
    # fastgate's protocol cuts the connection; Uvicorn answers 500 to an app that returned without a response
    assert outcome and (isinstance(outcome[0], httpx.TransportError) or outcome[0] == 500), outcome
    lines = [m for r in logs.records if "server.drain_timeout" in (m := r.getMessage())]
    assert len(lines) == 1 and lines[0].startswith("GET /hold: ended"), lines
