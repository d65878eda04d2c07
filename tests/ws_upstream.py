"""WebSocket upstreams that tests put fastgate in front of. Each records what it received and saw happen.

``WebSocketUpstreamApp`` is an ASGI app, served by Uvicorn (websockets-sansio) like a real service:

/ws/echo ...            accepts (choosing ``chat.v2`` when offered, else the first offered subprotocol) with two
                        Set-Cookie and an X-Upstream header, then echoes every message. Text commands:
                        ``close:CODE:REASON`` closes with that code and reason, ``handshake`` answers with the
                        handshake it saw as JSON, ``big:N`` sends N bytes. Any path that is not below is echo.
/ws/refuse/STATUS       refuses with STATUS through the denial-response extension: a WWW-Authenticate, an
                        X-Refusal and a Set-Cookie header and the body ``refused STATUS``
/ws/redirect            refuses with a 302 to /ws/echo

``misbehaving_ws_upstream()`` is the websockets library's own server, for what an ASGI app cannot do:

/drop                   aborts the TCP connection, without a close frame, on the first message
/fragments              answers each text message with the same text sent as three fragments

``silent_upstream()`` completes the handshake and then never answers anything, pings and close frames
included, nor closes the connection; on /garbage it first writes a frame with a reserved opcode (a protocol
violation), on /close-between-fragments it sends the first fragment of a text message, a close frame (1000) and
the last fragment (Autobahn's case 7.1.5, RFC 6455 §5.4), on /bad-accept its handshake answer carries the wrong
Sec-WebSocket-Accept.
``stalled_upstream()`` accepts TCP connections and never answers the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Close, Frame, Opcode
from websockets.utils import accept_key

from fastgate._types import Receive, Scope, Send
from tests.servers import answer_lifespan, bind_socket


def close_code_of(frame: bytes) -> int:
    """The code of the masked close frame (a client's) at the start of ``frame``."""
    assert frame[0] == 0x88 and frame[1] & 0x80, frame  # FIN + close, masked
    mask, payload = frame[2:6], frame[6 : 6 + (frame[1] & 0x7F)]
    return int.from_bytes(bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload[:2])))


def close_between_fragments(*, mask: bool) -> bytes:
    """Autobahn's case 7.1.5 on the wire: a text fragment, a close frame with 1000, then the final fragment."""
    frames = [
        Frame(Opcode.TEXT, b"fragment1", fin=False),
        Frame(Opcode.CLOSE, Close(1000, "").serialize()),
        Frame(Opcode.CONT, b"fragment2"),
    ]
    return b"".join(frame.serialize(mask=mask) for frame in frames)


@dataclass
class WebSocketRecorder:
    handshakes: list[dict[str, Any]] = field(default_factory=list)
    closes: list[tuple[int, str]] = field(default_factory=list)
    connected: anyio.Event = field(default_factory=anyio.Event)
    closed: anyio.Event = field(default_factory=anyio.Event)
    open_sessions: int = 0

    def header(self, name: str, index: int = -1) -> list[str]:
        return [v for k, v in self.handshakes[index]["headers"] if k == name]

    async def wait_closed(self, seconds: float = 5) -> tuple[int, str]:
        with anyio.fail_after(seconds):
            await self.closed.wait()
        return self.closes[-1]


class WebSocketUpstreamApp:
    def __init__(self, recorder: WebSocketRecorder) -> None:
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "websocket":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"websockets only"})
            return
        handshake = {
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "subprotocols": scope["subprotocols"],
        }
        self.recorder.handshakes.append(handshake)
        assert (await receive())["type"] == "websocket.connect"
        path: str = scope["path"]
        if path.startswith("/ws/refuse/"):
            status = int(path.rsplit("/", 1)[1])
            headers = [
                (b"www-authenticate", b'Bearer realm="upstream"'),
                (b"x-refusal", b"upstream said no"),
                (b"set-cookie", b"refused=1; Path=/"),
                (b"content-type", b"text/plain"),
            ]
            await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": f"refused {status}".encode()})
            return
        if path == "/ws/redirect":
            headers = [(b"location", b"/ws/echo"), (b"content-length", b"0")]
            await send({"type": "websocket.http.response.start", "status": 302, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": b""})
            return
        await self._echo(scope, receive, send, handshake)

    async def _echo(self, scope: Scope, receive: Receive, send: Send, handshake: dict[str, Any]) -> None:
        offered: list[str] = scope["subprotocols"]
        accept: dict[str, Any] = {
            "type": "websocket.accept",
            "headers": [(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; HttpOnly"), (b"x-upstream", b"yes")],
        }
        if offered:
            accept["subprotocol"] = "chat.v2" if "chat.v2" in offered else offered[0]
        await send(accept)
        self.recorder.open_sessions += 1
        self.recorder.connected.set()
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    self.recorder.closes.append((message.get("code", 1005), message.get("reason") or ""))
                    self.recorder.closed.set()
                    return
                text = message.get("text")
                if text is not None and text.startswith("close:"):
                    _, code, reason = text.split(":", 2)
                    await send({"type": "websocket.close", "code": int(code), "reason": reason})
                    return
                if text == "handshake":
                    await send({"type": "websocket.send", "text": json.dumps(handshake)})
                elif text is not None and text.startswith("big:"):
                    await send({"type": "websocket.send", "bytes": b"x" * int(text[4:])})
                elif text is not None:
                    await send({"type": "websocket.send", "text": text})
                else:
                    await send({"type": "websocket.send", "bytes": message["bytes"]})
        finally:
            self.recorder.open_sessions -= 1


@dataclass
class RawUpstream:
    host: str
    port: int
    received: bytearray = field(default_factory=bytearray)  # silent_upstream(): the bytes after the handshake

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


async def _raw_handler(connection: ServerConnection) -> None:
    assert connection.request is not None
    path = connection.request.path
    async for message in connection:
        if path == "/drop":
            connection.transport.abort()
            return
        if path == "/fragments":
            text = str(message)
            third = max(1, len(text) // 3)
            await connection.send([text[:third], text[third : 2 * third], text[2 * third :]])
        else:
            await connection.send(message)


@contextlib.asynccontextmanager
async def misbehaving_ws_upstream() -> AsyncIterator[RawUpstream]:
    """The websockets library's server on 127.0.0.1, for upstreams that misbehave (see the module docstring)."""
    sock = bind_socket()
    async with serve(_raw_handler, sock=sock, compression=None, ping_interval=None, close_timeout=1):
        yield RawUpstream("127.0.0.1", sock.getsockname()[1])


@contextlib.asynccontextmanager
async def silent_upstream() -> AsyncIterator[RawUpstream]:
    """Completes the WebSocket handshake, then reads and never answers: no pong, no close."""

    writers: set[asyncio.StreamWriter] = set()
    upstream = RawUpstream("127.0.0.1", 0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            if head.startswith(b"GET /bad-accept "):
                key = "not the client's key"
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
            )
            if head.startswith(b"GET /garbage "):
                writer.write(b"\x83\x00")  # FIN + reserved opcode 0x3, empty payload: a protocol violation
            if head.startswith(b"GET /close-between-fragments "):
                writer.write(close_between_fragments(mask=False))
            while data := await reader.read(65536):
                upstream.received += data
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    upstream.port = server.sockets[0].getsockname()[1]
    try:
        yield upstream
    finally:
        server.close()
        for writer in list(writers):
            writer.transport.abort()
        await server.wait_closed()


@contextlib.contextmanager
def stalled_upstream() -> Any:
    """A port whose connections the kernel completes (listen backlog) but nobody ever reads or answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield RawUpstream("127.0.0.1", sock.getsockname()[1])
