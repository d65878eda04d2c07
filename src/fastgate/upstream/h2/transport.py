"""The HTTP/2 transport: :class:`H2Transport` sends an :class:`UpstreamRequest` as one stream of a pooled connection.

It implements the ``Transport``/``UpstreamResponse`` seam of ``upstream/transport.py`` as the HTTP/1.1 transport
does, with the same errors and timeouts: connect failure 502 (503 when the pool stays full), ``timeouts.read``
for the response head and ``timeouts.stream_idle`` between body pieces (504), ``timeouts.write`` for progress on
the request body (504). A stream the upstream never processed (above a GOAWAY's last stream id, or reset with
REFUSED_STREAM) is sent once more on another connection when its body was not touched yet, as the HTTP/1.1
transport replays a request on a stale keep-alive connection; failing again, it is raised as a connect error
(nothing was processed, so the cluster may retry it whatever the method). With a body already under way it is an
:class:`UpstreamProtocolError`, retried only as the retry policy and its replay buffer allow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import anyio.abc

from ...config import UpstreamConfig
from ...exceptions import BadRequest, UpstreamConnectError, UpstreamError
from ...observability.logging import TRACE, upstream_logger
from ..pool import sweep_interval
from ..transport import CHUNKED, PoolOwner, UpstreamRequest, UpstreamResponse
from .connection import Http2Connection
from .pool import Http2Pool
from .pump import BodyPump
from .request import request_headers
from .stream import Stream


class H2Response:
    __slots__ = (
        "status",
        "headers",
        "target",
        "tries",
        "aclose_waits",
        "_conn",
        "_stream",
        "_pool",
        "_idle_timeout",
        "_pump",
    )

    def __init__(
        self,
        pool: Http2Pool,
        conn: Http2Connection,
        stream: Stream,
        idle_timeout: float | None,
        pump: BodyPump | None = None,
    ) -> None:
        self._pump = pump
        self.aclose_waits = pump is not None  # it waits for the request body's sender to stop
        self.status = stream.status
        self.headers = stream.headers
        self.target = pool.target
        self.tries = 1
        self._pool = pool
        self._conn = conn
        self._stream: Stream | None = stream
        self._idle_timeout = idle_timeout

    @property
    def trailers(self) -> list[tuple[bytes, bytes]] | None:
        stream = self._stream
        if stream is None:
            return None
        return stream.trailers if stream.ended and not stream.pieces and stream.exc is None else None

    async def read(self) -> bytes:
        assert self._stream is not None, "response already closed"
        return await self._conn.read(self._stream, self._idle_timeout)

    def read_buffered(self) -> tuple[bytes, bool]:
        assert self._stream is not None, "response already closed"
        return self._conn.read_buffered(self._stream)

    async def aclose(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            await pump.aclose()
        stream = self._stream
        if stream is not None and stream.id in self._conn.streams:
            self._conn.finish(stream)  # RST_STREAM(CANCEL) when the body was not read to its end
            self._pool.release(self._conn)

    def __repr__(self) -> str:
        return f"<H2Response {self.status} {self._stream!r} on {self._conn!r}>"


class H2Transport(PoolOwner[Http2Pool]):
    """HTTP/2 to one upstream target (``protocol: h2c`` or ``h2``), streams multiplexed over pooled connections.

    >>> async with H2Transport("api", UpstreamConfig(url="http://127.0.0.1:50051", protocol="h2c")) as transport:
    ...     response = await transport.send(UpstreamRequest(b"GET", b"/", [(b"host", b"api")]), None)
    """

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self.pool = Http2Pool(name, config)
        self._scheme = b"https" if config.protocol == "h2" else b"http"
        self._path_prefix = config.path_prefix
        self._authority = config.authority
        t = config.timeouts
        self._timeouts = (t.read, t.write, t.stream_idle)
        self._task_group: anyio.abc.TaskGroup | None = None

    def __repr__(self) -> str:
        return f"<H2Transport {self.pool!r}>"

    def sweep_interval(self) -> float:
        """Often enough for the keep-alive PINGs too."""
        interval = sweep_interval(self.config)
        if self.config.http2.keepalive_interval:
            interval = min(interval, max(0.005, self.config.http2.keepalive_interval / 10))
        return interval

    async def send(self, request: UpstreamRequest, body: AsyncIterator[bytes] | None) -> UpstreamResponse:
        headers = request_headers(
            request, scheme=self._scheme, path_prefix=self._path_prefix, default_authority=self._authority
        )
        timeouts = request.timeouts
        read_timeout, write_timeout, idle_timeout = (
            self._timeouts if timeouts is None else (timeouts.read, timeouts.write, timeouts.stream_idle)
        )
        has_body = body is not None and request.body_length is not None and request.body_length != 0
        retried = False
        while True:
            conn = await self.pool.acquire(timeouts)
            try:
                stream = conn.open_stream(headers, end_stream=not has_body)
            except UpstreamError:
                self.pool.unreserve(conn)
                if retried:
                    raise UpstreamConnectError(
                        "upstream refused the stream twice", self.name, self.pool.target
                    ) from None
                retried = True
                continue
            touched = False
            pump: BodyPump | None = None
            try:
                if has_body:
                    assert body is not None
                    touched = True
                    # Full duplex: the body goes up on its own task while we wait for the head (pump.py).
                    sending = self._send_body(conn, stream, request.body_length, body, write_timeout)
                    pump = BodyPump(sending, stream, self.name, self.pool.target)
                elif body is not None:
                    async for _ in body:  # a body iterator with no framing: nothing is sent, as on HTTP/1.1
                        pass
                await conn.wait_head(stream, read_timeout, pump.failed if pump is not None else None)
            except UpstreamError as exc:
                if pump is not None:
                    with anyio.CancelScope(shield=True):
                        await pump.aclose()
                conn.finish(stream)
                self.pool.release(conn)
                if not stream.retry_safe:
                    raise
                if not touched and not retried:
                    retried = True
                    if upstream_logger.isEnabledFor(TRACE):
                        upstream_logger.log(TRACE, "%s: stream refused (%s); sending it again", self.name, exc.detail)
                    continue
                if not touched:
                    raise UpstreamConnectError(f"{exc.detail} (not processed)", self.name, self.pool.target) from exc
                raise
            except BaseException:
                if pump is not None:
                    with anyio.CancelScope(shield=True):
                        await pump.aclose()
                conn.finish(stream)
                self.pool.release(conn)
                raise
            return H2Response(self.pool, conn, stream, idle_timeout, pump)

    async def _send_body(
        self,
        conn: Http2Connection,
        stream: Stream,
        length: int | None,
        body: AsyncIterator[bytes],
        write_timeout: float | None,
    ) -> None:
        sent = 0
        async for chunk in body:
            if stream.ended:
                return  # the upstream answered in full before taking the body (a 413, say): stop, relay its answer
            if chunk:
                sent += len(chunk)
                if length is not None and length != CHUNKED and sent > length:
                    raise BadRequest(f"request body longer than its Content-Length ({length})")
                await conn.send_data(stream, chunk, write_timeout)
        if length is not None and length != CHUNKED and sent != length:
            raise BadRequest(f"request body ended after {sent} of its {length} bytes")
        conn.end_stream(stream)
