"""Every example in examples/library_*.py runs, with real servers on 127.0.0.1 (issue 5)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fastgate._types import Receive, Scope, Send
from tests.integrations.conftest import EXAMPLES, load_example, send_then_disconnect, serve
from tests.servers import REFUSED_PORT, RunningServer, answer_lifespan, free_port, run_server, wait_until
from tests.upstream_app import Recorder
from tests.ws_upstream import WebSocketRecorder, WebSocketUpstreamApp

pytestmark = pytest.mark.anyio


@dataclass
class Service:
    """A downstream JSON service: answers ``{"service", "path", "query"}`` after ``delay`` seconds (or ``status``),
    and records the requests it got and the disconnects it saw."""

    name: str
    delay: float = 0.0
    status: int = 200
    paths: list[str] = field(default_factory=list)
    disconnected: anyio.Event = field(default_factory=anyio.Event)
    started: anyio.Event = field(default_factory=anyio.Event)
    started_at: list[float] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        await receive()  # the (empty) body
        self.paths.append(scope["path"])
        self.started_at.append(time.monotonic())
        self.started.set()
        with anyio.move_on_after(self.delay):
            if (await receive())["type"] == "http.disconnect":
                self.disconnected.set()
                return
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        body = httpx.Response(200, json={"service": self.name, "path": scope["path"], "query": query}).content
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        self.answered_at.append(time.monotonic())
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def services(*services: Service) -> AsyncIterator[list[RunningServer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(run_server(service)) for service in services]


@contextlib.asynccontextmanager
async def example_process(name: str, *args: str) -> AsyncIterator[str]:
    """``python examples/<name>.py --port P ARGS``, the one command each example is started with."""
    port = free_port()
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), "--port", str(port), *args]
    process = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = b""
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        assert process.stderr is not None
        with anyio.fail_after(10):
            async for chunk in process.stderr:
                err += chunk
            await process.wait()
    assert process.returncode in (0, -signal.SIGTERM), err.decode()  # uvicorn re-raises SIGTERM after shutdown
    assert b"Traceback" not in err, err.decode()


async def get_when_up(url: str, path: str, limit: float = 15) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url) as client:
        with anyio.fail_after(limit):
            while True:
                try:
                    return await client.get(path)
                except httpx.ConnectError:
                    await anyio.sleep(0.05)


# --- library_stream: the seed scenario -------------------------------------------------------------------------


async def test_stream_example_streams_the_downstream_response(upstream: RunningServer) -> None:
    app = load_example("library_stream").build_app(upstream.url)
    async with serve(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        arrivals = []
        started = time.monotonic()
        async with client.stream("GET", "/stream?n=3&delay=0.12") as response:
            async for _ in response.aiter_raw():
                arrivals.append(time.monotonic() - started)
        echoed = await client.post("/echo?q=1", content=b"up")
    assert len(arrivals) >= 3 and arrivals[0] < 0.2 < arrivals[-1]
    assert (echoed.json()["body"], echoed.json()["query_string"]) == ("up", "q=1")


async def test_stream_example_cancels_the_downstream_call_when_client_disconnects(
    upstream: RunningServer, recorder: Recorder
) -> None:
    app = load_example("library_stream").build_app(upstream.url)
    async with serve(app) as server:
        await send_then_disconnect(
            server.port, b"GET /slow?delay=10 HTTP/1.1\r\nHost: a\r\n\r\n", recorder.started.wait
        )
        with anyio.fail_after(3):
            await recorder.disconnect_event.wait()


# --- library_bff: two downstream calls, combined -----------------------------------------------------------------


async def test_bff_example_combines_both_downstream_responses() -> None:
    users, orders = Service("users", delay=1.0), Service("orders", delay=1.0)
    async with services(users, orders) as (u, o):
        app = load_example("library_bff").build_app(u.url, o.url)
        async with serve(app) as server, httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get("/dashboard/7")
    assert response.json() == {
        "user": {"service": "users", "path": "/users/7", "query": {}},
        "orders": {"service": "orders", "path": "/orders", "query": {"user_id": "7"}},
    }
    # concurrently: each call was under way before the other was answered (one after the other, the second would
    # only start once the first had answered, a second later)
    assert max(users.started_at[0], orders.started_at[0]) < min(users.answered_at[0], orders.answered_at[0])


async def test_bff_example_cancels_both_downstream_calls() -> None:
    users, orders = Service("users", delay=10), Service("orders", delay=10)
    async with services(users, orders) as (u, o):
        app = load_example("library_bff").build_app(u.url, o.url)
        async with serve(app) as server:

            async def both_started() -> None:
                await users.started.wait()
                await orders.started.wait()

            await send_then_disconnect(server.port, b"GET /dashboard/7 HTTP/1.1\r\nHost: a\r\n\r\n", both_started)
            with anyio.fail_after(3):
                await users.disconnected.wait()
                await orders.disconnected.wait()


async def test_bff_example_answers_502_when_a_downstream_fails() -> None:
    users, orders = Service("users"), Service("orders", delay=10)
    async with services(users) as (u,):
        app = load_example("library_bff").build_app(u.url, f"http://127.0.0.1:{REFUSED_PORT}")
        async with serve(app) as server, httpx.AsyncClient(base_url=server.url) as client:
            refused = await client.get("/dashboard/7")
        users.status = 500
        async with services(orders) as (o,):
            app = load_example("library_bff").build_app(u.url, o.url)
            async with serve(app) as server, httpx.AsyncClient(base_url=server.url) as client:
                with anyio.fail_after(3):
                    failed = await client.get("/dashboard/8")
            with anyio.fail_after(3):
                await orders.disconnected.wait()  # the users failure cancelled the slow orders call
    assert refused.status_code == failed.status_code == 502
    assert (refused.json()["service"], failed.json()["service"]) == ("orders", "users")


# --- library_compute: cancel_on_disconnect around a long computation ---------------------------------------------


async def test_compute_example_finishes_when_client_stays() -> None:
    app = load_example("library_compute").build_app()
    async with serve(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        with anyio.fail_after(5):
            response = await client.get("/primes", params={"below": 1_000_000})
            stats = (await client.get("/stats")).json()
    assert response.json() == {"below": 1_000_000, "primes": 78498}
    assert stats == {"started": 1, "finished": 1, "cancelled": 0, "chunks": 1}


async def test_compute_example_stops_computing_when_client_disconnects() -> None:
    app = load_example("library_compute").build_app(chunk=200_000)
    stats: Any = app.state.stats
    async with serve(app) as server:
        await send_then_disconnect(
            server.port,
            b"GET /primes?below=100000000000 HTTP/1.1\r\nHost: a\r\n\r\n",
            lambda: wait_until(lambda: stats.chunks >= 2),
        )
        await wait_until(lambda: stats.cancelled == 1, 3)
        chunks = stats.chunks
        await anyio.sleep(0.2)
    assert stats.chunks == chunks and stats.finished == 0  # no chunk ran after the cancellation


# --- each example starts with one command ------------------------------------------------------------------------


async def test_examples_start_with_one_command(upstream: RunningServer) -> None:
    ws_recorder = WebSocketRecorder()
    async with (
        services(Service("users"), Service("orders")) as (users, orders),
        run_server(WebSocketUpstreamApp(ws_recorder), ws="websockets-sansio") as ws_upstream,
    ):
        async with (  # started together: their start-ups overlap
            example_process("library_stream", "--upstream", upstream.url) as stream,
            example_process("library_bff", "--users", users.url, "--orders", orders.url) as bff,
            example_process("library_compute") as compute,
            example_process("library_websocket", "--upstream", f"ws://127.0.0.1:{ws_upstream.port}") as ws_relay,
        ):
            assert (await get_when_up(stream, "/echo")).json()["method"] == "GET"
            dashboard = (await get_when_up(bff, "/dashboard/1")).json()
            assert dashboard["orders"] == {"service": "orders", "path": "/orders", "query": {"user_id": "1"}}
            assert (await get_when_up(compute, "/primes?below=100")).json() == {"below": 100, "primes": 25}
            await get_when_up(ws_relay, "/")  # a 404 over HTTP: the server is up
            async with connect(ws_relay.replace("http", "ws") + "/chat/a?token=let-me-in", proxy=None) as ws:
                await ws.send("one command")
                assert await ws.recv() == "one command"


# --- library_websocket: a relay with a policy check ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def websocket_example() -> AsyncIterator[tuple[str, WebSocketRecorder]]:
    recorder = WebSocketRecorder()
    async with run_server(WebSocketUpstreamApp(recorder), ws="websockets-sansio") as upstream:
        app = load_example("library_websocket").build_app(f"ws://127.0.0.1:{upstream.port}")
        async with serve(app, ws="websockets-sansio") as server:
            yield f"ws://127.0.0.1:{server.port}", recorder


async def test_websocket_example_relays_sessions_with_a_valid_token() -> None:
    async with websocket_example() as (url, recorder):
        async with connect(f"{url}/chat/lobby?token=let-me-in&since=5", proxy=None, open_timeout=5) as ws:
            await ws.send("hi all")
            assert await ws.recv() == "hi all"
            await ws.send("close:4003:room closed")
            with anyio.fail_after(5), contextlib.suppress(ConnectionClosed):
                await ws.recv()
        assert ws.protocol.close_rcvd is not None
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (4003, "room closed")
    assert (recorder.handshakes[0]["path"], recorder.handshakes[0]["query_string"]) == ("/rooms/lobby", "since=5")


async def test_websocket_example_closes_with_1008_when_the_policy_check_fails() -> None:
    async with websocket_example() as (url, recorder):
        async with connect(f"{url}/chat/lobby?token=wrong", proxy=None, open_timeout=5) as ws:
            with anyio.fail_after(5), pytest.raises(ConnectionClosed):
                await ws.recv()
        assert ws.protocol.close_rcvd is not None
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (1008, "invalid token")
    assert recorder.handshakes == []  # nothing went upstream
