"""One HTTP/2 stream as the exchange core's :class:`~fastgate.proxy.downstream.Downstream` (and, for an ASGI app,
its ``scope``/``receive``/``send``).

How this works
--------------
The connection (``http2/server.py``) feeds the stream: its DATA pieces land in ``chunks`` and wake the one reader.
Flow control is the point of the design: a piece is acknowledged to the codec (which then opens the client's
window) only when the core asks for the *next* piece, that is once the piece before has been written upstream
(the core's body relay waits for the upstream socket to drain before it reads again). A slow upstream therefore
slows its own stream, and the client's bytes buffered here never exceed the stream's window.

The response goes out as HEADERS, DATA and trailing HEADERS through the connection, which splits DATA by the
client's stream and connection windows and its largest frame; a stream waits for ``WINDOW_UPDATE`` when either
window is shut (bounded by ``send_timeout``: the connection's sweep resets a stream that waits longer). A head sent
with ``defer`` and an empty last body piece become one HEADERS frame with END_STREAM, which is how a gRPC
"Trailers-Only" answer is framed. RST_STREAM from the client is the disconnect: the exchange's cancel scope (the
stream task's) is cancelled, as for an HTTP/1.1 client that goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import anyio

from ..exceptions import ClientDisconnected
from ..proxy.disconnect import ConnectionScope
from ..proxy.paths import PATH_KEY

if TYPE_CHECKING:
    from .server import H2Server

# Response fields HTTP/2 forbids (RFC 9113 §8.2.2): connection-specific; the upstream's are dropped here.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
_STATUS = {code: b"%d" % code for code in range(100, 600)}
_NO_OPTIONS: dict[str, Any] = {}


class H2Stream:
    """One request on an HTTP/2 connection (see the module docstring)."""

    __slots__ = (
        "conn",
        "stream_id",
        "method",
        "target",
        "headers",
        "http_version",
        "scheme",
        "client",
        "matched_path",
        "disconnected",
        "on_disconnect",
        "chunks",
        "unacked",
        "more_body",
        "body_taken",
        "response_started",
        "response_complete",
        "reset",
        "window_since",
        "cancel_scope",
        "opened_at",
        "_scope",
        "_waiter",
        "_window",
        "_head",
        "_trailers",
        "_trailers_due",
        "_no_body",
    )

    def __init__(
        self,
        conn: H2Server,
        stream_id: int,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        more_body: bool,
    ) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = "2.0"  # the access line's "HTTP/2.0"; the ASGI scope says "2"
        self.scheme = conn.scheme
        self.client = conn.client
        self.matched_path: bytes | None = None
        self.disconnected = False
        self.on_disconnect: Callable[[], object] | None = None
        self.chunks: list[bytes] = []
        self.unacked = 0  # flow-controlled bytes handed to the core and not yet acknowledged
        self.more_body = more_body
        self.body_taken = not more_body
        self.response_started = False
        self.response_complete = False
        self.reset = False  # RST_STREAM sent or received: nothing more goes out on this stream
        self.window_since = 0.0  # loop time since when a send waits for the client's window (0: not waiting)
        self.cancel_scope: anyio.CancelScope | None = None  # the stream task's, while it runs
        self.opened_at = conn.loop.time()
        self._scope: dict[str, Any] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._window: asyncio.Future[None] | None = None
        self._head: list[tuple[bytes, bytes]] | None = None
        self._trailers = False
        self._trailers_due = False
        self._no_body = False

    # -- the request head ------------------------------------------------------------------------------------

    @property
    def raw_target(self) -> bytes:
        return self.target

    @property
    def path(self) -> str:
        path = self.target.partition(b"?")[0].decode("latin-1")
        return unquote(path) if "%" in path else path

    @property
    def offers_trailers(self) -> bool:
        return True  # trailing HEADERS (RFC 9113 §8.1)

    @property
    def write_paused(self) -> bool:
        return self.conn.write_paused

    @property
    def scope(self) -> dict[str, Any]:
        scope = self._scope
        if scope is None:
            self._scope = scope = self.conn.asgi_scope(self)
            if self.matched_path is not None:
                scope[PATH_KEY] = self.matched_path
        return scope

    def disconnect_scope(self, exchanges: set[Any]) -> ConnectionScope:
        """The exchange's cancellation: the stream task's own cancel scope, cancelled on RST_STREAM or when the
        connection goes."""
        scope = self.cancel_scope
        assert scope is not None, "the stream task sets its cancel scope before the exchange starts"
        return ConnectionScope(self, scope, exchanges)

    # -- fed by the connection -------------------------------------------------------------------------------

    def feed(self, data: bytes, flow_length: int) -> None:
        self.chunks.append(data)
        self.unacked += flow_length
        self._wake()

    def end_body(self) -> None:
        self.more_body = False
        self._wake()

    def lost(self) -> None:
        """RST_STREAM from the client, or the connection is gone: wake the core and cancel its exchange."""
        self.reset = True
        if not self.response_complete:
            self.disconnected = True
        self._wake()
        self.window_opened()
        callback, self.on_disconnect = self.on_disconnect, None
        if callback is not None and self.disconnected:
            callback()

    def window_opened(self) -> None:
        waiter = self._window
        if waiter is not None:
            self._window = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- the request body -----------------------------------------------------------------------------------

    async def read_body(self) -> tuple[bytes, bool]:
        """The DATA received since the last call, joined, and whether more follows; ClientDisconnected.

        The piece handed out last time has been written upstream by now: its bytes are acknowledged here, and the
        client may send as many more."""
        if self.unacked:
            self.conn.acknowledge(self)
        while not self.chunks and self.more_body and not self.disconnected:
            self._waiter = self.conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.disconnected:
            raise ClientDisconnected("client reset the stream during the request body")
        chunks = self.chunks
        body = (chunks[0] if len(chunks) == 1 else b"".join(chunks)) if chunks else b""
        chunks.clear()
        self.body_taken = not self.more_body
        if self.body_taken and self.unacked:
            self.conn.acknowledge(self)  # the last piece: nothing more will come, the connection window reopens
        return body, self.more_body

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``."""
        if self.body_taken and not self.chunks:
            while not self.disconnected and not self.response_complete:
                self._waiter = self.conn.loop.create_future()
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
        fields = [(b":status", _STATUS.get(status) or b"%d" % status)]
        defaults = self.conn.server_state.default_headers
        for name, value in (*defaults, *headers) if defaults else headers:
            name = name.lower()
            if name in CONNECTION_SPECIFIC:
                continue
            if value.find(b"\n") >= 0 or value.find(b"\r") >= 0 or value.find(b"\0") >= 0 or not name:
                raise RuntimeError("Invalid HTTP header name or value.")
            fields.append((name, value))
        self.response_started = True
        self._trailers = trailers
        self._no_body = self.method == "HEAD" or status in (204, 304)
        if defer:
            self._head = fields
        else:
            self.conn.send_headers(self, fields, False)

    async def send_body(self, data: bytes, more: bool) -> None:
        if self.disconnected:
            return
        if not self.response_started or self.response_complete or self._trailers_due:
            raise RuntimeError("Unexpected response body: the response has not started, or has ended.")
        if self._no_body:
            data = b""
        end = not more and not self._trailers
        if self._head is not None and not data and not more and self._trailers:
            # No body at all and trailers to come: the head waits for them, so that a response the upstream sent as
            # one HEADERS frame (gRPC's Trailers-Only) goes out as one too (send_trailers).
            self._trailers_due = True
            return
        head, self._head = self._head, None
        if head is not None:
            self.conn.send_headers(self, head, end and not data)
            if end and not data:
                self._complete()
                return
        if data:
            await self.conn.send_data(self, data, end)
            if self.reset:  # the client reset the stream, or the connection went, while we waited for its window
                return
        elif end:
            self.conn.end_stream(self)
        if not more:
            if self._trailers:
                self._trailers_due = True
            else:
                self._complete()

    async def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        if self.disconnected:
            return
        if not self._trailers_due:
            raise RuntimeError("Unexpected response trailers: the body has not ended, or none were announced.")
        self._trailers_due = False
        head, self._head = self._head, None
        if head is not None:  # a response without body (above)
            if not fields:
                self.conn.send_headers(self, head, True)  # Trailers-Only, relayed as it came
                self._complete()
                return
            self.conn.send_headers(self, head, False)
        out: list[tuple[bytes, bytes]] = []
        for name, value in fields:
            name = name.lower()
            if name in CONNECTION_SPECIFIC or name[:1] == b":":
                continue
            if value.find(b"\n") >= 0 or value.find(b"\r") >= 0 or value.find(b"\0") >= 0 or not name:
                raise RuntimeError("Invalid HTTP trailer name or value.")
            out.append((name, value))
        if out:
            self.conn.send_headers(self, out, True)
        else:
            self.conn.end_stream(self)
        self._complete()

    async def send(self, message: Any) -> None:
        """ASGI ``send``."""
        kind = message["type"]
        if kind == "http.response.start":
            await self.send_head(
                message["status"],
                message.get("headers", ()),
                trailers=message.get("trailers", False),
                defer=message.get("fastgate.defer", False),
            )
        elif kind == "http.response.body":
            await self.send_body(message.get("body", b""), message.get("more_body", False))
        elif kind == "http.response.trailers":
            if message.get("more_trailers", False):
                raise RuntimeError("more_trailers is not supported over HTTP/2 by fastgate")
            await self.send_trailers(list(message.get("headers", ())))
        elif not self.disconnected:
            raise RuntimeError(f"Unexpected ASGI message '{kind}'.")

    async def wait_window(self) -> None:
        """Until the client opens a window (WINDOW_UPDATE, SETTINGS) or the stream ends."""
        if self.window_since == 0.0:
            self.window_since = self.conn.loop.time()
        self._window = waiter = self.conn.loop.create_future()
        try:
            await waiter
        finally:
            self._window = None
            self.window_since = 0.0

    def _complete(self) -> None:
        self.response_complete = True
        self._wake()

    def abort(self) -> None:
        """Cut the response off: RST_STREAM, so the client sees it incomplete."""
        self.disconnected = True
        self._head = None
        self.conn.reset_stream(self)
