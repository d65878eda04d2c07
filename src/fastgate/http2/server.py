"""fastgate's HTTP/2 server connection: the protocol a client connection switches to when it speaks h2.

How this works
--------------
``serving/protocol.py`` serves every connection first. A TLS connection whose ALPN chose ``h2``, or a plain one
whose first bytes are the HTTP/2 preface (h2c with prior knowledge; ``Upgrade: h2c`` is ignored, as Uvicorn and
Envoy do), is handed to an :class:`H2Server` (``server.http2.enabled``; when off, the preface gets today's 505).

The codec (``http2/codec.py``, python-hyper's ``h2``) turns bytes into events; each request stream becomes an
:class:`~fastgate.http2.stream.H2Stream`, a ``Downstream`` of the one exchange core, served in a task of its own
inside an anyio cancel scope of its own (``RST_STREAM`` or the connection going cancels it, never a raw
``Task.cancel``). Every gateway feature therefore works on HTTP/2 requests as on HTTP/1.1 ones.

Limits and hostile clients (docs/http2.md has the table):

* the settings we send (``server.http2``): concurrent streams, initial stream and connection windows, header list
  and frame size. The codec refuses what breaks them, and what breaks RFC 9113's message rules (uppercase or
  connection-specific header names, repeated, misplaced or missing pseudo-headers, ``te`` other than
  ``trailers``, a ``content-length`` that disagrees with the DATA, CR, LF or NUL in a field): the connection is
  closed with ``GOAWAY`` ``PROTOCOL_ERROR`` and nothing of the stream reaches an upstream (a stream whose body was
  being forwarded is cancelled, and its upstream request aborted). Checks the codec does not make are made here
  (``:method`` a token; ``:path`` form, characters and length; the authority's syntax; CONNECT; a non-zero
  ``content-length`` on a HEADERS frame that ends the stream), answered 400/414 on the stream before anything goes
  upstream.
* rapid reset (CVE-2023-44487), PING and SETTINGS floods, empty DATA frames and PRIORITY floods: ``http2/guard.py``
  counts them; over the allowance the client is told ``GOAWAY`` ``ENHANCE_YOUR_CALM`` and the connection closes. A
  CONTINUATION flood and an HPACK bomb are bounded by the codec (64 CONTINUATION frames at most; the decoded
  header list by ``max_header_list_bytes``).
* a connection ended with ``GOAWAY`` (an error, a flood, a drain) closes as ``serving/protocol.py`` closes after an
  early answer: FIN once the GOAWAY has gone, then what the client still sends is read and dropped (within
  ``lingering_time``, ``lingering_timeout`` and ``max_lingering_bytes``), so no RST destroys the GOAWAY before the
  client reads it. Over TLS, and in a graceful shutdown, the socket is closed at once.
* deadlines, checked by the server's one sweep: no stream open for ``keepalive_timeout`` (GOAWAY, close); a stream
  waiting on the client's window, or a client taking no bytes, for ``send_timeout`` (the stream is reset, the
  connection cut); a connection of a config a reload retired is told GOAWAY and drains; a graceful shutdown sends
  GOAWAY and lets open streams finish within ``graceful_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from ..exceptions import BadRequest, ClientError, FastgateError, UriTooLong
from ..observability.logging import access_logger, error_logger
from ..proxy.disconnect import new_cancel_scope
from ..proxy.headers import new_request_id
from ..serving.head import check_host
from .codec import (
    ConnectionTerminated,
    DataReceived,
    ErrorCodes,
    PingReceived,
    PriorityUpdated,
    ProtocolError,
    RemoteSettingsChanged,
    RequestReceived,
    StreamClosedError,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
    drain_after_goaway,
    graceful_goaway,
    refuse_streams_beyond,
    server_connection,
)
from .guard import EmptyFrameGuard, PriorityGuard, ResetGuard, TokenBucket
from .stream import H2Stream

if TYPE_CHECKING:
    from ..serving.protocol import HttpProtocol

_NO_OPTIONS: dict[str, Any] = {}
# RFC 9110 §5.6.2 tchar: a method is a token. The codec checks only CR, LF and NUL in pseudo-header values, and an
# HTTP/1.1 upstream's request line is built from :method and :path, so a space in either would split that line.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SPACE_OR_CTL = bytes(range(0x21)) + b"\x7f"
WRITE_HIGH = 256 * 1024  # bytes queued for the client above which a stream's sends wait for the socket


class H2Server(asyncio.Protocol):
    """One client connection speaking HTTP/2 (module docstring)."""

    def __init__(self, parent: HttpProtocol) -> None:
        self.loop = parent.loop
        self.config = parent.config
        self.app = parent.app
        self.limits = limits = parent.limits
        self.server_state = parent.server_state
        self.app_state = parent.app_state
        self.sweeper = parent.sweeper
        self.handler = parent.handler
        self.root_path = parent.root_path
        self.transport = parent.transport
        self.client = parent.client
        self.server = parent.server
        self.scheme = parent.scheme
        self.gateway = _gateway_of(self.app)
        self.snapshot = getattr(self.gateway, "snapshot", None)
        h2 = limits.http2
        self.conn = server_connection(
            max_concurrent_streams=h2.max_concurrent_streams,
            initial_window=h2.initial_stream_window,
            max_header_list=h2.max_header_list,
            max_frame=h2.max_frame,
        )
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self.draining = False  # GOAWAY sent: no new streams
        self.write_paused = False
        self.write_paused_since = 0.0
        self.idle_since = self.loop.time()
        self._drain: asyncio.Future[None] | None = None
        self._flush_due = False  # a _flush_now is scheduled for the end of this loop turn
        self._linger_until = 0.0  # lingering close after GOAWAY: the deadline of the whole linger, and of a silence
        self._linger_idle = 0.0
        self._linger_left = 0  # bytes still to be dropped before the socket is closed anyway
        self._stopping = False  # a graceful shutdown: closed without lingering, so the shutdown waits for nobody
        self._resets = ResetGuard(min_streams=max(100, h2.max_concurrent_streams))
        # gRPC clients PING for BDP estimates and keep-alive: generous, and still a flood's end (CVE-2019-9512)
        self._pings = TokenBucket(rate=100.0, burst=1000.0)
        self._settings = TokenBucket(rate=10.0, burst=100.0)
        self._empty = EmptyFrameGuard()
        self._priorities = PriorityGuard()

    # -- start and asyncio.Protocol -------------------------------------------------------------------------

    def start(self, data: bytes) -> None:
        """Take over the connection: our SETTINGS (and the connection window), then the bytes read so far."""
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self.sweeper.add(self)
        conn = self.conn
        conn.initiate_connection()
        refuse_streams_beyond(conn, self.limits.http2.max_concurrent_streams)
        extra = self.limits.http2.initial_connection_window - 65535
        if extra > 0:
            conn.increment_flow_control_window(extra)
        self.transport.set_protocol(self)
        self._flush()
        if data:
            self.data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # started by serving/protocol.py with the transport it already has (start)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            if self._linger_until:
                self._discard(len(data))  # lingering close: dropped, never parsed
            return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            code = getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR)
            self._close_with(code, f"HTTP/2 protocol error from the client: {exc}")
            return
        with_headers: object = None  # the PRIORITY that came in a request's HEADERS frame: not counted
        for event in events:
            if self.gone:
                return  # closed by an earlier event of this read (a guard's GOAWAY): the rest is not served
            if isinstance(event, DataReceived):
                if self._empty.data(not event.data and event.stream_ended is None):
                    self._calm("empty DATA frames")
                    return
                stream = self.streams.get(event.stream_id)
                if stream is not None and not stream.reset:
                    stream.feed(event.data, event.flow_controlled_length)
                else:
                    self._acknowledge(event.stream_id, event.flow_controlled_length)
            elif isinstance(event, RequestReceived):
                with_headers = event.priority_updated
                self._request(event)
            elif isinstance(event, StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.end_body()
            elif isinstance(event, WindowUpdated):
                if event.stream_id:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.window_opened()
                else:
                    for stream in self.streams.values():
                        stream.window_opened()
            elif isinstance(event, StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    premature = not stream.response_complete
                    stream.lost()
                    if premature and self._resets.reset():
                        self._calm("rapid reset: most of its streams reset before their response")
                        return
            elif isinstance(event, PingReceived):
                if not self._pings.take(self.loop.time()):
                    self._calm("PING flood")
                    return
            elif isinstance(event, RemoteSettingsChanged):
                if not self._settings.take(self.loop.time()):
                    self._calm("SETTINGS flood")
                    return
                for stream in self.streams.values():
                    stream.window_opened()  # a new initial window may open every stream
            elif isinstance(event, ConnectionTerminated):
                self.draining = True
                if event.error_code != ErrorCodes.NO_ERROR or not self.streams:
                    self._flush()
                    self._close()
                    return
                drain_after_goaway(self.conn)  # the open streams finish (RFC 9113 §6.8)
            elif isinstance(event, PriorityUpdated):
                if event is not with_headers and self._priorities.priority(self._resets.streams):
                    self._calm("PRIORITY flood")
                    return
            elif isinstance(event, TrailersReceived):
                with_headers = event.priority_updated  # not forwarded (an HTTP/1.1 upstream could not take them)
        self._flush_now()

    @property
    def gone(self) -> bool:
        """``closed``, read through a call: the events of one read may close the connection as they are handled."""
        return self.closed

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server_state.connections.discard(self)
        self.sweeper.discard(self)
        for stream in list(self.streams.values()):
            stream.lost()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_since = self.loop.time()

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def drain(self) -> None:
        if self.closed or not self.write_paused:
            return
        if self._drain is None or self._drain.done():
            self._drain = self.loop.create_future()
        await self._drain

    # -- requests -------------------------------------------------------------------------------------------

    def _request(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        if self.draining:
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self._resets.opened()
        limit = self.limits.http2.max_concurrent_streams
        if len(self.streams) >= limit and self._active() >= limit:  # (the length first: counting is rarely needed)
            # Past the streams we advertised (a client that did not wait for our SETTINGS, or ignores them): this
            # stream is refused, never forwarded; the others go on. Refusals count as resets for the flood guard.
            self._reset(stream_id, ErrorCodes.REFUSED_STREAM)
            if self._resets.reset():
                self._calm("streams past max_concurrent_streams, again and again")
            return
        method = path = authority = b""
        headers: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        host: bytes | None = None
        declared = False  # a non-zero content-length
        underscores = self.limits.underscores_in_headers
        for name, value in event.headers or ():
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"cookie":
                cookies.append(value)  # RFC 9113 §8.2.3: one field again for HTTP/1.1
                continue
            if name.find(b"_") >= 0 and not underscores:
                continue  # dropped, as on HTTP/1.1 (nginx's underscores_in_headers off)
            if name == b"host":
                host = value
            elif name == b"content-length" and value.lstrip(b"0"):
                declared = True
            headers.append((name, value))
        ended = event.stream_ended is not None
        text = method.decode("latin-1")
        stream = H2Stream(self, stream_id, text, path, headers, not ended)
        self.streams[stream_id] = stream
        try:
            if not method or method.translate(None, _TCHAR):
                raise BadRequest(":method is not a token")
            if method == b"CONNECT":
                raise BadRequest("CONNECT is not served")
            if path[:1] != b"/" and not (method == b"OPTIONS" and path == b"*"):
                raise BadRequest(":path is not an absolute path")
            if len(path.translate(None, _SPACE_OR_CTL)) != len(path):
                raise BadRequest(":path holds a space or a control character")
            if ended and declared:
                # RFC 9113 §8.1.1: content-length must equal the DATA sent, and END_STREAM came with the HEADERS
                raise BadRequest("content-length with no body")
            if len(path) > self.limits.max_uri_bytes:
                raise UriTooLong(f"request target over {self.limits.max_uri_bytes} bytes")
            if host is None:
                if not authority:
                    raise BadRequest("no :authority and no Host")
                check_host([authority], "1.1")
                headers.insert(0, (b"host", authority))
            else:
                check_host([host], "1.1")
        except ClientError as exc:
            self._answer_error(stream, exc)
            return
        if cookies:
            headers.append((b"cookie", b"; ".join(cookies)))
        if not ended and not any(name == b"content-length" for name, _ in headers):
            # A body of unknown length (gRPC's, say): the core frames it as HTTP/1.1's chunked (Envoy does the same).
            headers.append((b"transfer-encoding", b"chunked"))
        self.idle_since = 0.0
        task = self.loop.create_task(self._run(stream))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _active(self) -> int:
        """Streams whose response is not complete: what the client counts against our SETTINGS once it has read our
        END_STREAM (a finished stream's task may still be running its last steps, its on_finish hooks say)."""
        return sum(1 for stream in self.streams.values() if not stream.response_complete and not stream.reset)

    async def _run(self, stream: H2Stream) -> None:
        handler = self.handler
        with new_cancel_scope() as stream.cancel_scope:
            try:
                if handler is not None:
                    await handler(stream)
                else:
                    await self.app(stream.scope, stream.receive, stream.send)
            except Exception as exc:
                error_logger.error("Exception in the request handler", exc_info=exc)
                if not stream.response_started and not stream.disconnected:
                    self._answer_error(stream, FastgateError("internal error"))
            except BaseException:
                if not stream.disconnected:
                    self.reset_stream(stream)
                raise
            finally:
                self._finished(stream)
        stream.cancel_scope = None

    def _finished(self, stream: H2Stream) -> None:
        self.server_state.total_requests += 1
        stream.on_disconnect = None
        if not stream.response_complete and not stream.reset:
            if stream.response_started:
                error_logger.error("The request handler returned without completing the response.")
            else:
                error_logger.error("The request handler returned without starting response.")
                self._answer_error(stream, FastgateError("internal error"))
            if not stream.response_complete:
                self.reset_stream(stream)
        if stream.more_body and not stream.reset:
            # The body was not read to its end: the client is told to stop sending it (RFC 9113 §8.1).
            self._reset(stream.stream_id, ErrorCodes.NO_ERROR)
            stream.reset = True
        if stream.unacked:
            self.acknowledge(stream)  # what it still held is dropped: the connection window reopens
        stream.chunks.clear()
        self.streams.pop(stream.stream_id, None)
        if not self.streams:
            self.idle_since = self.loop.time()
            if self.draining:
                self._close()
                return
        self._flush()

    def _answer_error(self, stream: H2Stream, error: FastgateError) -> None:
        """A client error found here (or an internal one): fastgate's JSON error on the stream, one access line."""
        if self.closed or stream.reset:
            return
        request_id = new_request_id()
        body = json.dumps(
            {"error": error.code, "detail": error.detail, "request_id": request_id.decode()}, separators=(",", ":")
        ).encode()
        fields = [
            (b":status", b"%d" % error.status_code),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"x-request-id", request_id),
        ]
        try:
            self.conn.send_headers(stream.stream_id, fields)
            self.conn.send_data(stream.stream_id, body, end_stream=True)
        except (ProtocolError, StreamClosedError):
            pass  # no window for a short body (a client that opened none), or gone: the reset below says enough
        stream.response_started = stream.response_complete = True
        if stream.more_body:
            self._reset(stream.stream_id, ErrorCodes.NO_ERROR)
            stream.reset = True
        if stream.stream_id in self.streams and stream.cancel_scope is None:
            self.streams.pop(stream.stream_id, None)  # never served: no task will finish it
        self._flush()
        if access_logger.isEnabledFor(logging.INFO):
            access_logger.info(
                '%s - "%s %s HTTP/2.0" %d 0 0.0ms request_id=%s (%s: %s)',
                self._peer(),
                stream.method or "-",
                stream.target[:200].decode("latin-1") or "-",
                error.status_code,
                request_id.decode(),
                error.code,
                error.detail,
            )

    def asgi_scope(self, stream: H2Stream) -> dict[str, Any]:
        target = stream.target
        path, _, query = target.partition(b"?")
        decoded = stream.path
        root = self.root_path
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "2",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": stream.method,
            "root_path": root,
            "path": root + decoded if root else decoded,
            "raw_path": root.encode("ascii") + path if root else path,
            "query_string": query,
            "headers": stream.headers,
            "state": self.app_state.copy(),
            "extensions": {"http.response.trailers": _NO_OPTIONS},
        }

    # -- used by the streams --------------------------------------------------------------------------------

    def acknowledge(self, stream: H2Stream) -> None:
        size, stream.unacked = stream.unacked, 0
        self._acknowledge(stream.stream_id, size)
        self._flush()

    def _acknowledge(self, stream_id: int, size: int) -> None:
        if size and not self.closed:
            try:
                self.conn.acknowledge_received_data(size, stream_id)
            except (ProtocolError, StreamClosedError):
                pass  # the stream is closed: h2 has no window to open for it

    def send_headers(self, stream: H2Stream, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        if self.closed or stream.reset:
            return
        try:
            self.conn.send_headers(stream.stream_id, fields, end_stream=end)
        except StreamClosedError:
            stream.lost()
            return
        self._flush()

    def end_stream(self, stream: H2Stream) -> None:
        if self.closed or stream.reset:
            return
        try:
            self.conn.end_stream(stream.stream_id)
        except StreamClosedError:
            stream.lost()
            return
        self._flush()

    async def send_data(self, stream: H2Stream, data: bytes, end: bool) -> None:
        """DATA frames for ``data``, within the client's windows and frame size; waits for the window when shut."""
        conn = self.conn
        view = memoryview(data)
        sent = flushed = 0
        total = len(data)
        while sent < total:
            if self.closed or stream.reset:
                return
            try:
                window = conn.local_flow_control_window(stream.stream_id)
            except StreamClosedError:
                stream.lost()
                return
            size = min(window, conn.max_outbound_frame_size, total - sent)
            if size <= 0:
                self._flush_now()
                await stream.wait_window()
                continue
            last = sent + size >= total
            conn.send_data(stream.stream_id, view[sent : sent + size], end_stream=end and last)
            sent += size
            if sent - flushed >= WRITE_HIGH or last:
                flushed = sent
                self._flush_now()  # the frames of a piece go out in one write (a frame costs ~10 µs of h2 already)
                if self.write_paused:
                    await self.drain()

    def reset_stream(self, stream: H2Stream) -> None:
        if not stream.reset:
            stream.reset = True
            self._reset(stream.stream_id, ErrorCodes.INTERNAL_ERROR if stream.response_started else ErrorCodes.CANCEL)
            self._flush()

    def _reset(self, stream_id: int, code: ErrorCodes) -> None:
        if self.closed:
            return
        try:
            self.conn.reset_stream(stream_id, code)
        except (ProtocolError, StreamClosedError):
            pass

    def _flush(self) -> None:
        """Write what the codec has for the client at the end of this loop turn: the frames of every stream that
        sends in the same turn go out in one write (one system call for ten responses under ``h2load -m 10``)."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    # -- ending the connection ------------------------------------------------------------------------------

    def goaway(self) -> None:
        """Graceful: no new streams; the connection closes when its open streams are done."""
        if self.draining or self.closed:
            return
        self.draining = True
        self._flush_now()  # what the codec holds goes first
        self.transport.write(graceful_goaway(self.conn.highest_inbound_stream_id))  # open streams go on answering
        if not self.streams:
            self._close()

    def shutdown(self) -> None:
        """Uvicorn's graceful shutdown: GOAWAY; open streams finish (within ``graceful_timeout``)."""
        self._stopping = True
        if self._linger_until:
            self.abort()  # closed already, only lingering: no reason to keep the shutdown waiting
            return
        self.goaway()

    def _calm(self, why: str) -> None:
        error_logger.warning("HTTP/2 client %s: %s; GOAWAY ENHANCE_YOUR_CALM", self._peer(), why)
        self._close_with(ErrorCodes.ENHANCE_YOUR_CALM, None)

    def _close_with(self, code: ErrorCodes, why: str | None) -> None:
        if why is not None:
            error_logger.info("%s (client %s); GOAWAY", why, self._peer())
        if not self.closed:
            try:
                self.conn.close_connection(code, last_stream_id=self.conn.highest_inbound_stream_id)
            except ProtocolError:
                pass
            self._flush()
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self._flush_now()  # what is owed goes out before the close (a GOAWAY, the last stream's end)
            self.closed = True
            self._linger()
        for stream in list(self.streams.values()):
            stream.lost()

    def _linger(self) -> None:
        """Close after GOAWAY as serving/protocol.py closes after an early answer (nginx's lingering close): FIN once
        the GOAWAY has gone, then what the client still sends is read and dropped until it closes, is silent for
        ``lingering_timeout``, has sent ``max_lingering_bytes`` or ``lingering_time`` has passed. A plain close with
        the client's frames unread would make the kernel send RST, which can destroy the GOAWAY (and its error code
        and last stream id) before the client reads it. Over TLS there is no half-close, and a graceful shutdown
        waits for no client: closed at once."""
        limits = self.limits
        transport = self.transport
        if self._stopping or not limits.lingering_time or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        now = self.loop.time()
        self._linger_until = now + limits.lingering_time
        self._linger_idle = now + limits.lingering_timeout
        self._linger_left = limits.max_lingering_bytes

    def _discard(self, size: int) -> None:
        self._linger_left -= size
        if self._linger_left < 0:
            self._end_linger()
        else:
            self._linger_idle = self.loop.time() + self.limits.lingering_timeout

    def _end_linger(self) -> None:
        self._linger_until = 0.0
        self.transport.close()

    def abort(self) -> None:
        if not self.closed or self._linger_until:
            self.closed = True
            self._linger_until = 0.0
            self.transport.abort()
        for stream in list(self.streams.values()):
            stream.lost()

    # -- deadlines (the server's sweep) ---------------------------------------------------------------------

    def check(self, now: float) -> None:
        if self.closed:
            if self._linger_until and (now >= self._linger_until or now >= self._linger_idle):
                self._end_linger()
            return
        limits = self.limits
        gateway = self.gateway
        if gateway is not None and getattr(gateway, "snapshot", None) is not self.snapshot:
            self.goaway()  # the config this connection was made under was retired by a reload
        if self.streams:
            send_timeout = limits.send_timeout
            if send_timeout:
                if self.write_paused and now - self.write_paused_since >= send_timeout:
                    error_logger.info("HTTP/2 client %s stopped reading; connection cut", self._peer())
                    self.abort()
                    return
                for stream in list(self.streams.values()):
                    if stream.window_since and now - stream.window_since >= send_timeout:
                        error_logger.info(
                            "HTTP/2 client %s opened no window for stream %d in %gs; stream reset",
                            self._peer(),
                            stream.stream_id,
                            send_timeout,
                        )
                        stream.disconnected = True
                        self.reset_stream(stream)
                        stream.lost()
        elif self.idle_since:
            timeout = limits.keepalive_timeout
            if timeout and now - self.idle_since >= timeout:
                self.goaway()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "-"


def _gateway_of(app: Any) -> Any:
    """The Gateway served (found through Uvicorn's middleware wrappers), or None."""
    for _ in range(8):
        if hasattr(app, "snapshot") and hasattr(app, "server_limits"):
            return app
        app = getattr(app, "app", None)
        if app is None:
            break
    return None
