"""One request on a client connection: its ASGI ``receive``/``send`` and the hooks the proxy uses.

How this works
--------------
The connection (``serving/protocol.py``) parses bytes and fills the cycle: body pieces land in ``chunks`` as the
socket delivered them (no growing buffer: on a 64 MiB upload that copy was over half the CPU), and the one waiter
in ``receive()`` is woken. Above ``HIGH_WATER`` buffered bytes the connection stops reading the socket until the
app has taken them, so an upload costs bounded memory whatever its size.

``send()`` writes the response. It does what Uvicorn's does (framing, keep-alive, the same RuntimeErrors for a
misbehaving app) for a fraction of the cost: header lines are checked for CR/LF injection with one count over the
finished head instead of two regex searches per header, and a start message carrying ``"fastgate.defer": True``
is held back and written with the first body message, so a small response costs one write. HTTP/1.0 clients never
get chunked (RFC 9112 §6.3 (8)): a body of unknown length is sent close-delimited.

Trailers (ASGI's HTTP Trailers extension, offered to HTTP/1.1 requests): a start message with ``"trailers": True``
holds the end of a chunked body back until the ``http.response.trailers`` message(s), whose fields go out in the
last chunk's trailer section (RFC 9112 §7.1.2), checked for CR/LF as the head is. A response that is not chunked
(a Content-Length, a HEAD, an HTTP/1.0 client) has nowhere to put them: they are dropped and the response ends.

The cycle is also the ``fastgate.server`` extension (:class:`ServerHooks`): the raw request target, a disconnect
callback run by the connection the moment the client goes (so an exchange needs no watcher task), and ``abort()``
to cut the client off when the upstream dies mid-body (the client then sees an incomplete response), and
``write_paused``, which the proxy's read-ahead watches (``proxy/readahead.py``).
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from ..exceptions import ClientDisconnected
from ..proxy.disconnect import ConnectionScope, HookScope
from ..proxy.paths import PATH_KEY

if TYPE_CHECKING:
    from .protocol import HttpProtocol

HIGH_WATER = 64 * 1024
# A response chunk this size or larger goes to the transport as it came from the upstream, its chunk framing written
# around it in the same writev; a smaller one is joined with its framing (one buffer is cheaper than three there).
JOIN_BELOW = 4096


class ServerHooks(Protocol):
    """What ``scope["extensions"]["fastgate.server"]`` offers the proxy under fastgate's server."""

    loop: asyncio.AbstractEventLoop
    raw_target: bytes
    disconnected: bool
    on_disconnect: Callable[[], object] | None

    @property
    def write_paused(self) -> bool:
        """Whether the client's transport holds more than its high-water mark (a send would wait)."""
        ...

    def abort(self) -> None: ...


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase)


STATUS_LINES = {code: _status_line(code) for code in range(100, 600)}


class RequestCycle:
    """One request on a connection. It is the exchange core's :class:`~fastgate.proxy.downstream.Downstream` (the
    HTTP/1.1 driver: head as parsed, body pieces as received, response as bytes) and, for an ASGI app, its
    ``receive``/``send`` (thin wrappers over the same methods) with ``scope``."""

    __slots__ = (
        "conn",
        "loop",
        "method",
        "target",
        "headers",
        "http_version",
        "scheme",
        "client",
        "matched_path",
        "keep_alive",
        "expect_100",
        "disconnected",
        "on_disconnect",
        "chunks",
        "buffered",
        "more_body",
        "body_bytes",
        "body_since",
        "body_taken",
        "response_started",
        "response_complete",
        "_scope",
        "_waiter",
        "_chunked",
        "_remaining",
        "_close_delimited",
        "_no_body",
        "_head",
        "_trailers",
        "_trailers_due",
        "_trailer_parts",
    )

    def __init__(
        self,
        conn: HttpProtocol,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
        keep_alive: bool,
        scope: dict[str, Any] | None = None,
    ) -> None:
        self.conn = conn
        self.loop = conn.loop
        self.method = method
        self.target = target  # the raw request target, byte for byte
        self.headers = headers
        self.http_version = http_version
        self.scheme = conn.scheme
        self.client = conn.client
        self.matched_path: bytes | None = None
        self._scope = scope  # an ASGI app's (built by the connection); for the gateway, only if a plugin asks
        self.keep_alive = keep_alive
        self.expect_100 = False
        self.disconnected = False
        self.on_disconnect: Callable[[], object] | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.more_body = True
        self.body_bytes = 0
        # The body-rate clock (loop time): from when the request is served, or, with 100-continue, from our
        # "100 Continue" (the client waits for it); 0 until then.
        self.body_since = 0.0
        self.body_taken = False  # the app has had the last body message
        self.response_started = False
        self.response_complete = False
        self._waiter: asyncio.Future[None] | None = None
        self._chunked = False
        self._remaining = 0
        self._close_delimited = False
        self._no_body = False
        self._head: bytes | None = None
        # _trailers (the app said it will send trailers) is set by _start, _trailer_parts (the trailer section
        # being built) when the body ends: neither is read before.
        self._trailers_due = False  # the body has ended: only http.response.trailers may come

    # -- the request head, as the exchange core reads it ------------------------------------------------------

    @property
    def raw_target(self) -> bytes:
        """``ServerHooks.raw_target``: the request target as sent."""
        return self.target

    @property
    def path(self) -> str:
        """The target's path, percent-decoded (as ASGI's ``scope["path"]``)."""
        path = self.target.partition(b"?")[0].decode("latin-1")
        return unquote(path) if "%" in path else path

    @property
    def offers_trailers(self) -> bool:
        return self.http_version == "1.1"  # a chunked response can carry trailers (an HTTP/1.0 client never gets one)

    @property
    def scope(self) -> dict[str, Any]:
        """The request as an ASGI scope: an ASGI app's, or, for the gateway's plugins that read one, built now."""
        scope = self._scope
        if scope is None:
            self._scope = scope = self.conn.asgi_scope(self)
            if self.matched_path is not None:
                scope[PATH_KEY] = self.matched_path
        return scope

    # -- fed by the connection ------------------------------------------------------------------------------

    def feed(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self.body_bytes += len(body)
        if self.buffered > HIGH_WATER:
            self.conn.pause_reading()
        self.wake()

    def end_body(self) -> None:
        self.more_body = False
        if self._waiter is not None:
            self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None  # woken once: later wakes before the app resumes cost a test, not a call
            if not waiter.done():
                waiter.set_result(None)

    def lost(self) -> None:
        """The client is gone: wake the app and run the disconnect callback once."""
        if not self.response_complete:
            self.disconnected = True
        self.wake()
        callback, self.on_disconnect = self.on_disconnect, None
        if callback is not None and self.disconnected:
            callback()

    @property
    def write_paused(self) -> bool:
        return self.conn.write_paused

    def abort(self) -> None:
        self.disconnected = True
        self._head = None
        self.conn.abort()

    def disconnect_scope(self, exchanges: set[Any]) -> HookScope | ConnectionScope:
        """The exchange's cancellation, run from ``connection_lost`` (no watcher task): the connection task's cancel
        scope when the gateway's handler is driven directly, else a cancel scope of the exchange's own (ASGI)."""
        scope = self.conn.cancel_scope
        if scope is not None:
            return ConnectionScope(self, scope, exchanges)
        return HookScope(self, exchanges)

    # -- the request body -----------------------------------------------------------------------------------

    async def read_body(self) -> tuple[bytes, bool]:
        """The body pieces received since the last call, joined, and whether more follows; ClientDisconnected."""
        if self.body_since == 0.0:
            self.body_since = self.loop.time()
            if self.expect_100 and self.more_body and not self.response_started and not self.disconnected:
                self.expect_100 = False
                self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while not self.chunks and self.more_body and not self.disconnected and not self.response_complete:
            self.conn.resume_reading()
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.disconnected or (self.response_complete and not self.chunks):
            raise ClientDisconnected("client disconnected during the request body")
        chunks = self.chunks
        body = (chunks[0] if len(chunks) == 1 else b"".join(chunks)) if chunks else b""
        chunks.clear()
        self.body_taken = not self.more_body
        self.buffered = 0
        self.conn.resume_reading()
        return body, self.more_body

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``."""
        if self.body_taken and not self.chunks and not self.more_body:
            # The body was all taken: what is left to say is that the client went, once it does.
            while not self.disconnected and not self.response_complete:
                self._waiter = self.loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            return {"type": "http.disconnect"}
        try:
            body, more = await self.read_body()
        except ClientDisconnected:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": body, "more_body": more}

    # -- the response ---------------------------------------------------------------------------------------

    async def send_head(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], *, trailers: bool = False, defer: bool = False
    ) -> None:
        if self.conn.write_paused and not self.disconnected:
            await self.conn.drain()
        if self.disconnected:
            return
        if self.response_started:
            raise RuntimeError("Unexpected response start, after the response already started.")
        self._start(status, headers, trailers, defer)

    async def send_body(self, data: bytes, more: bool) -> None:
        if self.conn.write_paused and not self.disconnected:
            await self.conn.drain()
        if self.disconnected:
            return
        if not self.response_started or self.response_complete or self._trailers_due:
            raise RuntimeError("Unexpected response body: the response has not started, or has ended.")
        self._body(data, more)

    async def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        if self.disconnected:
            return
        if not self._trailers_due:
            raise RuntimeError("Unexpected response trailers: the body has not ended, or none were announced.")
        self._trailer_section(fields, False)

    async def send(self, message: Any) -> None:
        """ASGI ``send``."""
        conn = self.conn
        if conn.write_paused and not self.disconnected:
            await conn.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self._start(
                message["status"],
                message.get("headers", ()),
                message.get("trailers", False),
                message.get("fastgate.defer", False),
            )
        elif self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")
        elif kind != "http.response.body" or self._trailers_due:
            if self._trailers_due and kind == "http.response.trailers":
                self._trailer_section(message.get("headers", ()), message.get("more_trailers", False))
            else:
                expected = "http.response.trailers" if self._trailers_due else "http.response.body"
                raise RuntimeError(f"Expected ASGI message '{expected}', but got '{kind}'.")
        else:
            self._body(message.get("body", b""), message.get("more_body", False))

    def _start(self, status: int, headers: Iterable[tuple[bytes, bytes]], trailers: bool, defer: bool) -> None:
        parts = [STATUS_LINES.get(status) or _status_line(status)]
        length: int | None = None
        chunked = False
        has_close = False
        count = 0
        defaults = self.conn.server_state.default_headers  # Server and Date: none under fastgate run
        for name, value in (*defaults, *headers) if defaults else headers:
            name = name.lower()
            if name == b"content-length":
                if length is None and not chunked:
                    length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower() == b"chunked"
            elif name == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
                self.keep_alive = False
                has_close = True
            parts += (name, b": ", value, b"\r\n")
            count += 1
        self._no_body = self.method == "HEAD" or status in (204, 304) or status < 200
        if chunked:
            self._chunked = True
        elif length is not None or self._no_body:
            self._remaining = length or 0
        elif self.http_version == "1.0":
            # RFC 9112 §6.3 (8): no chunked for an HTTP/1.0 client; the body ends when the connection closes.
            self._close_delimited = True
            self.keep_alive = False
        else:
            self._chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
            count += 1
        if self.more_body and not self.disconnected:
            # The body was not read to its end: the next request cannot be found on this connection.
            self.keep_alive = False
        if not self.keep_alive and not has_close:
            parts.append(b"connection: close\r\n")
            count += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        if head.count(b"\n") != count + 2 or head.count(b"\r") != count + 2 or head.find(b"\0") >= 0:
            raise RuntimeError("Invalid HTTP header name or value.")
        self.response_started = True
        self.expect_100 = False
        self._trailers: bool = trailers
        if defer:
            self._head = head
        else:
            self.conn.write(head)

    def _body(self, body: bytes, more: bool) -> None:
        framed: tuple[bytes, ...] | None = None  # a large chunk: the framing written around it, the body not copied
        if self._no_body:
            data = b""
        elif self._chunked:
            end = b"0\r\n\r\n" if not more and not self._trailers else b""
            if not body:
                data = end
            elif len(body) < JOIN_BELOW:
                data = b"".join((b"%x\r\n" % len(body), body, b"\r\n", end))
            else:
                data = b""
                framed = (b"%x\r\n" % len(body), body, b"\r\n" + end)
        else:
            data = body
            if not self._close_delimited:
                if len(body) > self._remaining:
                    raise RuntimeError("Response content longer than Content-Length")
                self._remaining -= len(body)
        head, self._head = self._head, None
        if framed is not None:
            conn = self.conn
            if not conn.closed:
                conn.transport.writelines(framed if head is None else (head, *framed))
        elif head is not None:
            conn = self.conn
            if not conn.closed:
                conn.transport.writelines((head, data))  # conn.writelines(head, data), inline
        elif data:
            self.conn.write(data)
        if not more:
            if self._remaining and not self._no_body and not self._close_delimited:
                raise RuntimeError("Response content shorter than Content-Length")
            if self._trailers:
                self._trailers_due = True
                self._trailer_parts: list[bytes] = [b"0\r\n"]
                return
            self.response_complete = True
            if self._waiter is not None:
                self.wake()
            self.conn.response_done(self)

    def _trailer_section(self, fields: Any, more: bool) -> None:
        if self._chunked and not self._no_body:
            parts = self._trailer_parts
            for name, value in fields:
                parts += (name.lower(), b": ", value, b"\r\n")
            if more:
                return
            parts.append(b"\r\n")
            section = b"".join(parts)
            lines = (len(parts) - 2) // 4 + 2
            if section.count(b"\n") != lines or section.count(b"\r") != lines or section.find(b"\0") >= 0:
                raise RuntimeError("Invalid HTTP trailer name or value.")
            self.conn.write(section)
        elif more:
            return
        self._trailers_due = False
        self.response_complete = True
        if self._waiter is not None:
            self.wake()
        self.conn.response_done(self)
