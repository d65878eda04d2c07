"""WebSocket proxying through ``fastgate proxy`` running as a real subprocess (issue 3): the CLI, and many sessions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.servers import RunningServer, fastgate_process, run_server
from tests.ws_upstream import WebSocketRecorder, WebSocketUpstreamApp

pytestmark = pytest.mark.anyio

SESSIONS = 500


@pytest.fixture
def ws_recorder() -> WebSocketRecorder:
    return WebSocketRecorder()


@pytest.fixture
async def ws_upstream(ws_recorder: WebSocketRecorder) -> AsyncIterator[RunningServer]:
    async with run_server(WebSocketUpstreamApp(ws_recorder), ws="websockets-sansio", backlog=2048) as server:
        yield server


def client(url: str, **options: Any) -> connect:
    return connect(url, proxy=None, open_timeout=10, ping_interval=None, **options)


async def test_cli_proxy_relays_websockets_on_any_path(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder, tmp_path: Path
) -> None:
    args = ["--to", ws_upstream.url, "--ws-idle-timeout", "0.5", "--ws-allowed-origin", "https://app.example"]
    with fastgate_process(args, tmp_path / "gateway.log") as gateway:
        base = f"ws://127.0.0.1:{gateway.port}"
        for path in ["/ws/echo", "/", "/some/deep/path?x=1&y=%2F", "/ws/echo/"]:
            async with client(base + path) as ws:
                await ws.send(f"via {path}")
                with anyio.fail_after(5):
                    assert await ws.recv() == f"via {path}"
        assert [h["raw_path"] + "?" + h["query_string"] for h in ws_recorder.handshakes] == [
            "/ws/echo?",
            "/?",
            "/some/deep/path?x=1&y=%2F",
            "/ws/echo/?",
        ]
        async with client(base + "/ws/echo") as ws:  # --ws-idle-timeout reached the gateway
            with anyio.fail_after(5):
                await ws.wait_closed()
            assert (ws.close_code, ws.close_reason) == (1001, "idle timeout")
        async with client(base + "/ws/echo", origin="https://evil.example") as ws:  # and --ws-allowed-origin
            with anyio.fail_after(5):
                await ws.wait_closed()
            assert ws.close_code == 1008
        log = gateway.log()
    assert '"WebSocket /some/deep/path?x=1&y=%2F" 101' in log


async def test_500_concurrent_websockets_bounded_memory(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder, tmp_path: Path
) -> None:
    args = ["--to", ws_upstream.url, "--no-access-log", "--log-level", "warning"]
    with fastgate_process(args, tmp_path / "gateway.log") as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/ws/echo"
        async with client(url) as ws:  # warm-up: imports and lazily built objects
            await ws.send("warm")
            await ws.recv()
        await anyio.sleep(0.2)
        rss_idle = gateway.rss_bytes()

        async with contextlib.AsyncExitStack() as stack:
            sessions: list[ClientConnection] = []
            limiter = anyio.Semaphore(50)  # how many handshakes are in flight at once

            async def open_one(n: int) -> None:
                async with limiter:
                    ws = await stack.enter_async_context(client(url))
                await ws.send(f"session {n}")
                assert await ws.recv() == f"session {n}"
                sessions.append(ws)

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for n in range(SESSIONS):
                        tg.start_soon(open_one, n)
            assert len(sessions) == SESSIONS and ws_recorder.open_sessions == SESSIONS
            rss_open = gateway.rss_bytes()
            with anyio.fail_after(15):  # every session still echoes
                for n, ws in enumerate(sessions):
                    await ws.send(b"again %d" % n)
                for n, ws in enumerate(sessions):
                    assert await ws.recv() == b"again %d" % n
        with anyio.fail_after(10):
            while ws_recorder.open_sessions:  # noqa: ASYNC110 - every upstream session closed behind its client
                await anyio.sleep(0.05)
        assert gateway.process.poll() is None
    per_session = (rss_open - rss_idle) / SESSIONS
    print(f"\ngateway RSS idle {rss_idle / 2**20:.1f} MiB, {SESSIONS} open {rss_open / 2**20:.1f} MiB: ", end="")
    print(f"{per_session / 1024:.1f} KiB per proxied WebSocket (client offered permessage-deflate)")
    assert per_session < 128 * 1024
