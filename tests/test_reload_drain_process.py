"""Issue 17 item 13 through a real ``fastgate run`` process: a reload is hitless even when it adds a bcrypt plugin,
and ``server.drain_timeout`` bounds how long a retired config's WebSockets and streams keep it alive."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.reload_support import NamedUpstream, fastgate_run, gateway_config, ports, write_config
from tests.servers import GatewayProcess, RunningServer, run_server
from tests.upstream_app import Recorder, UpstreamApp
from tests.ws_upstream import WebSocketRecorder, WebSocketUpstreamApp

pytestmark = pytest.mark.anyio

# bcrypt("pw") at cost 16: several seconds a hash, so that a hash made on the event loop stalls it for that long.
SLOW_HASH = "$2b$16$j8srEQ6g1ba2wweEHeReheQauEwuVbJqxMSa3RDVR/1ijhA.M0Xm6"


@pytest.fixture
async def api() -> AsyncIterator[RunningServer]:
    async with run_server(NamedUpstream("api")) as server:
        yield server


@pytest.fixture
async def streaming() -> AsyncIterator[RunningServer]:
    async with run_server(UpstreamApp(Recorder())) as server:
        yield server


@pytest.fixture
async def ws_upstream() -> AsyncIterator[RunningServer]:
    async with run_server(WebSocketUpstreamApp(WebSocketRecorder()), ws="websockets-sansio") as server:
        yield server


async def _status(client: httpx.AsyncClient, path: str) -> int:
    try:
        return (await client.get(path)).status_code
    except httpx.TransportError:
        return 0


async def _wait_for_log(gateway: GatewayProcess, pattern: str, limit: float = 30) -> list[str]:
    with anyio.fail_after(limit):
        while not (found := re.findall(pattern, gateway.log())):  # noqa: ASYNC110 - a log file
            await anyio.sleep(0.05)
    return found


async def test_issue17_13_a_reload_adding_basic_auth_does_not_stall_requests_in_flight(
    api: RunningServer, tmp_path: Path
) -> None:
    """basic_auth's dummy hash (of the users' cost) was made in the plugin's constructor, on the event loop, while
    a reload built the new config: every request in flight waited for it. It is made in a worker thread now."""
    (port,) = ports(1)
    users = tmp_path / "htpasswd"
    users.write_text(f"alice:{SLOW_HASH}\n")
    path = tmp_path / "gateway.yaml"
    routes: list[dict[str, Any]] = [{"prefix": "/", "upstream": "api"}]
    write_config(path, gateway_config({"api": api.url}, routes, port=port))
    protected = {
        "prefix": "/admin",
        "upstream": "api",
        "plugins": [{"use": "basic_auth", "options": {"users_file": str(users)}}],
    }
    latencies: list[float] = []
    with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            assert (await client.get("/x")).status_code == 200
            write_config(path, gateway_config({"api": api.url}, [protected, *routes], port=port))
            gateway.process.send_signal(signal.SIGHUP)
            with anyio.fail_after(120):
                for _ in range(20_000):  # until the new route answers (its plugin started), bounded in count
                    started = time.monotonic()
                    assert (await client.get("/x")).status_code == 200
                    latencies.append(time.monotonic() - started)
                    if len(latencies) % 10 == 0 and await _status(client, "/admin/x") == 401:
                        break
            assert await _status(client, "/admin/x") == 401
    print(f"\n{len(latencies)} requests during the reload, slowest {max(latencies) * 1000:.0f} ms")
    assert len(latencies) >= 10
    assert max(latencies) < 1.5  # a cost-16 hash on the loop stalls every request for several seconds


async def test_issue17_13_drain_timeout_closes_a_retired_configs_websockets_with_1001_and_ends_its_streams(
    streaming: RunningServer, ws_upstream: RunningServer, tmp_path: Path
) -> None:
    """``server.drain_timeout: 1.5``: a WebSocket and a streaming response that started before a reload end 1.5 s
    after it, one log line each; a WebSocket opened on the new config is left alone."""
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    upstreams = {"api": streaming.url, "ws": ws_upstream.url}
    routes: list[dict[str, Any]] = [{"prefix": "/ws", "upstream": "ws"}, {"prefix": "/", "upstream": "api"}]
    server = {"drain_timeout": 1.5, "log_level": "info"}
    write_config(path, gateway_config(upstreams, routes, port=port, server=server))
    with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=30) as client,
            connect(f"ws://127.0.0.1:{port}/ws/echo", open_timeout=10, ping_interval=None) as old_ws,
            client.stream("GET", "/stream?n=600&delay=0.1") as stream,  # a minute of chunks
        ):
            assert stream.status_code == 200
            chunks = stream.aiter_bytes()
            await chunks.__anext__()
            await old_ws.send("before")
            assert await old_ws.recv() == "before"
            write_config(
                path,
                gateway_config(upstreams, [{"prefix": "/new", "upstream": "api"}, *routes], port=port, server=server),
            )
            reloaded_at = time.monotonic()
            gateway.process.send_signal(signal.SIGHUP)
            await _wait_for_log(gateway, r"config reloaded")
            async with connect(f"ws://127.0.0.1:{port}/ws/echo", open_timeout=10, ping_interval=None) as new_ws:
                with anyio.fail_after(30):
                    with pytest.raises(ConnectionClosed) as closed:
                        for _ in range(1000):  # the old session still relays until the drain ends it
                            await old_ws.send("still here")
                            assert await old_ws.recv() == "still here"
                            await anyio.sleep(0.05)
                ws_closed_at = time.monotonic()
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
                assert closed.value.rcvd.reason == "gateway reloaded"
                with anyio.fail_after(30), pytest.raises(httpx.RemoteProtocolError):  # cut off: seen incomplete
                    async for _ in chunks:
                        pass
                await new_ws.send("new config")
                assert await new_ws.recv() == "new config"
    assert ws_closed_at - reloaded_at >= 1.5
    log = gateway.log()
    assert len(re.findall(r"WebSocket /ws/echo: closed with 1001, its config was retired by a reload", log)) == 1
    assert len(re.findall(r"GET /stream\?n=600&delay=0\.1: ended, its config was retired by a reload", log)) == 1
