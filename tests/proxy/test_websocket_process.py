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


async def test_client_message_above_ws_client_max_size_is_closed_1009_by_uvicorn(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder, tmp_path: Path
) -> None:
    args = ["--to", ws_upstream.url, "--ws-client-max-size", "1000"]  # the upstream hop's limit stays 16 MiB
    with fastgate_process(args, tmp_path / "gateway.log") as gateway:
        async with client(f"ws://127.0.0.1:{gateway.port}/ws/echo") as ws:
            await ws.send(b"x" * 1000)
            with anyio.fail_after(5):
                assert await ws.recv() == b"x" * 1000
                await ws.send(b"x" * 1001)
                await ws.wait_closed()
            assert ws.close_code == 1009
            assert "exceeds limit of 1000 bytes" in (ws.close_reason or "")  # websockets' wording, so Uvicorn's
        assert (await ws_recorder.wait_closed())[0] == 1009  # and the upstream is told why


async def test_client_that_does_not_answer_pings_is_closed_1011_after_ws_client_ping_timeout(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder, tmp_path: Path
) -> None:
    args = ["--to", ws_upstream.url, "--ws-client-ping-interval", "0.2", "--ws-client-ping-timeout", "0.3"]
    with fastgate_process(args, tmp_path / "gateway.log") as gateway:
        async with client(f"ws://127.0.0.1:{gateway.port}/ws/echo") as ws:
            await ws.send("hello")
            with anyio.fail_after(5):
                assert await ws.recv() == "hello"
            ws.transport.pause_reading()  # the gateway's pings go unanswered
            # The gateway gives up on the client after 0.2 + 0.3 s, and ends the upstream's session with it.
            assert await ws_recorder.wait_closed() == (1001, "client went away")
            ws.transport.resume_reading()
            with anyio.fail_after(5):
                await ws.wait_closed()
            assert (ws.close_code, ws.close_reason) == (1011, "keepalive ping timeout")


@pytest.mark.parametrize(("deflate", "limit_kib"), [(False, 64), (True, 128)], ids=["plain", "deflate"])
async def test_500_concurrent_websockets_bounded_memory(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder, tmp_path: Path, deflate: bool, limit_kib: int
) -> None:
    args = ["--to", ws_upstream.url, "--no-access-log", "--log-level", "warning"]
    args += ["--ws-per-message-deflate"] if deflate else []
    with fastgate_process(args, tmp_path / "gateway.log") as gateway:
        url = f"ws://127.0.0.1:{gateway.port}/ws/echo"
        async with client(url) as ws:  # warm-up: imports and lazily built objects
            await ws.send("warm")
            await ws.recv()
            assert ws.response is not None  # the client offers permessage-deflate; the gateway agrees only if asked
            assert ("permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")) is deflate
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
    print(f"{per_session / 1024:.1f} KiB per proxied WebSocket (permessage-deflate {'on' if deflate else 'off'})")
    assert per_session < limit_kib * 1024
