"""One HTTP/1.1 connection to an upstream, as an ``asyncio.Protocol`` with httptools (llhttp) parsing.

How this works
--------------
A connection carries one exchange at a time. ``start()`` writes the request head and arms a fresh response
parser; the caller then writes the body (``write`` / ``drain``), waits for the response head (``wait_head``) and
pulls body chunks (``read``). Everything the event loop tells us (bytes, EOF, loss, write pressure) lands in
plain attributes and wakes the single waiter future, so the hot path costs one future per wait and no task.

* Flow control: body bytes queue in ``_chunks``; above ``HIGH_WATER`` we stop reading from the socket, and
  resume once the consumer has taken them. Upstream writes wait in ``drain`` while the socket buffer is full.
  Memory per connection is therefore bounded whatever the body size.
* Timeouts: the caller sets ``deadline`` (loop time) before waiting; the pool's sweeper fails connections whose
  deadline passed. No timer per request.
* Failure: ``fail(exc)`` aborts the socket and makes the current or next wait raise ``exc``. A connection that
  closes before the response is complete fails with :class:`UpstreamProtocolError`; one whose response has no
  framing (no Content-Length, not chunked) ends cleanly at EOF, as RFC 9112 §6.3 says.
* Reuse: the pool takes the connection back only when the response was complete, both sides allowed keep-alive
  and nothing is left unread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import httptools

from ..exceptions import UpstreamProtocolError

HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024


class Connection(asyncio.Protocol):
    def __init__(self, upstream: str, loop: asyncio.AbstractEventLoop, *, target: str = "") -> None:
        self.upstream = upstream
        self.target = target
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.requests = 0
        self.idle_since = 0.0
        self.deadline = 0.0
        self.waiting_for = ""
        self.armed_timeout = 0.0
        self.keep_alive = False
        self.head_done = False
        self.complete = False
        self.received_any = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._parser: Any = None
        self._in_exchange = False
        self._no_body = False
        self._framed = False
        self._informational = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self._in_exchange else "idle")
        return f"<Connection {self.upstream} {state} requests={self.requests}>"

    # -- the exchange, used by the transport ----------------------------------------------------------------

    def start(self, head: bytes, *, no_body: bool) -> None:
        """Write a request head and get ready for its response. ``no_body``: the request was HEAD."""
        if self.closed or self.transport is None:
            raise UpstreamProtocolError("connection closed by upstream before the request", self.upstream, self.target)
        self.requests += 1
        self._in_exchange = True
        self._no_body = no_body
        self.head_done = self.complete = self.received_any = self._informational = self._framed = False
        self.status = 0
        self.headers = []
        self._exc = None
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(head)

    def write(self, data: bytes) -> None:
        if self._exc is not None:
            raise self._exc
        if self.closed or self.transport is None:
            raise UpstreamProtocolError(
                "connection closed by upstream while sending the body", self.upstream, self.target
            )
        self.transport.write(data)

    async def drain(self, limit: float | None) -> None:
        if not self._write_paused or self.closed:
            return
        self._arm(limit, "write progress")
        self._drain_waiter = self.loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None
            self.deadline = 0.0
        if self._exc is not None:
            raise self._exc

    async def wait_head(self, limit: float | None) -> None:
        self._arm(limit, "response headers")
        while not self.head_done:
            if self._exc is not None:
                raise self._exc
            await self._wait()
        self.deadline = 0.0

    async def read(self, idle_timeout: float | None) -> bytes:
        """Next piece of the response body, or ``b""`` at its end."""
        while True:
            chunks = self._chunks
            if chunks:
                # One piece at a time, as the socket delivered it: joining would copy every byte once more.
                data = chunks.popleft()
                self._buffered -= len(data)
                if self._reading_paused and self._buffered <= LOW_WATER and self.transport is not None:
                    self._reading_paused = False
                    if not self.closed:
                        self.transport.resume_reading()
                return data
            if self._exc is not None:
                raise self._exc
            if self.complete:
                return b""
            if idle_timeout:
                self._arm(idle_timeout, "response body data")
            await self._wait()

    def read_buffered(self) -> tuple[bytes, bool]:
        """What the body has buffered right now, without waiting, and whether that is all of it."""
        chunks = self._chunks
        if not chunks:
            return b"", self.complete and self._exc is None
        if self._reading_paused:
            return b"", False  # a big body in flight: let read() take it and resume the socket
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return data, self.complete and self._exc is None

    def finish(self) -> bool:
        """End the exchange; True when the connection may serve another request."""
        self._in_exchange = False
        self.deadline = 0.0
        reusable = self.complete and self.keep_alive and not self.closed and self._exc is None
        self._parser = None
        self._chunks.clear()
        self._buffered = 0
        return reusable

    def fail(self, exc: BaseException) -> None:
        """Abort the socket; the pending or next wait raises ``exc``."""
        if self._exc is None:
            self._exc = exc
        self.close(abort=True)
        self._wake()

    def close(self, abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                if abort:
                    self.transport.abort()
                else:
                    self.transport.close()

    def _arm(self, timeout: float | None, waiting_for: str) -> None:
        self.deadline = self.loop.time() + timeout if timeout else 0.0
        self.waiting_for = waiting_for
        self.armed_timeout = timeout or 0.0

    async def _wait(self) -> None:
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses

    def data_received(self, data: bytes) -> None:
        if not self._in_exchange or self._parser is None:
            # Bytes nobody asked for: the connection is out of step; never reuse it.
            self.close(abort=True)
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            self.fail(UpstreamProtocolError(f"malformed response from upstream: {exc}", self.upstream, self.target))

    def eof_received(self) -> bool | None:
        if self.head_done and not self.complete and not self._framed:
            self.complete = True  # a close-delimited body ends here
        self.keep_alive = False
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        if self._in_exchange and not self.complete and self._exc is None:
            if self.head_done and not self._framed:
                self.complete = True
            else:
                where = "mid-body" if self.head_done else "before the response headers"
                self._exc = UpstreamProtocolError(f"upstream closed the connection {where}", self.upstream, self.target)
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim response (103 Early Hints, a stray 100 Continue): not ours to relay; wait for the final one.
            self._informational = True
            self.headers = []
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        for name, _ in self.headers:
            if len(name) in (14, 17):
                lowered = name.lower()
                if lowered == b"content-length" or lowered == b"transfer-encoding":
                    self._framed = True
        self.head_done = True
        if self._no_body or status in (204, 304):
            self.complete = True
            self._framed = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._no_body:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self.complete = True
        self._wake()
