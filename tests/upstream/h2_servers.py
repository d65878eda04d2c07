"""HTTP/2 peers for the upstream h2 client's tests: Hypercorn (h2c prior knowledge and h2 over TLS) serving a small
ASGI app, and a raw h2 server built on our codec for exact GOAWAY, REFUSED_STREAM and PING scenarios."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.abc
from hypercorn.asyncio import serve
from hypercorn.config import Config

from fastgate.http2 import codec
from tests.servers import answer_lifespan, bind_socket


@dataclass
class H2App:
    """``/echo`` (method, path, headers, body size as JSON), ``/big?size=N`` (N bytes in 64 KiB pieces),
    ``/upload`` (counts the body, answers the count), ``/trailers`` (a body and ``grpc-status``-like trailers),
    ``/hold`` (waits for ``release``; records a disconnect in ``disconnects``), ``/slow?delay=S``, ``/drip`` (1 KiB
    every 10 ms until the client goes, then recorded in ``disconnects``).

    ``clients`` records the client address of every request (one per connection: the connection count).
    """

    clients: list[tuple[str, int]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnects: list[str] = field(default_factory=list)
    holding: int = 0
    release: anyio.Event = field(default_factory=anyio.Event)
    sent: dict[str, int] = field(default_factory=dict)

    @property
    def connections(self) -> int:
        return len(set(self.clients))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        self.clients.append(tuple(scope["client"]))
        path = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        record = {
            "method": scope["method"],
            "path": path,
            "query": scope["query_string"].decode(),
            "http_version": scope["http_version"],
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
        }
        self.requests.append(record)
        if path == "/hold":
            self.holding += 1
            with anyio.move_on_after(30):
                async with anyio.create_task_group() as tg:

                    async def watch() -> None:
                        while (await receive())["type"] != "http.disconnect":
                            pass
                        self.disconnects.append(path)
                        tg.cancel_scope.cancel()

                    tg.start_soon(watch)
                    await self.release.wait()
                    tg.cancel_scope.cancel()
            if self.disconnects:
                return
            await _answer(send, 200, b"released")
            return
        if path == "/drip":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            async with anyio.create_task_group() as tg:

                async def drip() -> None:
                    with anyio.move_on_after(30):
                        while True:
                            await send({"type": "http.response.body", "body": b"d" * 1024, "more_body": True})
                            await anyio.sleep(0.01)

                tg.start_soon(drip)
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.disconnects.append(path)
                tg.cancel_scope.cancel()
            return
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects.append(path)
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        record["body_size"] = size
        if path == "/big":
            total = int(query.get("size", "0"))
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % total)]})
            piece = b"z" * 65536
            sent = 0
            try:
                while sent < total:
                    chunk = piece[: min(65536, total - sent)]
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    sent += len(chunk)
                    self.sent[query.get("id", "")] = sent
                await send({"type": "http.response.body", "body": b""})
            except Exception:
                self.disconnects.append(path)
            return
        if path == "/trailers":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain")],
                    "trailers": True,
                }
            )
            await send({"type": "http.response.body", "body": b"body before trailers", "more_body": False})
            await send(
                {
                    "type": "http.response.trailers",
                    "headers": [(b"grpc-status", b"0"), (b"x-checksum", b"abc")],
                    "more_trailers": False,
                }
            )
            return
        if path == "/slow":
            await anyio.sleep(float(query.get("delay", "1")))
        if path == "/upload":
            await _answer(send, 200, b"%d" % size)
            return
        await _answer(send, 200, json.dumps(record).encode(), [(b"content-type", b"application/json")])


async def _answer(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-length", b"%d" % len(body)), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class RunningH2:
    port: int
    app: Any
    stop: anyio.Event


@contextlib.asynccontextmanager
async def run_hypercorn(
    app: Any, *, certfile: str | None = None, keyfile: str | None = None, **options: Any
) -> AsyncIterator[RunningH2]:
    """Serve ``app`` with Hypercorn on 127.0.0.1 (a socket bound to port 0): h2c by prior knowledge, or h2 with TLS
    (ALPN) when a certificate is given. Hypercorn ``options`` go to its Config (``h2_max_concurrent_streams``...)."""
    sock = bind_socket()
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.loglevel = "WARNING"
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 2.0
    if certfile is not None:
        config.certfile = certfile
        config.keyfile = keyfile
    for key, value in options.items():
        setattr(config, key, value)
    stop = anyio.Event()
    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_serve, app, config, stop, done)
        await _wait_listening(sock.getsockname()[1])
        try:
            yield RunningH2(sock.getsockname()[1], app, stop)
        finally:
            stop.set()  # Hypercorn sends GOAWAY and closes within its graceful_timeout
            # wait for it, also when the block failed: Hypercorn does not take a cancellation well
            with anyio.CancelScope(shield=True), anyio.fail_after(15):
                await done.wait()
    with contextlib.suppress(OSError):  # Hypercorn closed the fd itself
        sock.close()


async def _serve(app: Any, config: Config, stop: anyio.Event, done: anyio.Event) -> None:
    try:
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    finally:
        done.set()


async def _wait_listening(port: int) -> None:
    with anyio.fail_after(10):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.01)
                continue
            await stream.aclose()
            return


# -- a raw h2 server on our codec ----------------------------------------------------------------------------------


@dataclass
class RawConnection:
    """One accepted connection of :class:`RawH2Server`: its codec, socket and what it saw."""

    index: int
    conn: codec.H2Connection
    stream: anyio.abc.SocketStream
    requests: list[int] = field(default_factory=list)
    pings: int = 0
    closed: anyio.Event = field(default_factory=anyio.Event)
    mute: bool = False  # write nothing more (PINGs go unanswered)
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def flush(self) -> None:
        async with self.lock:
            data = self.conn.data_to_send()
            if data and not self.mute:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await self.stream.send(data)

    async def goaway_only(self, last_stream_id: int, error_code: int = 0) -> None:
        """Write a GOAWAY frame (RFC 9113 §6.8) past this side's codec, which then still serves the open streams
        (``h2`` would refuse to send anything more after a GOAWAY of its own)."""
        frame = struct.pack(">I", 8)[1:] + b"\x07\x00" + struct.pack(">III", 0, last_stream_id, error_code)
        async with self.lock:
            await self.flush_locked()
            await self.stream.send(frame)

    async def flush_locked(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.mute:
            await self.stream.send(data)

    async def respond(self, stream_id: int, status: int = 200, body: bytes = b"ok") -> None:
        self.conn.send_headers(
            stream_id, [(b":status", b"%d" % status), (b"content-length", b"%d" % len(body))], end_stream=not body
        )
        if body:
            self.conn.send_data(stream_id, body, end_stream=True)
        await self.flush()


Handler = Callable[[RawConnection, int], Any]


@dataclass
class RawH2Server:
    port: int
    connections: list[RawConnection]


@contextlib.asynccontextmanager
async def run_raw_h2(on_request: Handler) -> AsyncIterator[RawH2Server]:
    """An h2c server (prior knowledge) calling ``await on_request(connection, stream_id)`` for each complete
    request (its HEADERS and body ended); ``connections`` fills as they come."""
    connections: list[RawConnection] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        conn = codec.server_connection(
            max_concurrent_streams=100, initial_window=65535, max_header_list=65536, max_frame=16384
        )
        raw = RawConnection(len(connections), conn, stream)
        connections.append(raw)
        conn.initiate_connection()
        await raw.flush()
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        data = await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        break
                    try:
                        events = conn.receive_data(data)
                    except codec.ProtocolError:
                        break  # (this side's codec after a GOAWAY of its own, say): the connection ends
                    for event in events:
                        if isinstance(event, codec.PingReceived):
                            raw.pings += 1
                        elif isinstance(event, codec.DataReceived):
                            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        elif isinstance(event, codec.StreamEnded):
                            raw.requests.append(event.stream_id)
                            tg.start_soon(on_request, raw, event.stream_id)
                    await raw.flush()
                tg.cancel_scope.cancel()
        finally:
            raw.closed.set()
            await stream.aclose()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield RawH2Server(port, connections)
        finally:
            tg.cancel_scope.cancel()
