"""One HTTP/2 connection to an upstream target, as an ``asyncio.Protocol``: many streams over one socket.

How this works
--------------
The codec (``fastgate.http2.codec``, python-hyper's sans-IO ``h2``) turns bytes into events and calls into frames;
this class feeds it what the socket delivers, sorts its events onto :class:`~.stream.Stream` objects and writes
what it has to send after every step (``_flush``). Streams are opened by the transport (``open_stream``), which
then sends the body (``send_data`` / ``end_stream``), waits for the head (``wait_head``) and reads (``read``).

* Flow control, inbound: a stream's window (``STREAM_WINDOW``) is handed back only as its pieces are read, so a
  slow reader stops its own stream; the connection window is the sum of the stream windows, so stopped streams
  can never starve the others (memory per connection stays bounded by it either way).
* Flow control, outbound: ``send_data`` sends no more than the peer's stream and connection windows and its
  maximum frame size allow, and waits for a WINDOW_UPDATE (or a SETTINGS change) for the rest; then, like the
  HTTP/1.1 connection, it waits while the socket's write buffer is full.
* GOAWAY (RFC 9113 §6.8): the connection is ``draining`` (no new streams); streams above the last id the peer
  names fail as retry-safe (``admission.refused_by_goaway``), the others run to their end. REFUSED_STREAM resets
  are retry-safe too; other resets fail the stream with :class:`UpstreamProtocolError`.
* Timeouts: a waiting stream sets ``deadline`` (loop time); the pool's sweeper fails streams whose deadline
  passed (``expire``) and sends the keep-alive PING (``ping``). No timer per request.
* Loss of the connection fails every stream not yet ended with :class:`UpstreamProtocolError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ...exceptions import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from ...http2 import codec
from ...observability.logging import upstream_logger
from .admission import REFUSED_STREAM, refused_by_goaway, reset_is_retry_safe, stream_limit
from .request import response_head
from .stream import Stream

STREAM_WINDOW = 512 * 1024  # as the HTTP/1.1 connection's HIGH_WATER: what one unread response may hold
MAX_WINDOW = 2**31 - 1


class Http2Connection(asyncio.Protocol):
    def __init__(
        self,
        upstream: str,
        loop: asyncio.AbstractEventLoop,
        *,
        target: str = "",
        max_streams: int = 100,
        max_header_list: int = 65536,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.target = target
        self.loop = loop
        self.local_max = max_streams
        self.transport: asyncio.Transport | None = None
        self.codec = codec.client_connection(initial_window=STREAM_WINDOW, max_header_list=max_header_list)
        self.streams: dict[int, Stream] = {}
        self.reserved = 0  # streams admitted by the pool and not opened yet
        self.closed = False
        self.goaway = False
        self.requests = 0
        self.idle_since = loop.time()
        self.ping_due = 0.0  # when an unanswered PING fails the connection (0: none outstanding)
        self._pings = 0
        self._on_change = on_change  # the pool's: room for streams may have changed
        self._write_paused = False
        self._senders: set[Stream] = set()  # streams waiting for window or for the socket to drain
        # The peer's first SETTINGS (RFC 9113 §3.4: its preface): the pool waits for it before admitting streams,
        # so that a new connection is never given more streams than the peer allows.
        self.settled: asyncio.Future[None] = loop.create_future()
        self.unsettled: UpstreamError | None = None  # why the connection ended before the peer's SETTINGS

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("draining" if self.goaway else "open")
        return f"<Http2Connection {self.upstream} {state} streams={len(self.streams)}/{self.limit}>"

    # -- admission (admission.StreamSlots) -------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.goaway or self.closed

    @property
    def in_use(self) -> int:
        return len(self.streams) + self.reserved

    @property
    def limit(self) -> int:
        peer = self.codec.remote_settings.max_concurrent_streams
        return stream_limit(None if peer >= MAX_WINDOW else peer, self.local_max)

    # -- streams, used by the transport ----------------------------------------------------------------------

    def open_stream(self, headers: list[tuple[bytes, bytes]], *, end_stream: bool) -> Stream:
        """Send a request's HEADERS on a new stream (one the pool reserved for the caller)."""
        self.reserved -= 1
        if self.closed or self.goaway:
            raise self._refused("connection closing before the request")
        try:
            stream_id = self.codec.get_next_available_stream_id()
            self.codec.send_headers(stream_id, headers, end_stream=end_stream)
        except codec.ProtocolError as exc:  # stream ids used up, or the codec refuses: take no more here
            self.goaway = True
            raise self._refused(f"no new stream: {exc}") from exc
        stream = Stream(stream_id)
        stream.sent_end = end_stream
        self.streams[stream_id] = stream
        self.requests += 1
        self._flush()
        return stream

    async def send_data(self, stream: Stream, data: bytes, write_timeout: float | None) -> None:
        """Send ``data`` on ``stream`` as the peer's windows and frame size allow, waiting for them as needed."""
        view = memoryview(data)
        while view:
            if stream.exc is not None:
                raise stream.exc
            if stream.head_done and stream.ended:
                return  # the peer answered in full before taking the body: stop sending (RFC 9113 §8.1)
            room = min(self.codec.local_flow_control_window(stream.id), self.codec.max_outbound_frame_size)
            if room <= 0:
                await self._wait_to_send(stream, write_timeout, "flow-control window")
                continue
            piece, view = view[:room], view[room:]
            try:
                self.codec.send_data(stream.id, piece.tobytes())
            except codec.ProtocolError as exc:
                raise stream.exc or self._broken(stream, f"cannot send the body: {exc}") from exc
            self._flush()
            if self._write_paused:
                await self._wait_to_send(stream, write_timeout, "write progress")

    def end_stream(self, stream: Stream) -> None:
        if stream.exc is not None:
            raise stream.exc
        if not stream.sent_end and not stream.ended:
            stream.sent_end = True
            try:
                self.codec.end_stream(stream.id)
            except codec.ProtocolError as exc:
                raise stream.exc or self._broken(stream, f"cannot end the request: {exc}") from exc
            self._flush()

    async def wait_head(
        self, stream: Stream, limit: float | None, failed: Callable[[], BaseException | None] | None = None
    ) -> None:
        """Until the response head has come; ``failed``: the request body's sender, whose error ends the wait."""
        while not stream.head_done:
            if stream.exc is not None:
                raise stream.exc
            if failed is not None and (exc := failed()) is not None:
                raise exc
            await self._wait(stream, limit, "response headers")

    async def read(self, stream: Stream, idle_timeout: float | None) -> bytes:
        """The next body piece, ``b""`` at the end; the piece's window goes back to the peer now."""
        while True:
            if stream.pieces:
                data, size = stream.pieces.popleft()
                self._acknowledge(stream, size)
                return data
            if stream.exc is not None:
                raise stream.exc
            if stream.ended:
                return b""
            await self._wait(stream, idle_timeout, "response body data")

    def read_buffered(self, stream: Stream) -> tuple[bytes, bool]:
        pieces = stream.pieces
        if not pieces:
            return b"", stream.ended and stream.exc is None
        data = b"".join(piece for piece, _ in pieces)
        pieces.clear()
        self._acknowledge(stream, stream.unacked)
        return data, stream.ended and stream.exc is None

    def finish(self, stream: Stream) -> None:
        """Forget ``stream``; RST_STREAM(CANCEL) first when it is still open (RFC 9113 §8.1: the upstream learns
        that nobody wants the rest), NO_ERROR when only our side is (the response was read whole). A stream the
        peer refused (GOAWAY, REFUSED_STREAM) is closed for it already."""
        if self.streams.pop(stream.id, None) is None:
            return
        self._senders.discard(stream)
        if not (stream.ended and stream.sent_end) and not stream.retry_safe and not self.closed:
            code = codec.ErrorCodes.NO_ERROR if stream.ended else codec.ErrorCodes.CANCEL
            try:
                self.codec.reset_stream(stream.id, code)
            except codec.ProtocolError:
                pass  # closed meanwhile by the peer
        if stream.unacked:  # unread body: hand its share of the connection window back
            self._acknowledge(stream, stream.unacked)
        stream.pieces.clear()
        if not self.streams:
            self.idle_since = self.loop.time()
        self._flush()
        self._changed()

    # -- the pool's sweeper ------------------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Fail the streams whose deadline passed (504), resetting them; close on an unanswered PING."""
        for stream in [s for s in self.streams.values() if s.deadline and now >= s.deadline]:
            stream.fail(
                UpstreamTimeout(
                    f"no {stream.waiting_for} from upstream within {stream.armed_timeout:g}s",
                    self.upstream,
                    self.target,
                )
            )
        for stream in [s for s in self.streams.values() if s.send_deadline and now >= s.send_deadline]:
            stream.fail(
                UpstreamTimeout(
                    f"no {stream.send_waiting_for} from upstream within {stream.send_armed:g}s",
                    self.upstream,
                    self.target,
                )
            )
        if self.ping_due and now >= self.ping_due:
            upstream_logger.warning(
                "%s (%s): PING not answered; closing the HTTP/2 connection", self.upstream, self.target
            )
            self.close(abort=True)

    def ping(self, timeout: float) -> None:
        """Send a keep-alive PING; no ACK within ``timeout`` seconds closes the connection (see ``expire``)."""
        if self.closed or self.ping_due:
            return
        self._pings += 1
        self.codec.ping(self._pings.to_bytes(8, "big"))
        self.ping_due = self.loop.time() + timeout
        self._flush()

    def close(self, abort: bool = False) -> None:
        """Close the socket: with a GOAWAY first unless ``abort``; every open stream fails."""
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                try:
                    self.codec.close_connection()
                    self.transport.write(self.codec.data_to_send())
                except codec.ProtocolError:
                    pass
                self.transport.close()
        self._fail_all("connection closed")

    # -- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        self.codec.initiate_connection()
        # RFC 9113 §6.9.2: the connection window starts at 64 KiB whatever SETTINGS say; open it to the sum of the
        # stream windows, so streams stopped by slow readers can never hold it all.
        wanted = min(MAX_WINDOW, STREAM_WINDOW * max(self.local_max, 1))
        if wanted > 65535:
            self.codec.increment_flow_control_window(wanted - 65535)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.codec.receive_data(data)
        except codec.ProtocolError as exc:
            self._flush()  # the codec's GOAWAY, if it wrote one
            self._fail_all(f"HTTP/2 protocol error from upstream: {exc}")
            self.close(abort=True)
            return
        for event in events:
            self._handle(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all("upstream closed the connection")
        self._changed()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_senders()

    # -- events ------------------------------------------------------------------------------------------------

    def _handle(self, event: codec.Event) -> None:
        if isinstance(event, codec.DataReceived):
            stream = self.streams.get(event.stream_id)
            size = event.flow_controlled_length
            if stream is None or stream.exc is not None:
                self.codec.acknowledge_received_data(size, event.stream_id)  # nobody will read it
                return
            stream.pieces.append((event.data, size))
            stream.unacked += size
            stream.wake()
        elif isinstance(event, codec.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.status, stream.headers = response_head(event.headers)
                stream.head_done = True
                stream.wake()
        elif isinstance(event, codec.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended = True
                stream.wake()
                self._wake_senders()
        elif isinstance(event, codec.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.trailers = list(event.headers)
        elif isinstance(event, codec.WindowUpdated | codec.RemoteSettingsChanged):
            self._wake_senders()
            if isinstance(event, codec.RemoteSettingsChanged):
                if not self.settled.done():
                    self.settled.set_result(None)
                self._changed()
        elif isinstance(event, codec.StreamReset):
            self._reset(event)
        elif isinstance(event, codec.PingAckReceived):
            self.ping_due = 0.0
        elif isinstance(event, codec.ConnectionTerminated):
            self._goaway(event)
        # InformationalResponseReceived (1xx): not relayed; PingReceived: the codec answered it

    def _reset(self, event: codec.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        code = event.error_code
        if stream.ended and code == codec.ErrorCodes.NO_ERROR:
            stream.sent_end = True  # RFC 9113 §8.1: the response is whole; the peer wants no more of the body
            self._wake_senders()
            return
        if reset_is_retry_safe(code) and not stream.head_done:
            stream.fail(self._refused("stream refused by upstream (REFUSED_STREAM)"), retry_safe=True)
        else:
            name = getattr(code, "name", str(code))
            where = "mid-body" if stream.head_done else "before the response headers"
            stream.fail(
                UpstreamProtocolError(f"upstream reset the stream {where} ({name})", self.upstream, self.target)
            )
        self._wake_senders()

    def _goaway(self, event: codec.ConnectionTerminated) -> None:
        self.goaway = True
        last = event.last_stream_id if event.last_stream_id is not None else 0
        for stream_id in refused_by_goaway(self.streams, last):
            self.streams[stream_id].fail(self._refused("upstream sent GOAWAY before the stream"), retry_safe=True)
        if event.error_code != codec.ErrorCodes.NO_ERROR:
            name = getattr(event.error_code, "name", str(event.error_code))
            upstream_logger.warning("%s (%s): GOAWAY %s from upstream", self.upstream, self.target, name)
        self._wake_senders()
        self._changed()
        if not self.streams:
            self.close()
        else:
            codec.drain_after_goaway(self.codec)  # the streams at or below the last id run to their end

    # -- helpers -----------------------------------------------------------------------------------------------

    def _refused(self, detail: str) -> UpstreamError:
        return UpstreamProtocolError(detail, self.upstream, self.target)

    def _broken(self, stream: Stream, detail: str) -> UpstreamError:
        stream.fail(UpstreamProtocolError(detail, self.upstream, self.target))
        assert stream.exc is not None
        return stream.exc

    def _acknowledge(self, stream: Stream, size: int) -> None:
        if size:
            stream.unacked -= size
            if not self.closed:
                self.codec.acknowledge_received_data(size, stream.id)
                self._flush()

    async def _wait(self, stream: Stream, limit: float | None, what: str) -> None:
        if limit:
            stream.deadline = self.loop.time() + limit
            stream.waiting_for = what
            stream.armed_timeout = limit
        stream.waiter = waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            stream.waiter = None
            stream.deadline = 0.0

    async def _wait_to_send(self, stream: Stream, limit: float | None, what: str) -> None:
        """The request body's sender waits here, apart from the response's reader (``_wait``): the body may still
        be going up while the response comes down (a bidirectional gRPC stream)."""
        self._senders.add(stream)
        if limit:
            stream.send_deadline = self.loop.time() + limit
            stream.send_waiting_for = what
            stream.send_armed = limit
        stream.send_waiter = waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            stream.send_waiter = None
            stream.send_deadline = 0.0
            self._senders.discard(stream)

    def _wake_senders(self) -> None:
        for stream in list(self._senders):
            stream.wake_sender()

    def _fail_all(self, detail: str) -> None:
        if not self.settled.done():
            # a result, not an exception: nobody may be waiting (a connection the pool already gave up on)
            self.settled.set_result(None)
            self.unsettled = UpstreamProtocolError(
                f"{detail} before its HTTP/2 SETTINGS (does it speak HTTP/2 there?)", self.upstream, self.target
            )
        for stream in list(self.streams.values()):
            stream.fail(UpstreamProtocolError(detail, self.upstream, self.target))

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _flush(self) -> None:
        data = self.codec.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)


__all__ = ["REFUSED_STREAM", "STREAM_WINDOW", "Http2Connection"]
