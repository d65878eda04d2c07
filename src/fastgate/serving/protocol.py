"""fastgate's HTTP/1.1 server protocol: an ``asyncio.Protocol`` on httptools (llhttp) that serves an ASGI app.

How this works
--------------
Uvicorn still runs the process (config, workers, signals, lifespan, logging) and builds this protocol for each
connection (``uvicorn --http fastgate.server:HttpProtocol``); everything between the socket and the app is ours,
so that request limits and deadlines live in one place and cost nothing per request:

* **Request heads are bounded while they arrive.** Bytes are counted before they are parsed, and the parser is
  never fed more than the limit: a head that passes ``max_header_bytes`` is answered 431 (a target past
  ``max_uri_bytes``, 414) and the connection closed at once, without waiting for a blank line that may never come.
  (llhttp joins a header value's pieces itself, so an unbounded head also cost quadratic CPU.)
* **Deadlines without timers.** Each connection keeps one ``deadline`` (loop time) for the phase it is in: the first
  request head (``header_timeout``, then 408), an idle kept-alive connection (``keepalive_timeout``, then a quiet
  close), a head being received (``header_timeout``, 408), a request body slower than ``min_body_rate`` after its
  grace period (408, or an abort once the response has started), a client that takes no response bytes for
  ``send_timeout`` (abort). One sweep per process (``serving/sweeper.py``) checks them all a few times a second.
* **Checks llhttp does not make** (``serving/head.py``): version, target form, Host; header names with underscores
  are dropped unless ``underscores_in_headers`` (CGI-style backends read ``X_Forwarded_For`` as the dashed name).
* **Pipelining**: requests are answered in order; a request that arrives while one is being answered waits, and the
  socket is not read meanwhile.
* **Backpressure** both ways: body pieces above ``HIGH_WATER`` pause reading; a full send buffer makes ``send``
  wait (``drain``).
* WebSocket upgrades are handed to Uvicorn's WebSocket protocol (``config.ws_protocol_class``), as Uvicorn does.

Client errors found here get fastgate's JSON error body, a fresh ``x-request-id``, ``connection: close``, and one
access-log line; they never reach the app.

**Lingering close** (nginx's): an answer sent while the client may still be sending its request body (an early
413 or 401 on an unfinished upload, a 408 for a body too slow) must not be followed by a plain close, because
closing a socket with unread input makes the kernel send RST, which can destroy the answer before a client that
reads only after sending (httpx, requests) has read it. So the answer is followed by FIN (``write_eof``; over TLS
there is none), and what the client still sends is read and dropped, never parsed or kept, until it closes, sends
nothing for ``lingering_timeout``, has sent ``max_lingering_bytes``, or ``lingering_time`` has passed; then the
socket is closed. The deadlines are checked by the sweep like the others. A response that ends with the request
finished closes (or is kept alive) as before: nothing of this runs on that path. After an error in a request head
(431, 414, 408...) the socket gets FIN and stays open ``LINGER_SECONDS`` without reading: a hostile head costs no
further reads, and the part of it sent past the limit fits in the socket buffers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import anyio
import httptools
from uvicorn.config import Config
from uvicorn.protocols.utils import get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from ..exceptions import (
    BadRequest,
    ClientError,
    FastgateError,
    HeadersTooLarge,
    Overloaded,
    RequestTimeout,
    UriTooLong,
    VersionNotSupported,
)
from ..http2 import PREFACE
from ..observability.logging import access_logger, error_logger
from ..proxy.disconnect import new_cancel_scope
from ..proxy.downstream import Downstream
from ..proxy.headers import new_request_id
from .cycle import STATUS_LINES, RequestCycle
from .head import check_host, check_target, check_version
from .limits import ServerLimits
from .sweeper import Sweeper

LINGER_SECONDS = 1.0  # after an error in a request head, how long the socket is left open (reading nothing)
# Requests waiting behind the one being answered. llhttp parses a whole read at once, so without a bound one 256 KiB
# read of tiny pipelined requests would queue thousands of them before reading pauses.
MAX_PIPELINED = 16

# The options of the ASGI extensions we offer with no options (http.response.trailers): one empty dict, not one a
# request. Read-only by convention, as the ASGI spec defines no options for it.
_NO_OPTIONS: dict[str, Any] = {}

# Connection phases: what the deadline, if any, is counting.
_FIRST, _IDLE, _HEAD, _BUSY = range(4)


class _Reject(Exception):
    """Raised from a parser callback to stop parsing; ``error`` is what the client is told."""

    def __init__(self, error: ClientError) -> None:
        self.error = error


def _limits_for(app: Any) -> ServerLimits:
    """The limits of the Gateway being served (found through Uvicorn's middleware wrappers), else the defaults."""
    for _ in range(8):
        limits = getattr(app, "server_limits", None)
        if isinstance(limits, ServerLimits):
            return limits
        app = getattr(app, "app", None)
        if app is None:
            break
    return ServerLimits()


def _handler_of(app: Any) -> Callable[[Downstream], Awaitable[None]] | None:
    """The app's own request handler, when the app served is the gateway itself (no middleware around it) and offers
    one (``Gateway.fastgate_handler``: None when ``FASTGATE_DRIVER=asgi`` asks for the ASGI adapter)."""
    handler = getattr(app, "fastgate_handler", None)
    return handler if callable(handler) else None


class HttpProtocol(asyncio.Protocol):
    """``http=`` for Uvicorn: ``uvicorn app:app --http fastgate.server:HttpProtocol``."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.limits = _limits_for(self.app)
        self.server_state = server_state
        self.app_state = app_state
        self.root_path = config.root_path
        self.sweeper = Sweeper.of(server_state, self.loop, self.limits.sweep_interval)
        self.parser = httptools.HttpRequestParser(self)
        # Versions are judged by serving/head.py (1.x above 1.1 is served as 1.1, others get 505), not by llhttp.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True, lenient_version=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.phase = _FIRST
        self.deadline = 0.0
        self.requests = 0
        self.write_paused = False
        self.write_paused_since = 0.0
        self.closed = False
        self._counted = False  # in server_state.connections before connection_made: its TLS handshake is running
        self._reading = True
        self._drain: asyncio.Future[None] | None = None
        self._cycle: RequestCycle | None = None  # the request being answered
        self._parsing: RequestCycle | None = None  # the request whose head or body the parser is in
        self._pipeline: deque[RequestCycle] = deque()
        self._head_bytes = 0
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._hosts: list[bytes] = []
        self._valid_host: bytes | None = None  # the last Host value check_host accepted on this connection
        self._expect_100 = False
        self._upgrade: bytes | None = None
        self._parsed_target = b""
        self._paused_at = 0.0
        self._in_head = False
        self._framing_bytes = 0
        self._line_bytes = 0  # the unfinished line of a head being received
        self._linger_until = 0.0  # lingering close: the deadline of the whole linger, and of a silence in it
        self._linger_idle = 0.0
        self._linger_left = 0  # bytes still to be dropped before the socket is closed anyway
        self._stopping = False  # a graceful shutdown came while a request was being answered
        self._pending_error: ClientError | None = None
        # The gateway's handler (fastgate's exchange core driven directly, no ASGI), or None to serve the ASGI app.
        self.handler = _handler_of(self.app) if not self.root_path else None
        self._task: asyncio.Task[None] | None = None  # the connection's task, under the handler
        self._next: asyncio.Future[RequestCycle | None] | None = None  # the task waits here for the next request
        self._queued: RequestCycle | None = None  # a request started while the task finished the one before
        self.cancel_scope: anyio.CancelScope | None = None  # the connection task's, while it runs (ConnectionScope)
        self._preface = b""  # the start of an HTTP/2 preface, until all of its 24 bytes are here

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        return self.server_state.default_headers

    # -- asyncio.Protocol -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        self.server = get_local_addr(transport)  # type: ignore[arg-type]
        self.client = get_remote_addr(transport)  # type: ignore[arg-type]
        self.scheme = "https" if is_ssl(transport) else "http"  # type: ignore[arg-type]
        if self.closed:
            return  # shut down while its TLS handshake ran
        if not self._counted:
            limit = self.limits.max_connections
            if limit is not None and len(self.server_state.connections) >= limit:
                self.sweeper.refused(limit)
                self._refuse(Overloaded(f"over {limit} client connections in this worker"))
                return
            self.server_state.connections.add(self)  # type: ignore[arg-type]
        self.sweeper.add(self)
        self._arm(_FIRST, self.limits.header_timeout)
        if self.scheme == "https" and self.limits.http2.enabled:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self._to_http2(b"")

    # -- the TLS handshake (serving/handshake.py runs it when fastgate's loop serves the listener) ----------------

    @property
    def handshake_timeout(self) -> float | None:
        """A TLS handshake is bounded by ``header_timeout``, and the request head then gets its own (as nginx)."""
        return self.limits.header_timeout

    def handshake_started(self, transport: asyncio.BaseTransport) -> bool:
        """Count the connection from its accept; over ``max_connections`` it is closed before any TLS work."""
        self.transport = transport  # type: ignore[assignment]  # TCP until the handshake is done: shutdown() closes it
        limit = self.limits.max_connections
        if limit is not None and len(self.server_state.connections) >= limit:
            self.sweeper.refused(limit)
            self.closed = True
            transport.abort()  # type: ignore[attr-defined]  # no TLS yet, so no 503 can be said
            return False
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self._counted = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server_state.connections.discard(self)
        self.sweeper.discard(self)
        for cycle in (self._cycle, *self._pipeline):
            if cycle is not None:
                cycle.lost()
        self._pipeline.clear()
        self._queued = None
        waiter = self._next
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # the connection's task ends
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # a client that half-closes is gone, as Uvicorn treats it: the transport closes

    def data_received(self, data: bytes) -> None:
        if self.closed:
            if self._linger_until:
                self._discard(len(data))  # lingering close: dropped, never parsed
            return
        if self.phase == _IDLE or self.phase == _FIRST:
            if self.phase == _FIRST and (self._preface or data[:1] == b"P") and not self.requests:
                rest = self._h2c_preface(data)
                if rest is None:
                    return
                data = rest
            # self._arm(_HEAD, header_timeout), inline: a call less on every request
            self.phase = _HEAD
            timeout = self.limits.header_timeout
            self.deadline = self.loop.time() + timeout if timeout else 0.0
            self._head_bytes = self._line_bytes = 0
        try:
            while data:
                if self.phase != _HEAD:
                    self._framing_bytes += len(data)
                    self.parser.feed_data(data)
                    if self._framing_bytes > self.limits.max_header_bytes:
                        # Bytes that were neither body nor a new head: a chunk-size line, extension or trailer
                        # section without end (llhttp joins a trailer's pieces itself, so it must be bounded here).
                        raise _Reject(
                            BadRequest(f"chunk framing or trailers over {self.limits.max_header_bytes} bytes")
                        )
                    return
                limits = self.limits
                room = limits.max_header_bytes - self._head_bytes
                piece, data = (data[:room], data[room:]) if len(data) > room else (data, b"")
                self._head_bytes += len(piece)
                newline = piece.rfind(b"\n")
                self._line_bytes = len(piece) - newline - 1 if newline >= 0 else self._line_bytes + len(piece)
                self.parser.feed_data(piece)
                if self.phase == _HEAD:
                    if data:
                        raise _Reject(HeadersTooLarge(f"request head over {limits.max_header_bytes} bytes"))
                    if self._line_bytes > limits.max_header_field_bytes:
                        # One line still growing past the field limit (llhttp only reports a field once it ends).
                        raise _Reject(HeadersTooLarge(f"a header field over {limits.max_header_field_bytes} bytes"))
                    if self._url and piece.find(b"\n") >= 0 and self.parser.get_http_version() == "0.0":
                        # A request line without a version: HTTP/0.9, which llhttp would wait on for headers.
                        raise _Reject(VersionNotSupported("HTTP/0.9 is not supported; use HTTP/1.1"))
        except _Reject as exc:
            self._fail(exc.error)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :] if exc.args and isinstance(exc.args[0], int) else b"")
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._fail(cause.error)
            elif str(exc) in ("Invalid HTTP version", "Pause on PRI/Upgrade"):
                self._fail(VersionNotSupported("only HTTP/1.0 and HTTP/1.1 are served on this port"))
            else:
                self._fail(BadRequest(f"malformed request: {exc}"))

    def _h2c_preface(self, data: bytes) -> bytes | None:
        """h2c with prior knowledge: a connection that opens with the HTTP/2 preface becomes an HTTP/2 one
        (``server.http2.enabled``; when off, the preface is parsed as HTTP/1.1 and gets 505). None: taken (or
        waiting for the rest of the preface); else the bytes to parse as HTTP/1.1."""
        seen = self._preface + data
        size = min(len(seen), len(PREFACE))
        if seen[:size] != PREFACE[:size] or not self.limits.http2.enabled:
            self._preface = b""
            return seen
        if size < len(PREFACE):
            self._preface = seen
            return None
        self._preface = b""
        self._to_http2(seen)
        return None

    def _to_http2(self, data: bytes) -> None:
        """Hand the connection to fastgate's HTTP/2 server (``http2/server.py``) with the bytes read so far."""
        from ..http2.server import H2Server

        self.sweeper.discard(self)
        self.server_state.connections.discard(self)
        self.closed = True  # this protocol is done with the connection: nothing more reaches it
        H2Server(self).start(data)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_since = self.loop.time()

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- used by the cycle ------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def writelines(self, head: bytes, data: bytes) -> None:
        if not self.closed:
            self.transport.writelines((head, data))

    async def drain(self) -> None:
        if self.closed:
            return
        self._drain = self.loop.create_future()
        try:
            await self._drain
        finally:
            self._drain = None

    def pause_reading(self) -> None:
        if self._reading and not self.closed:
            self._reading = False
            self._paused_at = self.loop.time()
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading and not self.closed and not self._pipeline:
            self._reading = True
            cycle = self._cycle
            if cycle is not None and cycle.body_since:
                # Time the app was not asking for the body does not count against the client's rate (Kestrel's rule).
                cycle.body_since += self.loop.time() - self._paused_at
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def response_done(self, cycle: RequestCycle) -> None:
        self.server_state.total_requests += 1
        if cycle is not self._cycle:
            return
        self._cycle = None
        if not cycle.keep_alive or self.closed:
            if self.closed:
                return
            if cycle.more_body or self._parsing is not None or self._pipeline or self.phase == _HEAD:
                self._linger()  # the client may still be sending: its request body, or requests after this one
            else:
                self.closed = True
                self.transport.close()  # for a close-delimited body the close is its end
            return
        if self._pipeline:
            self._start(self._pipeline.popleft())
            return
        if self._pending_error is not None:
            self._respond_error(self._pending_error, method="-")
            return
        if self._parsing is None:
            # self._arm(_IDLE, keepalive_timeout), inline: a call less on every request
            self.phase = _IDLE
            timeout = self.limits.keepalive_timeout
            self.deadline = self.loop.time() + timeout if timeout else 0.0
        if not self._reading:
            self.resume_reading()

    def shutdown(self) -> None:
        """Uvicorn's graceful shutdown: close when idle, else after the response being sent."""
        if self._cycle is None:
            if not self.closed:
                self.closed = True
                self.transport.close()
            elif self._linger_until:
                self._linger_until = 0.0
                self.transport.abort()
        else:
            self._cycle.keep_alive = False
            self._pipeline.clear()
            self._stopping = True

    # -- deadlines (called by the sweeper) --------------------------------------------------------------------

    def check(self, now: float) -> None:
        if self.closed:
            if self._linger_until and (now >= self._linger_until or now >= self._linger_idle):
                self._end_linger()
            return
        if self.deadline and now >= self.deadline:
            if self.phase == _IDLE:
                self.closed = True
                self.transport.close()
            elif self.phase == _FIRST or self.phase == _HEAD:
                self._fail(RequestTimeout("request head not received in time"))
            return
        cycle = self._cycle
        if cycle is None:
            return
        limits = self.limits
        if self.write_paused and limits.send_timeout and now - self.write_paused_since >= limits.send_timeout:
            error_logger.info("client %s stopped reading the response; connection cut", self._peer())
            cycle.disconnected = True
            self.abort()
            cycle.lost()
            return
        rate = limits.min_body_rate
        if rate and cycle.more_body and cycle.body_since and self._reading:
            elapsed = now - cycle.body_since
            if elapsed > limits.body_grace_period and cycle.body_bytes < rate * elapsed:
                self._body_too_slow(cycle, rate)

    def _body_too_slow(self, cycle: RequestCycle, rate: float) -> None:
        self._end_request(cycle, RequestTimeout(f"request body slower than {rate:g} bytes/s"))

    def _end_request(self, cycle: RequestCycle, error: ClientError) -> None:
        """The request being answered cannot go on (its body is broken or too slow): tell the client, if a response
        has not started, and cut it off; the app sees a disconnect and its upstream request is aborted."""
        cycle.disconnected = True  # the app's sends become no-ops
        if cycle.response_started:
            self.abort()
        else:
            self._respond_error(error, method=cycle.method, target=cycle.target)
        cycle.lost()

    # -- httptools callbacks ----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.phase != _HEAD:
            self._arm(_HEAD, self.limits.header_timeout)
        self._url = b""
        self._headers = []
        self._hosts = []
        self._expect_100 = False
        self._upgrade = None
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_uri_bytes:
            raise _Reject(UriTooLong(f"request target over {self.limits.max_uri_bytes} bytes"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field (RFC 9110 §6.5): never merged into the head the app already has
        if len(name) + len(value) + 4 > self.limits.max_header_field_bytes:
            raise _Reject(HeadersTooLarge(f"a header field over {self.limits.max_header_field_bytes} bytes"))
        name = name.lower()
        # find(), not `b"_" in name`: on CPython 3.11 `bytes in bytes` first tries the needle as an int and formats a
        # TypeError it then discards, some 2,000 instructions each time (this runs for every header of every request).
        if name.find(b"_") >= 0 and not self.limits.underscores_in_headers:
            return  # dropped, as nginx does by default (underscores_in_headers off)
        if name == b"host":
            self._hosts.append(value)
        elif name == b"expect":
            self._expect_100 = value.lower() == b"100-continue"
        elif name == b"upgrade":
            self._upgrade = value.lower()
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        version = parser.get_http_version()
        method = parser.get_method()
        url = self._url
        hosts = self._hosts
        try:
            if version != "1.1":
                version = check_version(version)
            if url[:1] == b"/" and method != b"CONNECT":
                target, authority = url, None  # origin-form: what check_target would answer
            else:
                target, authority = check_target(method, url)
            # A kept-alive client sends the same Host each time: a value this connection has validated passes.
            if len(hosts) != 1 or hosts[0] != self._valid_host:
                check_host(hosts, version)
                if len(hosts) == 1:
                    self._valid_host = hosts[0]
        except ClientError as exc:
            raise _Reject(exc) from None
        if version == "1.0" and any(name == b"transfer-encoding" for name, _ in self._headers):
            # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            raise _Reject(BadRequest("Transfer-Encoding in an HTTP/1.0 request"))
        self._parsed_target = target
        headers = self._headers
        if authority is not None:
            # RFC 9112 §3.2.2: the target's authority is the request's Host.
            headers = [pair for pair in headers if pair[0] != b"host"]
            headers.insert(0, (b"host", authority))
        self.phase = _BUSY
        self.deadline = 0.0
        self.requests += 1
        upgrade = parser.should_upgrade()
        if upgrade and self._upgrade == b"websocket" and self.config.ws_protocol_class:
            self._parsing = None
            return  # handed over in data_received, where HttpParserUpgrade arrives
        keep_alive = version == "1.1" and parser.should_keep_alive()
        limit = self.limits.max_requests_per_connection
        if limit is not None and self.requests >= limit:
            keep_alive = False
        if upgrade:
            keep_alive = False  # an upgrade we do not speak (h2c): llhttp stops at it, so nothing more can follow
        cycle = RequestCycle(self, method.decode("ascii"), target, headers, version, keep_alive)
        cycle.expect_100 = self._expect_100
        self._parsing = cycle
        if upgrade and _declares_body(headers):
            raise _Reject(BadRequest("a request body cannot be sent with an upgrade offer"))
        if self._cycle is None:
            self._start(cycle)
        elif len(self._pipeline) >= MAX_PIPELINED:
            # answered after the requests before it, then the connection closes
            raise _Reject(BadRequest(f"more than {MAX_PIPELINED} pipelined requests waiting"))
        else:
            self._pipeline.append(cycle)
            self.pause_reading()

    def on_chunk_header(self) -> None:
        self._framing_bytes = 0

    def on_body(self, body: bytes) -> None:
        self._framing_bytes = 0
        cycle = self._parsing
        if cycle is not None and not cycle.response_complete and not cycle.disconnected:
            cycle.feed(body)

    def on_message_complete(self) -> None:
        self._framing_bytes = 0
        cycle, self._parsing = self._parsing, None
        if cycle is not None:
            cycle.end_body()
        if self._cycle is None and not self._pipeline and not self.closed and self.phase == _BUSY:
            self._arm(_IDLE, self.limits.keepalive_timeout)

    # -- internals --------------------------------------------------------------------------------------------

    def _arm(self, phase: int, timeout: float | None) -> None:
        self.phase = phase
        self.deadline = self.loop.time() + timeout if timeout else 0.0

    def _start(self, cycle: RequestCycle) -> None:
        self._cycle = cycle
        if cycle.more_body and not cycle.expect_100:
            # The rate counts the client's bytes whether or not the app reads them yet (a request queued for an
            # upstream connection must not keep its place by trickling); only time we stop reading is not counted.
            cycle.body_since = self.loop.time()
        if self.handler is not None:
            # The gateway's own handler: one task per connection, woken for each request (no task per request).
            if self._task is None:
                self._task = task = self.loop.create_task(self._serve(cycle))
            elif (waiter := self._next) is not None:
                self._next = None
                waiter.set_result(cycle)
                return
            else:
                self._queued = cycle  # the task is finishing the request before: it takes this one next
                return
        else:
            task = self.loop.create_task(self._run(cycle))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def asgi_scope(self, cycle: RequestCycle) -> dict[str, Any]:
        """The ASGI scope of ``cycle``'s request (``RequestCycle.scope`` builds it once, when asked)."""
        target = cycle.target
        path, query = target, b""
        if target.find(b"?") >= 0:  # not `in`: see on_header
            path, _, query = target.partition(b"?")
        decoded = path.decode("latin-1")
        if "%" in decoded:
            decoded = unquote(decoded)
        root = self.root_path
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": cycle.http_version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": cycle.method,
            "root_path": root,
            "path": root + decoded if root else decoded,
            "raw_path": root.encode("ascii") + path if root else path,
            "query_string": query,
            "headers": cycle.headers,
            "state": self.app_state.copy(),
        }
        if cycle.http_version == "1.1":  # a chunked response can carry trailers (an HTTP/1.0 client never gets one)
            scope["extensions"] = {"fastgate.server": cycle, "http.response.trailers": _NO_OPTIONS}
        else:
            scope["extensions"] = {"fastgate.server": cycle}
        return scope

    async def _serve(self, cycle: RequestCycle | None) -> None:
        """The connection's one task under the gateway's own handler (no ASGI): its requests, one after another,
        each handled as ``_run`` runs an ASGI app (inline: this frame is resumed at every await of every request).

        The task runs in one anyio cancel scope, the connection's: a client that goes mid-exchange cancels it
        (``ConnectionScope``), the exchange ends, and so does the task, since the connection is gone.
        """
        handler = self.handler
        assert handler is not None
        with new_cancel_scope() as self.cancel_scope:
            try:
                while cycle is not None:
                    try:
                        await handler(cycle)
                    except Exception as exc:
                        self._failed(cycle, "Exception in the request handler", exc)
                    except BaseException:
                        # Cancelled: by the connection's scope (its client went; anyio's scope takes it below), or
                        # from outside (a shutdown past its grace period), or the process is exiting.
                        if not cycle.disconnected:
                            self.abort()
                        raise
                    else:
                        if not cycle.response_complete:  # (a call only off the common path)
                            # unfinished: the handler logged why (an internal error once the response had started)
                            self._returned(cycle, "The request handler", None)
                    finally:
                        self._release(cycle)
                    cycle, self._queued = self._queued, None
                    if cycle is None and not self.closed:
                        self._next = waiter = self.loop.create_future()
                        cycle = await waiter
            finally:
                self._task = None
                self._next = None
                self.cancel_scope = None

    async def _run(self, cycle: RequestCycle) -> None:
        try:
            await self.app(cycle.scope, cycle.receive, cycle.send)
        except BaseException as exc:
            self._failed(cycle, "Exception in ASGI application", exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            self._returned(cycle, "ASGI callable", "ASGI callable returned without completing response.")
        finally:
            self._release(cycle)

    def _failed(self, cycle: RequestCycle, message: str, exc: BaseException) -> None:
        """The app or handler raised: one log line; a JSON 500 if no response started, else the client is cut off."""
        error_logger.error(message, exc_info=exc)
        if not cycle.response_started and not cycle.disconnected:
            self._respond_error(FastgateError("internal error"), method=cycle.method)
        else:
            self.abort()

    def _returned(self, cycle: RequestCycle, who: str, unfinished: str | None) -> None:
        """The app or handler returned: a response it never started gets a JSON 500, one it left unfinished is cut
        off (logged with ``unfinished`` when given)."""
        if not cycle.response_started and not cycle.disconnected:
            error_logger.error("%s returned without starting response.", who)
            self._respond_error(FastgateError("internal error"), method=cycle.method)
        elif not cycle.response_complete and not cycle.disconnected:
            if unfinished is not None:
                error_logger.error(unfinished)
            self.abort()

    def _release(self, cycle: RequestCycle) -> None:
        cycle.on_disconnect = None
        if not cycle.response_complete and self._cycle is cycle:
            self._cycle = None

    def _upgraded(self, rest: bytes) -> None:
        """Hand a WebSocket handshake to Uvicorn's WebSocket protocol, with the bytes that followed it."""
        method = self.parser.get_method()
        if self._upgrade != b"websocket" or not self.config.ws_protocol_class or self.phase == _HEAD:
            # A declined upgrade (h2c, say) was served as plain HTTP/1.1 by on_headers_complete; llhttp will
            # parse nothing more on this connection, so it closes after the response.
            if self._cycle is None and not self.closed:
                self.closed = True
                self.transport.close()
            return
        self.sweeper.discard(self)
        self.server_state.connections.discard(self)
        head = [method, b" ", self._parsed_target, b" HTTP/1.1\r\n"]
        for name, value in self._headers:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        protocol = self.config.ws_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        protocol.connection_made(self.transport)
        protocol.data_received(b"".join(head) + rest)
        self.transport.set_protocol(protocol)

    def _fail(self, error: ClientError) -> None:
        """A client error found by the server: answer it now, or after the responses already owed, then close."""
        cycle = self._cycle
        if cycle is not None and self._parsing is cycle and not cycle.response_complete:
            self._end_request(cycle, error)  # its own body is broken: nothing more of it may go upstream
            return
        if cycle is not None and not cycle.response_complete:
            # Earlier requests are answered first (RFC 9112 §9.3.2 keeps responses in order), then this error.
            self._pending_error = error
            self._parsing = None
            self.pause_reading()
            return
        self._respond_error(error, method=self.parser.get_method().decode("latin-1", "replace") or "-")

    def _respond_error(
        self, error: FastgateError, *, method: str, target: bytes | None = None, linger: bool = True
    ) -> None:
        if self.closed:
            return
        request_id = new_request_id()
        body = json.dumps(
            {"error": error.code, "detail": error.detail, "request_id": request_id.decode()}, separators=(",", ":")
        ).encode()
        head = b"".join(
            (
                STATUS_LINES[error.status_code],
                b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
                % (len(body), request_id),
                b"connection: close\r\n\r\n",
            )
        )
        self.transport.write(head + body)
        if linger and self._parsing is not None:
            self._linger()  # a request body was arriving: the rest is read and dropped (module docstring)
        elif linger and self.transport.can_write_eof():
            # An error in a head (431, 414, 408...): FIN after the answer, and the socket is left open a moment,
            # reading nothing: a hostile head costs no further reads, and what was sent of it (at most about
            # max_header_bytes past the answer) sits in the socket buffers meanwhile.
            self.closed = True
            self.transport.write_eof()
            self._reading = False
            self.transport.pause_reading()
            self._linger_until = self._linger_idle = self.loop.time() + LINGER_SECONDS
        else:
            self.closed = True
            self.transport.close()
        if access_logger.isEnabledFor(logging.INFO):
            access_logger.info(
                '%s - "%s %s" %d 0 0.0ms request_id=%s (%s: %s)',
                self._peer(),
                method,
                (target if target is not None else self._url[:200]).decode("latin-1") or "-",
                error.status_code,
                request_id.decode(),
                error.code,
                error.detail,
            )

    def _linger(self) -> None:
        """Close after an answer the client may not have read yet, while it may still be sending (module docstring)."""
        self.closed = True
        limits = self.limits
        transport = self.transport
        if not limits.lingering_time:
            transport.close()  # lingering_time: 0, nginx's lingering_close off
            return
        if transport.can_write_eof():
            transport.write_eof()  # FIN once the answer has gone; without it (TLS) the client reads by the length
        now = self.loop.time()
        self._linger_until = now + (limits.lingering_timeout if self._stopping else limits.lingering_time)
        self._linger_idle = now + limits.lingering_timeout
        self._linger_left = limits.max_lingering_bytes
        if not self._reading:
            self._reading = True
            transport.resume_reading()

    def _discard(self, size: int) -> None:
        self._linger_left -= size
        if self._linger_left < 0:
            self._end_linger()
        else:
            self._linger_idle = self.loop.time() + self.limits.lingering_timeout

    def _end_linger(self) -> None:
        # No more reads; whatever the client still sends gets RST. After a body, close(), not abort(): an answer
        # still in the write buffer (a client reading a long response slowly) goes out first, as it did before.
        self._linger_until = 0.0
        if self._reading:
            self.transport.close()
        else:
            self.transport.abort()  # after a head error: nothing was read meanwhile, nothing more will be

    def _refuse(self, error: FastgateError) -> None:
        self._respond_error(error, method="-", target=b"-", linger=False)

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "-"


def _declares_body(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        (name == b"content-length" and value.strip() not in (b"", b"0")) or name == b"transfer-encoding"
        for name, value in headers
    )
