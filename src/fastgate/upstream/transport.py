"""The seam between the proxy logic and the upstream client.

A :class:`Transport` sends one :class:`UpstreamRequest` and returns an :class:`UpstreamResponse` whose body is
read piece by piece. Two implementations exist: :class:`FastgateTransport` (the default: our HTTP/1.1 client on
``asyncio`` protocols with httptools parsing, chosen by measurement, see PERFORMANCE-NOTES and the README) and
``HttpxTransport`` (httpx's ``AsyncClient``, for users who want its ecosystem). Each translates its client's
errors into :mod:`fastgate.exceptions` here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Generic, Protocol, Self, TypeVar

import anyio

from ..config import RetryPolicy, Timeouts, UpstreamConfig
from ..exceptions import BadRequest, UpstreamProtocolError
from ..observability.logging import TRACE, upstream_logger
from .connection import Connection
from .pool import ConnectionPool, sweep_interval

if TYPE_CHECKING:
    from ..observability.tracing import ExchangeTrace

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

CHUNKED = -1  # UpstreamRequest.body_length for a body of unknown length


@dataclass(slots=True)
class UpstreamRequest:
    """A request ready to go upstream: ``headers`` are final (Host included, hop-by-hop removed).

    ``body_length`` is the Content-Length to send, ``CHUNKED`` for a body of unknown length, or None when the
    request has no body framing at all (a plain GET). ``target`` is the origin-form target as the upstream should
    see it below its URL's path prefix, which the transport adds (each target of an upstream may have its own).
    """

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body_length: int | None = None
    client: bytes = b""  # the client's address, for hash_on: client_ip
    timeouts: Timeouts | None = None  # a route's timeouts over the upstream's (RouteConfig.effective_timeouts)
    retry: RetryPolicy | None = None  # a route's retry policy instead of the upstream's
    trace: ExchangeTrace | None = None  # set when tracing is on: the cluster starts a client span per try
    tries: int = 0  # set by the cluster as it tries: 1 for the first try, 2 for the first retry...


class UpstreamResponse(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]
    target: str
    """The ``host:port`` that answered (for access logs and metrics)."""
    tries: int
    """How many tries it took (1 when the first try answered; set by the cluster)."""
    aclose_waits: bool
    """True when ``aclose()`` may suspend, so callers must shield it from cancellation."""

    @property
    def trailers(self) -> list[tuple[bytes, bytes]] | None:
        """The trailer section after a chunked body, as the upstream sent it (names in its case), once the body has
        ended (``read()`` returned ``b""``); None before that, when the body had none, when it broke off, and with a
        transport that cannot see trailers (httpx). Never part of ``headers``; ``proxy.trailers.response_trailers``
        is what a client may get of it."""
        ...

    async def read(self) -> bytes:
        """The next piece of the body, ``b""`` at its end; raises an UpstreamError if it breaks."""
        ...

    def read_buffered(self) -> tuple[bytes, bool]:
        """Body bytes already received (maybe ``b""``) without waiting, and whether they end the body."""
        ...

    async def aclose(self) -> None:
        """Give the connection back (when the body was read to its end) or drop it."""
        ...


class Transport(Protocol):
    async def __aenter__(self) -> Transport: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def send(self, request: UpstreamRequest, body: AsyncIterator[bytes] | None) -> UpstreamResponse: ...


class FastgateResponse:
    __slots__ = ("status", "headers", "target", "tries", "_conn", "_pool", "_idle_timeout", "_trailers")
    aclose_waits = False

    def __init__(self, pool: ConnectionPool, conn: Connection, idle_timeout: float | None) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self.target = pool.target
        self.tries = 1
        self._conn: Connection | None = conn
        self._pool = pool
        self._idle_timeout = idle_timeout
        # self._trailers: set by aclose(), and read only once the connection is gone

    @property
    def trailers(self) -> list[tuple[bytes, bytes]] | None:
        conn = self._conn
        return self._trailers if conn is None else conn.trailers

    async def read(self) -> bytes:
        assert self._conn is not None, "response already closed"
        return await self._conn.read(self._idle_timeout)

    def read_buffered(self) -> tuple[bytes, bool]:
        assert self._conn is not None, "response already closed"
        return self._conn.read_buffered()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._trailers: list[tuple[bytes, bytes]] | None = conn.trailers  # the connection may be reused now
            reusable = conn.finish()
            if not reusable:
                conn.close(abort=not conn.complete)
            self._pool.release(conn, reusable)

    def __repr__(self) -> str:
        return f"<FastgateResponse {self.status} {self._conn!r}>"


class SweptPool(Protocol):
    def sweep(self, now: float) -> None: ...

    def aclose(self) -> None: ...


PoolT = TypeVar("PoolT", bound=SweptPool)


class PoolOwner(Generic[PoolT]):
    """What our transports share: a pool per target whose deadlines one background task sweeps, from ``async with``
    entered to exited (the HTTP/1.1 and the HTTP/2 transport)."""

    name: str
    config: UpstreamConfig
    pool: PoolT
    _task_group: anyio.abc.TaskGroup | None = None

    def sweep_interval(self) -> float:
        return sweep_interval(self.config)

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._sweeper, name=f"fastgate sweeper {self.name}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.pool.aclose()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            self._task_group = None

    async def _sweeper(self) -> None:
        interval = self.sweep_interval()
        loop = asyncio.get_running_loop()
        while True:
            await anyio.sleep(interval)
            self.pool.sweep(loop.time())


class FastgateTransport(PoolOwner[ConnectionPool]):
    """Our own keep-alive HTTP/1.1 client for one upstream.

    >>> async with FastgateTransport("api", UpstreamConfig(url="http://127.0.0.1:9000")) as transport:
    ...     response = await transport.send(UpstreamRequest(b"GET", b"/", [(b"host", b"api")]), None)
    """

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self.pool = ConnectionPool(name, config)
        self._path_prefix = config.path_prefix  # computed from the URL: once, not per request
        # The upstream's read, write and stream-idle timeouts as plain floats: every attribute read on a pydantic
        # model goes through its __getattr__ hook, several times the cost of a plain one.
        t = config.timeouts
        self._timeouts = (t.read, t.write, t.stream_idle)
        self._task_group: anyio.abc.TaskGroup | None = None

    def __repr__(self) -> str:
        return f"<FastgateTransport {self.pool!r}>"

    async def send(self, request: UpstreamRequest, body: AsyncIterator[bytes] | None) -> UpstreamResponse:
        head = _request_head(request, self._path_prefix)
        no_body = request.method == b"HEAD"
        timeouts = request.timeouts
        read_timeout, write_timeout, idle_timeout = (
            self._timeouts if timeouts is None else (timeouts.read, timeouts.write, timeouts.stream_idle)
        )
        retried = False
        while True:
            conn = await self.pool.acquire(fresh=retried, timeouts=request.timeouts)
            reused = conn.requests > 0
            try:
                conn.start(head, no_body=no_body)
                if body is not None:
                    await self._send_body(conn, request.body_length, body, write_timeout)
                await conn.wait_head(read_timeout)
            except UpstreamProtocolError:
                conn.finish()
                conn.close(abort=True)
                self.pool.release(conn, False)
                # A kept-alive connection the upstream closed just as we used it (RFC 9112 §9.3.1): replay once
                # on a fresh connection, when nothing can have been processed and nothing is lost by replaying.
                if (
                    reused
                    and not retried
                    and not conn.received_any
                    and body is None
                    and (request.method in IDEMPOTENT_METHODS)
                ):
                    retried = True
                    if upstream_logger.isEnabledFor(TRACE):
                        upstream_logger.log(TRACE, "%s: stale keep-alive connection, retrying once", self.name)
                    continue
                raise
            except BaseException:
                conn.finish()
                conn.close(abort=True)
                self.pool.release(conn, False)
                raise
            return FastgateResponse(self.pool, conn, idle_timeout)

    async def _send_body(
        self, conn: Connection, length: int | None, body: AsyncIterator[bytes], write_timeout: float | None
    ) -> None:
        chunked = length == CHUNKED
        sent = 0
        async for chunk in body:
            if conn.head_done:
                conn.keep_alive = False  # the upstream answered early (a 413, say): stop sending, relay its answer
                return
            if chunk:
                sent += len(chunk)
                if not chunked and length is not None and sent > length:
                    raise BadRequest(f"request body longer than its Content-Length ({length})")
                conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await conn.drain(write_timeout)
        if chunked:
            conn.write(b"0\r\n\r\n")
        elif length is not None and sent != length:
            # never leave the upstream waiting for bytes that will not come
            raise BadRequest(f"request body ended after {sent} of its {length} bytes")


def _request_head(request: UpstreamRequest, path_prefix: bytes = b"") -> bytes:
    parts = [request.method, b" ", path_prefix + request.target, b" HTTP/1.1\r\n"]
    for name, value in request.headers:
        parts += (name, b": ", value, b"\r\n")
    length = request.body_length
    if length == CHUNKED:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif length is not None:
        parts += (b"content-length: ", b"%d" % length, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def create_target_transport(name: str, config: UpstreamConfig) -> Transport:
    """The transport named in ``config.transport`` for the first (usually the only) target of ``config``."""
    if config.transport == "httpx":
        from .httpx_transport import HttpxTransport

        return HttpxTransport(name, config)
    if config.protocol != "http1":
        from .h2.transport import H2Transport

        return H2Transport(name, config)
    return FastgateTransport(name, config)


def create_transport(name: str, config: UpstreamConfig) -> Transport:
    """The transport for the upstream ``name``: a :class:`~fastgate.upstream.cluster.Cluster` of its targets.

    With a ``circuit_breaker``, a :class:`~fastgate.upstream.guarded.GuardedCluster` (the plain one pays nothing).
    """
    if config.circuit_breaker is not None:
        from .guarded import GuardedCluster

        return GuardedCluster(name, config)
    from .cluster import Cluster

    return Cluster(name, config)
