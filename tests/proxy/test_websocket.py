"""WebSocket proxying (issue 3), against real upstream WebSocket servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from starlette.exceptions import WebSocketException
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close, Frame, Opcode
from websockets.server import ServerProtocol

from fastgate import Gateway, GatewayConfig
from fastgate.config import build_config
from fastgate.exceptions import (
    BadRequest,
    FastgateError,
    RouteNotFound,
    UpstreamConnectError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from fastgate.proxy.websocket import client_close_code, close_for, upstream_close_code
from tests.servers import REFUSED_PORT, RunningServer, captured_logs, run_gateway, wait_until
from tests.ws_upstream import (
    WebSocketRecorder,
    close_between_fragments,
    close_code_of,
    misbehaving_ws_upstream,
    silent_upstream,
    stalled_upstream,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).parents[2]


def ws_url(server: Any, path: str = "/ws/echo") -> str:
    return f"ws://{server.host}:{server.port}{path}"


@contextlib.asynccontextmanager
async def ws_gateway(url: str, **upstream: Any) -> AsyncIterator[RunningServer]:
    """A real gateway in front of ``url``, served as ``fastgate.server`` serves it (fastgate's websockets-sansio)."""
    async with run_gateway(Gateway(GatewayConfig.single(url, **upstream))) as server:
        yield server


def client(url: str, **options: Any) -> connect:
    options.setdefault("open_timeout", 5)
    options.setdefault("max_size", 4 * 1024 * 1024)
    return connect(url, proxy=None, **options)


async def closed_with(ws: ClientConnection, seconds: float = 5) -> tuple[int | None, str | None]:
    """Read until the session closes; the code and reason the client received (None, None: no close frame)."""
    with anyio.fail_after(seconds):
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
    rcvd = ws.protocol.close_rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)


@pytest.fixture
async def gateway(ws_upstream: RunningServer) -> AsyncIterator[RunningServer]:
    async with ws_gateway(ws_upstream.url) as server:
        yield server


# Handshake


async def test_handshake_forwards_application_headers_and_subprotocols(
    gateway: RunningServer, ws_recorder: WebSocketRecorder
) -> None:
    headers = {"Cookie": "session=abc", "Authorization": "Bearer t0ken", "X-Custom": "kept"}
    url = ws_url(gateway, "/ws/echo/room?id=7&q=a%20b")
    async with client(url, additional_headers=headers, subprotocols=["chat.v1", "chat.v2"]) as ws:
        client_key = ws.protocol.key
        offered_extensions = ws.request.headers.get("Sec-WebSocket-Extensions") if ws.request else None
        await ws.send("handshake")
        seen = json.loads(await ws.recv())
    assert offered_extensions and "permessage-deflate" in offered_extensions  # the client did offer compression
    assert seen["raw_path"] == "/ws/echo/room"
    assert seen["query_string"] == "id=7&q=a%20b"
    assert seen["subprotocols"] == ["chat.v1", "chat.v2"]
    names = [name for name, _ in seen["headers"]]
    values = dict(seen["headers"])
    assert values["cookie"] == "session=abc"
    assert values["authorization"] == "Bearer t0ken"
    assert values["x-custom"] == "kept"
    assert values["host"] == f"{gateway.host}:{gateway.port}"  # preserve_host, as for HTTP
    assert values["x-forwarded-for"] == "127.0.0.1"
    assert values["x-forwarded-proto"] == "http"
    assert values["via"] == "1.1 fastgate"
    assert values["x-request-id"]
    # The upstream hop has its own key and no extensions: nothing of the client's hop leaks through.
    assert values["sec-websocket-key"] != client_key
    assert "sec-websocket-extensions" not in names
    assert names.count("host") == 1 and names.count("upgrade") == 1 and names.count("sec-websocket-key") == 1


async def test_client_is_accepted_with_the_upstream_subprotocol_and_headers(gateway: RunningServer) -> None:
    async with client(ws_url(gateway), subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response is not None
        response = ws.response.headers
        assert response.get_all("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
        assert response["X-Upstream"] == "yes"
        assert response["Via"] == "1.1 fastgate"
        assert response.get_all("Sec-WebSocket-Protocol") == ["chat.v2"]
    async with client(ws_url(gateway)) as ws:
        assert ws.subprotocol is None


@pytest.mark.parametrize("status", [401, 403, 404, 429, 500])
async def test_upstream_refusal_is_relayed_with_status_headers_and_body(gateway: RunningServer, status: int) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with client(ws_url(gateway, f"/ws/refuse/{status}")):
            pass
    response = info.value.response
    assert response.status_code == status
    assert response.body == f"refused {status}".encode()
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="upstream"'
    assert response.headers["X-Refusal"] == "upstream said no"
    assert response.headers["Set-Cookie"] == "refused=1; Path=/"
    assert response.headers["Content-Type"] == "text/plain"


UPGRADE_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


async def test_upstream_redirect_is_relayed_not_followed(
    gateway: RunningServer, ws_recorder: WebSocketRecorder
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as http:  # a client that does not follow it
        response = await http.get("/ws/redirect", headers=UPGRADE_HEADERS)
    assert response.status_code == 302
    assert response.headers["location"] == "/ws/echo"
    assert [h["path"] for h in ws_recorder.handshakes] == ["/ws/redirect"]


async def test_unreachable_upstream_is_502() -> None:
    async with ws_gateway(f"http://127.0.0.1:{REFUSED_PORT}") as gateway:
        with pytest.raises(InvalidStatus) as info:
            async with client(ws_url(gateway)):
                pass
    response = info.value.response
    assert response.status_code == 502
    body = json.loads(response.body)
    assert body["error"] == "upstream_connect_error"
    assert body["request_id"] == response.headers["X-Request-Id"]


async def test_no_handshake_answer_within_the_connect_timeout_is_504() -> None:
    with stalled_upstream() as upstream:
        async with ws_gateway(upstream.url, timeouts={"connect": 0.3}) as gateway:
            started = anyio.current_time()
            with pytest.raises(InvalidStatus) as info:
                async with client(ws_url(gateway)):
                    pass
            elapsed = anyio.current_time() - started
    assert info.value.response.status_code == 504
    assert json.loads(info.value.response.body)["error"] == "upstream_timeout"
    assert 0.25 < elapsed < 3


async def test_invalid_upstream_handshake_answer_is_502() -> None:
    async with silent_upstream() as upstream, ws_gateway(upstream.url) as gateway:
        with pytest.raises(InvalidStatus) as info:
            async with client(ws_url(gateway, "/bad-accept")):
                pass
    assert info.value.response.status_code == 502
    assert json.loads(info.value.response.body)["error"] == "upstream_protocol_error"


async def test_client_leaving_during_the_upstream_handshake_is_logged_499(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "fastgate.access")
    with stalled_upstream() as upstream:
        async with ws_gateway(upstream.url, timeouts={"connect": 0.3}) as gateway:
            with anyio.move_on_after(0.1):  # the client gives up while the gateway waits for the upstream
                async with client(ws_url(gateway)):
                    pass
            with anyio.fail_after(5):
                while not any(" 499 " in r.getMessage() for r in caplog.records):  # noqa: ASYNC110 - log records
                    await anyio.sleep(0.02)
            assert not gateway.server.server_state.connections


async def _run_without_denial_extension(gateway: Gateway) -> list[dict[str, Any]]:
    """Run one handshake through ``gateway`` as an ASGI server without ``websocket.http.response`` would."""
    scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [],
        "subprotocols": [],
        "scheme": "ws",
        "client": ("127.0.0.1", 1234),
        "extensions": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    with anyio.fail_after(5):
        await gateway(scope, receive, send)
    return sent


async def test_without_the_denial_extension_errors_close_after_accept() -> None:
    """Under an ASGI server without ``websocket.http.response``, a failed dial is a close with its code."""
    gateway = Gateway(GatewayConfig.single(f"http://127.0.0.1:{REFUSED_PORT}"))
    async with gateway.lifespan():
        sent = await _run_without_denial_extension(gateway)
    assert sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 1014, "reason": "upstream_connect_error"},
    ]


async def test_websocket_without_a_route_is_refused_with_404(ws_upstream: RunningServer) -> None:
    config = build_config(
        {"upstreams": {"api": {"url": ws_upstream.url}}, "routes": [{"prefix": "/api", "upstream": "api"}]}
    )
    async with run_gateway(Gateway(config)) as gateway:
        with pytest.raises(InvalidStatus) as info:
            async with client(ws_url(gateway, "/elsewhere")):
                pass
        assert info.value.response.status_code == 404
        assert json.loads(info.value.response.body)["error"] == "route_not_found"
        async with client(ws_url(gateway, "/api/ws")) as ws:  # and a routed path works
            await ws.send("routed")
            assert await ws.recv() == "routed"


async def test_websocket_before_the_lifespan_is_refused_with_503(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder
) -> None:
    """As HTTP is: no upstream is dialed before the lifespan opened the gateway's upstreams."""
    async with run_gateway(Gateway(GatewayConfig.single(ws_upstream.url)), lifespan="off") as gateway:
        with pytest.raises(InvalidStatus) as info:
            async with client(ws_url(gateway)):
                pass
    response = info.value.response
    assert response.status_code == 503
    body = json.loads(response.body)
    assert (body["error"], body["detail"]) == ("upstream_unavailable", "gateway is not running")
    assert body["request_id"] == response.headers["X-Request-Id"]
    assert ws_recorder.handshakes == []
    # Under a server without the denial extension: accepted, then closed with 1013 (try again later).
    sent = await _run_without_denial_extension(Gateway(GatewayConfig.single(ws_upstream.url)))
    assert sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 1013, "reason": "upstream_unavailable"},
    ]
    assert ws_recorder.handshakes == []


# Messages


async def test_text_and_binary_frames_both_ways(gateway: RunningServer) -> None:
    async with client(ws_url(gateway)) as ws:
        messages: list[str | bytes] = ["hello", "", "ünïcødé ✓", b"\x00\x01\xff", b""]
        for message in messages:
            await ws.send(message)
            with anyio.fail_after(5):
                echoed = await ws.recv()
            assert echoed == message and type(echoed) is type(message)


async def test_fragmented_messages_are_relayed_whole(gateway: RunningServer) -> None:
    async with client(ws_url(gateway)) as ws:
        await ws.send(["frag-1 ", "frag-2 ", "frag-3"])  # one text message in three frames
        await ws.send([b"\x01\x02", b"\x03"])
        with anyio.fail_after(5):
            assert await ws.recv() == "frag-1 frag-2 frag-3"
            assert await ws.recv() == b"\x01\x02\x03"
    async with (
        misbehaving_ws_upstream() as upstream,
        ws_gateway(upstream.url) as gw,
        client(ws_url(gw, "/fragments")) as ws,
    ):
        await ws.send("upstream fragments this")  # the upstream answers in three frames
        with anyio.fail_after(5):
            assert await ws.recv() == "upstream fragments this"


async def test_1mb_messages_both_ways(gateway: RunningServer) -> None:
    binary = os.urandom(1024 * 1024)
    text = "é" * (512 * 1024)  # 1 MiB of UTF-8
    async with client(ws_url(gateway)) as ws:
        with anyio.fail_after(10):
            await ws.send(binary)
            assert await ws.recv() == binary
            await ws.send(text)
            assert await ws.recv() == text


async def test_1000_messages_arrive_in_order(gateway: RunningServer) -> None:
    count = 1000
    async with client(ws_url(gateway)) as ws:

        async def produce() -> None:
            for i in range(count):
                await ws.send(f"message {i}" if i % 2 else f"message {i}".encode())

        received: list[str | bytes] = []
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                for _ in range(count):
                    received.append(await ws.recv())
    assert received == [f"message {i}" if i % 2 else f"message {i}".encode() for i in range(count)]


def websockets_pin() -> SpecifierSet:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in dependencies if Requirement(d).name == "websockets"]
    return pin.specifier


def test_websockets_pin_requires_the_send_text_argument() -> None:
    """The relay sends a text message as its UTF-8 bytes with ``send(data, text=True)``, new in websockets 14.0."""
    assert "text" in inspect.signature(Connection.send).parameters
    assert not websockets_pin().contains("13.1")  # has no ``text`` argument
    assert websockets_pin().contains(websockets.__version__)


# Keep-alive and idle timeout


async def test_keepalive_pings_keep_an_idle_upstream_hop_open(ws_upstream: RunningServer) -> None:
    async with ws_gateway(ws_upstream.url, websocket={"ping_interval": 0.05, "ping_timeout": 0.5}) as gateway:
        async with client(ws_url(gateway)) as ws:
            await anyio.sleep(0.4)  # eight ping intervals of silence: pongs come back, nothing closes
            await ws.send("still there")
            with anyio.fail_after(5):
                assert await ws.recv() == "still there"
            assert await ws.ping() is not None  # the client hop answers pings too (Uvicorn's side)


async def test_unanswered_upstream_pings_close_the_client_with_1011() -> None:
    async with silent_upstream() as upstream:
        options = {"ping_interval": 0.1, "ping_timeout": 0.2, "close_timeout": 0.2}
        async with ws_gateway(upstream.url, websocket=options) as gateway:
            async with client(ws_url(gateway)) as ws:
                code, reason = await closed_with(ws)
    assert code == 1011
    assert reason == "keepalive ping timeout"


async def test_idle_timeout_closes_both_sides_with_1001(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder
) -> None:
    async with ws_gateway(ws_upstream.url, websocket={"idle_timeout": 0.3}) as gateway:
        async with client(ws_url(gateway)) as ws:
            for n in range(4):  # traffic keeps the session open past the idle timeout
                await anyio.sleep(0.15)
                await ws.send(f"tick {n}")
                assert await ws.recv() == f"tick {n}"
            started = anyio.current_time()
            code, reason = await closed_with(ws)
            waited = anyio.current_time() - started
    assert (code, reason) == (1001, "idle timeout")
    assert 0.2 < waited < 2
    assert await ws_recorder.wait_closed() == (1001, "idle timeout")


# Close codes


@pytest.mark.parametrize("code", [1000, 1001, 1008, 1011, 3000, 4000, 4999])
async def test_close_codes_pass_through_both_directions(
    gateway: RunningServer, ws_recorder: WebSocketRecorder, code: int
) -> None:
    # upstream -> client
    async with client(ws_url(gateway)) as ws:
        await ws.send(f"close:{code}:upstream says bye")
        assert await closed_with(ws) == (code, "upstream says bye")
    # client -> upstream
    ws_recorder.closed = anyio.Event()
    async with client(ws_url(gateway)) as ws:
        with anyio.fail_after(5):
            await ws_recorder.connected.wait()
            await ws.close(code, "client says bye")
    assert await ws_recorder.wait_closed() == (code, "client says bye")


def test_reserved_close_codes_are_mapped() -> None:
    assert client_close_code(1005) == 1000  # the upstream sent an empty close frame
    assert client_close_code(1006) == 1011  # the upstream dropped without one
    assert client_close_code(1015) == 1014
    assert upstream_close_code(1005) == 1000
    assert upstream_close_code(1006) == 1001  # the client dropped its connection
    for code in (1000, 1001, 1008, 1011, 1012, 1013, 1014, 3000, 4999):
        assert client_close_code(code) == code == upstream_close_code(code)


async def test_abnormal_upstream_drop_closes_client_with_1011() -> None:
    async with misbehaving_ws_upstream() as upstream, ws_gateway(upstream.url) as gateway:
        async with client(ws_url(gateway, "/drop")) as ws:
            await ws.send("drop now")
            code, _ = await closed_with(ws)
    assert code == 1011


async def test_upstream_protocol_violation_closes_client_with_1014() -> None:
    # The upstream ignores the close frame that fails its connection: it is dropped after the close timeout.
    async with silent_upstream() as upstream, ws_gateway(upstream.url, websocket={"close_timeout": 0.2}) as gateway:
        async with client(ws_url(gateway, "/garbage")) as ws:
            started = anyio.current_time()
            assert await closed_with(ws) == (1014, "upstream protocol error")
            assert anyio.current_time() - started < 2


async def test_client_drop_closes_upstream_with_1001(gateway: RunningServer, ws_recorder: WebSocketRecorder) -> None:
    async with client(ws_url(gateway)) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        ws.transport.abort()  # no close frame
    assert await ws_recorder.wait_closed() == (1001, "client went away")


async def test_close_to_a_client_that_stopped_reading_is_bounded_by_the_close_timeout(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder
) -> None:
    """The closing handshake is shielded from cancellation; without a deadline, a client whose TCP window stays full
    would hold the session's task (and a graceful shutdown) forever, and its upstream would never hear the close."""
    options = {"idle_timeout": 0.3, "close_timeout": 0.5}
    async with ws_gateway(ws_upstream.url, websocket=options) as gateway:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # a small window, fixed (no autotuning)
        sock.connect((gateway.host, gateway.port))
        async with client(ws_url(gateway), sock=sock) as ws:
            ws.transport.pause_reading()  # the client stops reading
            # Far more than the client's window and the gateway's socket buffer hold: the gateway's writes stall,
            # then the idle timeout ends the session and the gateway's close frame to the client waits behind them.
            await ws.send("big:12000000")
            assert await ws_recorder.wait_closed() == (1001, "idle timeout")
            await wait_until(lambda: not gateway.server.server_state.tasks)  # the session's task is over
            ws.transport.abort()


async def test_close_frame_between_fragments_closes_cleanly_autobahn_7_1_5(
    gateway: RunningServer, ws_recorder: WebSocketRecorder
) -> None:
    """RFC 6455 §5.4: a close frame may come between fragments; the client hop answers it (1000), not 1002."""
    with anyio.fail_after(5):
        async with await anyio.connect_tcp(gateway.host, gateway.port) as stream:
            head = "".join(f"{name}: {value}\r\n" for name, value in UPGRADE_HEADERS.items())
            await stream.send(f"GET /ws/echo HTTP/1.1\r\nHost: gateway\r\n{head}\r\n".encode())
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive()
            assert received.startswith(b"HTTP/1.1 101 ")
            await stream.send(close_between_fragments(mask=True))
            with contextlib.suppress(anyio.EndOfStream):
                while True:  # until the gateway closes the TCP connection
                    received += await stream.receive()
    frames = received.split(b"\r\n\r\n", 1)[1]
    assert frames == Frame(Opcode.CLOSE, Close(1000, "").serialize()).serialize(mask=False)  # the close, echoed
    assert await ws_recorder.wait_closed() == (1000, "")  # and the upstream is closed the same way


async def raw_session(gateway: RunningServer, *frames: bytes, then: Any = None) -> tuple[bytes, float]:
    """Open a session on a raw socket, send ``frames`` (and ``then(received)`` once a frame has arrived), read
    until the gateway closes the TCP connection; returns what arrived after the handshake and the seconds from
    the last frame sent to the end of the connection."""
    async with await anyio.connect_tcp(gateway.host, gateway.port) as stream:
        head = "".join(f"{name}: {value}\r\n" for name, value in UPGRADE_HEADERS.items())
        await stream.send(f"GET /ws/echo HTTP/1.1\r\nHost: gateway\r\n{head}\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            received += await stream.receive()
        assert received.startswith(b"HTTP/1.1 101 ")
        received = received.split(b"\r\n\r\n", 1)[1]
        for frame in frames:
            await stream.send(frame)
        sent_at = anyio.current_time()
        if then is not None:
            while not received:
                received += await stream.receive()
            await stream.send(then(received))
            sent_at = anyio.current_time()
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            while True:  # until the gateway closes the TCP connection
                received += await stream.receive()
        return received, anyio.current_time() - sent_at


async def test_client_close_handshake_closes_tcp_at_once(
    gateway: RunningServer, ws_recorder: WebSocketRecorder
) -> None:
    """The client closes after an echo (Autobahn's usual ending): the gateway answers the close and closes TCP at
    once, without waiting for the upstream side of the session to finish."""
    text = Frame(Opcode.TEXT, b"hello").serialize(mask=True)
    close = Frame(Opcode.CLOSE, Close(1000, "").serialize()).serialize(mask=True)
    with anyio.fail_after(10):
        received, closing = await raw_session(gateway, text, then=lambda _: close)
    echo = Frame(Opcode.TEXT, b"hello").serialize(mask=False)
    assert received == echo + Frame(Opcode.CLOSE, Close(1000, "").serialize()).serialize(mask=False)
    assert closing < 1.0, f"TCP closed {closing:.3f} s after the closing handshake"
    assert await ws_recorder.wait_closed() == (1000, "")


async def test_text_message_that_is_not_utf8_closes_with_1007_at_once_without_a_traceback(
    gateway: RunningServer, ws_recorder: WebSocketRecorder
) -> None:
    """Autobahn 6.x: the client's invalid UTF-8 fails the session with 1007 and the TCP connection is closed at once;
    one INFO line, no ERROR traceback (it is the client's error, and formatting it delayed the close under load)."""
    invalid = Frame(Opcode.TEXT, b"\xf8\x87\xbf\xbf\xbf").serialize(mask=True)
    logger = logging.getLogger("uvicorn.error")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with captured_logs("uvicorn.error") as logs, anyio.fail_after(10):
            received, closing = await raw_session(gateway, invalid)
    finally:
        logger.setLevel(level)
    assert received == Frame(Opcode.CLOSE, Close(1007, "invalid UTF-8").serialize()).serialize(mask=False)
    assert closing < 1.0, f"TCP closed {closing:.3f} s after the invalid message"
    assert not [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING or r.exc_info]
    assert len([r for r in logs.records if "not UTF-8" in r.getMessage()]) == 1
    assert await ws_recorder.wait_closed() == (1007, "invalid UTF-8")  # the upstream is told why


async def test_upstream_close_frame_between_fragments_closes_the_client_with_its_code() -> None:
    """The same on the upstream hop: the upstream's close (1000) reaches the client, not 1014 for a protocol error."""
    async with silent_upstream() as upstream, ws_gateway(upstream.url, websocket={"close_timeout": 0.2}) as gateway:
        async with client(ws_url(gateway, "/close-between-fragments")) as ws:
            assert await closed_with(ws) == (1000, "")
    assert close_code_of(upstream.received) == 1000  # the upstream's close frame, echoed; not failed with 1002


def test_websockets_pin_has_the_fragment_state_that_close_between_fragments_resets() -> None:
    """``fastgate._ws_frames`` resets websockets' ``Protocol.current_size``, so named since websockets 16.0."""
    assert ServerProtocol().current_size is None
    assert not websockets_pin().contains("15.0.1")  # ``cur_size`` there


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_leaked_tasks_or_sockets(ws_recorder: WebSocketRecorder, ws_upstream: RunningServer) -> None:
    async with (
        misbehaving_ws_upstream() as raw,
        ws_gateway(ws_upstream.url) as gateway,
        ws_gateway(raw.url) as raw_gateway,
    ):
        async with client(ws_url(gateway)) as ws:  # warm up lazily created objects
            await ws.send("warm")
            await ws.recv()
        await anyio.sleep(0.1)
        tasks_before, fds_before = len(asyncio.all_tasks()), _open_fds()

        for _ in range(5):
            async with client(ws_url(gateway)) as ws:  # the client closes
                await ws.send("x")
                await ws.recv()
            async with client(ws_url(gateway)) as ws:  # the upstream closes
                await ws.send("close:4000:done")
                await closed_with(ws)
            async with client(ws_url(gateway)) as ws:  # the client drops
                await ws.send("x")
                await ws.recv()
                ws.transport.abort()
            async with client(ws_url(raw_gateway, "/drop")) as ws:  # the upstream drops
                await ws.send("x")
                await closed_with(ws)
            with pytest.raises(InvalidStatus):  # the upstream refuses
                async with client(ws_url(gateway, "/ws/refuse/403")):
                    pass

        with anyio.fail_after(5):
            while (len(asyncio.all_tasks()), _open_fds()) != (tasks_before, fds_before):  # noqa: ASYNC110 - counts
                await anyio.sleep(0.02)
        assert not gateway.server.server_state.connections
        assert ws_recorder.open_sessions == 0


# Policy


async def test_message_above_max_size_closes_with_1009(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder
) -> None:
    async with ws_gateway(ws_upstream.url, websocket={"max_message_size": 1000}) as gateway:
        async with client(ws_url(gateway)) as ws:  # client -> upstream
            await ws.send("x" * 1000)
            assert await ws.recv() == "x" * 1000
            await ws.send(b"x" * 1001)
            code, reason = await closed_with(ws)
        assert code == 1009 and "1001 bytes" in (reason or "")
        assert (await ws_recorder.wait_closed())[0] == 1001
        async with client(ws_url(gateway)) as ws:  # upstream -> client
            await ws.send("big:1001")
            assert await closed_with(ws) == (1009, "upstream message too big")


async def test_origin_not_allowed_closes_with_1008(ws_upstream: RunningServer, ws_recorder: WebSocketRecorder) -> None:
    allowed = {"allowed_origins": ["https://app.example"]}
    async with ws_gateway(ws_upstream.url, websocket=allowed) as gateway:
        async with client(ws_url(gateway), origin="https://evil.example") as ws:
            assert await closed_with(ws) == (1008, "origin not allowed")
        assert ws_recorder.handshakes == []  # refused before dialing the upstream
        async with client(ws_url(gateway), origin="https://App.example") as ws:
            await ws.send("welcome")
            assert await ws.recv() == "welcome"
        async with client(ws_url(gateway)) as ws:  # no Origin: not a browser, no cross-site risk
            await ws.send("tool")
            assert await ws.recv() == "tool"


def test_fastgate_errors_map_to_close_codes() -> None:
    assert close_for(WebSocketException(1008, "origin not allowed")) == (1008, "origin not allowed")
    assert close_for(WebSocketException(1009)) == (1009, "")
    assert close_for(BadRequest("bad")) == (1008, "bad_request")
    assert close_for(RouteNotFound("none")) == (1008, "route_not_found")
    assert close_for(UpstreamUnavailable("circuit open")) == (1013, "upstream_unavailable")
    assert close_for(UpstreamTimeout("slow")) == (1013, "upstream_timeout")
    assert close_for(UpstreamConnectError("refused")) == (1014, "upstream_connect_error")
    refused = UpstreamRefused("no", "api", status=401, headers=[], body=b"")
    assert close_for(refused) == (1008, "upstream_refused")
    assert close_for(FastgateError("boom")) == (1011, "internal_error")
    assert close_for(RuntimeError("unexpected")) == (1011, "internal_error")
