"""One HTTP/1.1 connection to an upstream, as an ``asyncio.Protocol`` with httptools (llhttp) parsing.

How this works
--------------
A connection carries one exchange at a time. ``start()`` writes the request head and arms the response parser
(the last exchange's when its response ended at a message boundary, else a new one); the caller then writes the
body (``write`` / ``drain``), waits for the response head (``wait_head``) and pulls body chunks (``read``).
Everything the event loop tells us (bytes, EOF, loss, write pressure) lands in plain attributes and wakes the single
waiter future, so the hot path costs one future per wait and no task.

* Flow control: body bytes queue in ``_chunks``; above ``HIGH_WATER`` we stop reading from the socket, and
  resume once the consumer has taken them. Upstream writes wait in ``drain`` while the socket buffer is full.
  Memory per connection is therefore bounded whatever the body size.
* Timeouts: the caller sets ``deadline`` (loop time) before waiting; the pool's sweeper fails connections whose
  deadline passed. No timer per request.
* Failure: ``fail(exc)`` aborts the socket and makes the current or next wait raise ``exc``. A connection that
  closes before the response is complete fails with :class:`UpstreamProtocolError`; one whose response has no
  framing (no Content-Length, and no Transfer-Encoding ending in chunked) ends cleanly at EOF, as RFC 9112 §6.3
  says.
* Hostile upstreams: the response head (interim 1xx responses included) may use ``max_head`` bytes, counted as
  they arrive, since the head may never complete; so may the trailer section of a chunked body, a budget of its own
  (its fields counted as parsed, and the bytes since the last body piece as they arrive, since llhttp joins a
  field's pieces itself); past either, the response fails after the body read so far; a 101 is an error, as we
  never ask to upgrade (RFC 9110 §15.2.2); bytes after a complete response are a response nobody asked for, so the
  connection is dropped, the response already read stays intact.
* Trailers: fields after a chunked body (RFC 9112 §7.1.2) land in ``trailers`` when the response ends, never in
  ``headers`` (RFC 9110 §6.5.1: the head was handed on long before).
* Reuse: the pool takes the connection back only when the response was complete, both sides allowed keep-alive
  and nothing is left unread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import httptools

from ..exceptions import UpstreamProtocolError
from ..observability.logging import upstream_logger

HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024
MAX_HEAD = 64 * 1024


class _UnsolicitedResponse(Exception):
    """Raised from a parser callback to stop parsing at a response that follows a complete one."""


class Connection(asyncio.Protocol):
    def __init__(
        self, upstream: str, loop: asyncio.AbstractEventLoop, *, target: str = "", max_head: int = MAX_HEAD
    ) -> None:
        self.upstream = upstream
        self.target = target
        self.max_head = max_head
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
        # The trailer section, set when a response ends with one (None before the end, and when it had none).
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self._trailing: list[tuple[bytes, bytes]] | None = None  # trailer fields being parsed
        self._trailer_bytes = 0
        self._chunked = False
        self._framing = 0  # bytes of a chunked body since the last body piece: chunk lines, trailers
        self._parser: Any = None
        # The parser is at a message boundary (its last response ended in on_message_complete): the next exchange
        # can use it again instead of building a new one (a parser costs two allocations and eight lookups).
        self._parser_ready = False
        self._in_exchange = False
        self._no_body = False
        self._framed = False
        self._informational = False
        self._head_room = max_head
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
        self.head_done = self.complete = self.received_any = self._informational = self._framed = self._chunked = False
        self.status = 0
        self.headers = []
        self.trailers = self._trailing = None
        self._head_room = self.max_head
        self._exc = None
        if not self._parser_ready:
            self._parser = httptools.HttpResponseParser(self)
        self._parser_ready = False
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
        # self._arm(limit, "response headers"), inline: a call less on every request
        self.deadline = self.loop.time() + limit if limit else 0.0
        self.waiting_for = "response headers"
        self.armed_timeout = limit or 0.0
        while not self.head_done:
            if self._exc is not None:
                raise self._exc
            # the future awaited here, not through a helper coroutine: one coroutine less on every request
            self._waiter = waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
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
                # The deadline covers this wait only: once data is here, a slow reader must not be cut.
                self._arm(idle_timeout, "response body data")
            self._waiter = waiter = self.loop.create_future()  # inline, as in wait_head
            try:
                await waiter
            finally:
                self._waiter = None
            if idle_timeout:
                self.deadline = 0.0

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
        if not reusable:
            self._parser_ready = False
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

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None  # woken once: the callbacks that follow in the same read cost a test, not a call
            if not waiter.done():
                waiter.set_result(None)
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses

    def data_received(self, data: bytes) -> None:
        if not self._in_exchange:
            # Bytes nobody asked for: the connection is out of step; never reuse it.
            self.close(abort=True)
            return
        self.received_any = True
        if not self.head_done:
            # Counted here, as bytes arrive: the parser itself would keep concatenating a header value that
            # never ends (at a quadratic cost) until the read timeout.
            self._head_room -= len(data)
            if self._head_room < 0:
                self._feed_past_head_limit(data)
                return
        elif self._chunked:
            self._feed_chunked(data)
            return
        try:  # inline rather than self._feed(data): this runs for every read from the socket
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # after a 101, which on_headers_complete has already failed
        except httptools.HttpParserError as exc:
            self._parse_error(exc)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            self._parse_error(exc)

    def _feed_chunked(self, data: bytes) -> None:
        # Bytes that are neither head nor body (reset by each body piece): chunk-size lines and the trailer
        # section. A trailer field that never ends is joined by httptools in memory, so it is bounded here.
        self._framing += len(data)
        self._feed(data)
        if self._framing > self.max_head and self._exc is None and not self.complete:
            self._trailers_too_large()

    def _trailers_too_large(self) -> None:
        self._trailing = None
        self.fail(
            UpstreamProtocolError(
                f"chunk framing or trailers from upstream over {self.max_head} bytes", self.upstream, self.target
            )
        )

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        if self._exc is not None:
            return  # already failed: a 101, or the head limit
        if self.complete:
            self._drop_unsolicited()
        else:
            self.fail(UpstreamProtocolError(f"malformed response from upstream: {exc}", self.upstream, self.target))

    def _feed_past_head_limit(self, data: bytes) -> None:
        fits = len(data) + self._head_room  # bytes of ``data`` still within the limit
        if fits > 0:
            self._feed(data[:fits])
        if self.head_done and self._exc is None:
            if fits < len(data):
                self._feed(data[fits:])
            return
        if self._exc is None:
            self.fail(
                UpstreamProtocolError(
                    f"response head from upstream over {self.max_head} bytes", self.upstream, self.target
                )
            )

    def _drop_unsolicited(self) -> None:
        # Bytes after a complete response (RFC 9112 §9.3: responses come in request order, one each): another
        # response we did not ask for, or garbage. Either way the connection is out of step; the response
        # already read is intact and stays deliverable, but nothing more is read or reused from here.
        self.keep_alive = False
        self.close(abort=True)
        upstream_logger.warning(
            "%s (%s): bytes after a complete response; connection dropped", self.upstream, self.target
        )

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

    def on_message_begin(self) -> None:
        if self.complete:
            raise _UnsolicitedResponse

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            self._trailer(name, value)
        else:
            self.headers.append((name, value))

    def _trailer(self, name: bytes, value: bytes) -> None:
        if self._exc is not None:
            return
        if self._trailing is None:
            self._trailing = []
            self._trailer_bytes = 0
        self._trailer_bytes += len(name) + len(value) + 4
        if self._trailer_bytes > self.max_head:
            self._trailers_too_large()
            return
        self._trailing.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                # We never send Upgrade on this connection (WebSockets dial their own), so a 101 is a protocol
                # error (RFC 9110 §15.2.2), and what follows it is not HTTP we could parse or trust.
                self.keep_alive = False
                self.fail(
                    UpstreamProtocolError(
                        "101 Switching Protocols from upstream to a request that did not ask to upgrade",
                        self.upstream,
                        self.target,
                    )
                )
                return
            # An interim response (103 Early Hints, a stray 100 Continue): not ours to relay; wait for the final one.
            self._informational = True
            self.headers = []
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        framed = False
        coding: bytes | None = None
        for name, value in self.headers:
            if len(name) == 14:
                if name.lower() == b"content-length":
                    framed = True
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                coding = value  # the last field holds the final coding
        if coding is not None:
            # RFC 9112 §6.3 (4): a response whose final transfer coding is not chunked is read until the
            # connection closes.
            framed = self._chunked = coding.rpartition(b",")[2].strip().lower() == b"chunked"
            self._framing = 0
        self.head_done = True
        if self._no_body or status in (204, 304):
            self.complete = True
            framed = True
        elif not framed:
            self.keep_alive = False  # a close-delimited body: the connection ends with it
        self._framed = framed
        if self._waiter is not None or self._drain_waiter is not None:
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self._no_body:
            return
        self._framing = 0
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        if self._waiter is not None or self._drain_waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._exc is not None:
            return  # a response we already failed (a 101)
        self.complete = True
        self._parser_ready = True
        if self._trailing is not None:
            self.trailers, self._trailing = self._trailing, None
        if self._waiter is not None or self._drain_waiter is not None:
            self._wake()
