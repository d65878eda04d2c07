"""HTTP/2 connections to one upstream target, shared by many streams (one pool per target per worker).

How this works
--------------
``acquire()`` returns a connection with a stream slot reserved for the caller: the first one with room
(``admission.pick_connection``); else it opens one, if ``admission.should_open`` allows it within
``limits.max_connections`` (a cold burst shares the connection being opened); else it queues, first come first
served, until a slot frees or ``timeouts.pool`` passes (then :class:`UpstreamUnavailable`, 503, as the HTTP/1.1
pool). With an upstream ``circuit_breaker`` (``breaker``, shared with the pools of the upstream's other targets,
``siblings``), its ``max_connections`` counts the connections of all of them and a caller that would wait past
``max_pending_requests`` is refused at once (:class:`UpstreamOverflow`), as in ``upstream/pool.py``. Whatever may
make room (a stream finished, a connection opened, closed or refused, the peer's SETTINGS) wakes every waiter, which
tries again in queue order.

``sweep(now)`` runs from the transport's background task: it fails streams whose deadline passed, drops closed
and drained connections, sends the keep-alive PING on connections idle for ``http2.keepalive_interval`` (an
unanswered one closes its connection at the next interval), and without an interval closes connections idle
for ``limits.keepalive_expiry``; idle connections past ``limits.max_keepalive_connections`` are closed too.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import OrderedDict

from ...config import Timeouts, UpstreamConfig
from ...exceptions import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamOverflow,
    UpstreamUnavailable,
)
from ...observability.logging import TRACE, upstream_logger
from ...policies.breaker import CircuitBreaker
from ..pool import PoolStats
from ..tls import client_context
from .admission import pick_connection, should_open
from .connection import Http2Connection


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The upstream TLS context (``upstream/tls.py``) offering only ``h2`` by ALPN."""
    context = client_context(ca_file)
    context.set_alpn_protocols(["h2"])
    return context


class Http2Pool:
    multiplexed = True  # how upstream/guarded.py tells it from the HTTP/1.1 pool without importing this module

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.host = config.host
        self.port = config.port
        self.target = config.target
        self.timeouts = config.timeouts
        self.limits = config.limits
        self.max_header_list = config.max_response_header_bytes
        self.local_max = config.http2.max_concurrent_streams
        self.keepalive_interval = config.http2.keepalive_interval
        self._ssl = tls_context(config.ca_file) if config.protocol == "h2" else None
        self.connections: list[Http2Connection] = []
        self._connecting = 0
        self._waiters: OrderedDict[asyncio.Future[None], None] = OrderedDict()
        self._closed = False
        self._connects = self._reuses = self._connect_errors = self._discards = self._pool_timeouts = 0
        self._trace = upstream_logger.isEnabledFor(TRACE)
        # The upstream's circuit breaker and the pools it spans (upstream/guarded.py sets both); None: no breaker.
        self.breaker: CircuitBreaker | None = None
        self.siblings: list[Http2Pool] = [self]

    def __repr__(self) -> str:
        streams = sum(len(c.streams) for c in self.connections)
        return (
            f"<Http2Pool {self.name} {self.target} connections={len(self.connections)} streams={streams}"
            f" connecting={self._connecting} waiting={len(self._waiters)}>"
        )

    def stats(self) -> PoolStats:
        busy = sum(1 for c in self.connections if c.streams)
        return PoolStats(
            busy=busy,
            idle=len(self.connections) - busy,
            connecting=self._connecting,
            waiting=len(self._waiters),
            connects=self._connects,
            reuses=self._reuses,
            connect_errors=self._connect_errors,
            discards=self._discards,
            pool_timeouts=self._pool_timeouts,
        )

    @property
    def size(self) -> int:
        return len(self.connections) + self._connecting

    async def acquire(self, timeouts: Timeouts | None = None) -> Http2Connection:
        """A connection with one stream slot reserved for the caller (``open_stream`` takes it)."""
        if self._closed:
            raise UpstreamUnavailable("gateway is shutting down", self.name, self.target)
        timeouts = timeouts or self.timeouts
        waiter: asyncio.Future[None] | None = None
        pending = False  # counted among the breaker's pending requests
        loop = asyncio.get_running_loop()
        deadline = None if timeouts.pool is None else loop.time() + timeouts.pool
        try:
            while True:
                conn = self._take()
                if conn is not None:
                    return conn
                demand = len(self._waiters) + (0 if waiter is not None else 1)
                if should_open(
                    open_connections=len(self.connections),
                    connecting=self._connecting,
                    demand=demand,
                    local_limit=self.local_max,
                    max_connections=self.limits.max_connections,
                ) and (self.breaker is None or self.breaker.may_open_connection(sum(p.size for p in self.siblings))):
                    if waiter is not None:
                        self._waiters.pop(waiter, None)
                        waiter = None
                    await self._connect(timeouts)
                    continue
                if self._closed:
                    raise UpstreamUnavailable("gateway is shutting down", self.name, self.target)
                if waiter is None:
                    if self.breaker is not None and not pending:
                        which = self.breaker.try_start_pending()
                        if which is not None:
                            limit = getattr(self.breaker.thresholds, which)
                            raise UpstreamOverflow(which, self.name, self.target, limit)
                        pending = True
                    waiter = loop.create_future()
                    self._waiters[waiter] = None
                elif waiter.done():
                    self._waiters.pop(waiter, None)
                    waiter = loop.create_future()
                    self._waiters[waiter] = None
                    self._waiters.move_to_end(waiter, last=False)  # keep the place in the queue
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise self._exhausted(timeouts)
                try:
                    # A raw Task.cancel at the deadline (asyncio.timeout): safe, the block awaits only our own future.
                    async with asyncio.timeout(left):
                        await waiter
                except TimeoutError:
                    if not waiter.done() or waiter.cancelled():
                        raise self._exhausted(timeouts) from None
        finally:
            if pending:
                assert self.breaker is not None
                self.breaker.finish_pending()
            if waiter is not None:
                self._waiters.pop(waiter, None)
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # we were woken but leave: the room is someone else's

    def release(self, conn: Http2Connection) -> None:
        """A stream of ``conn`` has finished (``conn.finish`` was called): room for a waiter, maybe."""
        if conn.closed or (conn.goaway and not conn.streams):
            self._drop(conn, "drained" if not conn.closed else "closed")
        self._wake()

    def unreserve(self, conn: Http2Connection) -> None:
        """Give back a slot taken by ``acquire`` and never used (the caller failed before opening its stream)."""
        conn.reserved -= 1
        self._wake()

    def sweep(self, now: float) -> None:
        for conn in list(self.connections):
            conn.expire(now)
            if conn.closed or (conn.goaway and not conn.streams):
                self._drop(conn, "closed" if conn.closed else "drained")
        idle = [c for c in self.connections if not c.streams and not c.reserved]
        interval = self.keepalive_interval
        for conn in idle[self.limits.max_keepalive_connections :]:
            self._drop(conn, "over max_keepalive_connections")
        for conn in idle[: self.limits.max_keepalive_connections]:
            if interval is None:
                if now - conn.idle_since >= self.limits.keepalive_expiry:
                    self._drop(conn, "keep-alive expired")
            elif now - conn.idle_since >= interval and not conn.ping_due:
                conn.ping(interval)
                conn.idle_since = now  # the next PING one interval after this one
        self._wake()

    def aclose(self) -> None:
        self._closed = True
        for conn in list(self.connections):
            self._drop(conn, "gateway shutdown")
            conn.close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- internals ---------------------------------------------------------------------------------------------

    def _take(self) -> Http2Connection | None:
        index = pick_connection(self.connections)
        if index is None:
            return None
        conn = self.connections[index]
        conn.reserved += 1
        if conn.requests:
            self._reuses += 1
        return conn

    def _exhausted(self, timeouts: Timeouts) -> UpstreamUnavailable:
        self._pool_timeouts += 1
        return UpstreamUnavailable(
            f"connection pool exhausted: {self.limits.max_connections} HTTP/2 connections full for {timeouts.pool:g}s",
            self.name,
            self.target,
        )

    async def _connect(self, timeouts: Timeouts) -> None:
        """Open a connection and wait for the peer's SETTINGS, both within the connect timeout."""
        loop = asyncio.get_running_loop()
        connect_timeout = timeouts.connect
        conn: Http2Connection | None = None
        self._connecting += 1
        try:
            # asyncio.timeout cancels with a raw Task.cancel: safe here, only a socket connect and our own future
            # are awaited inside.
            async with asyncio.timeout(connect_timeout):
                transport, conn = await loop.create_connection(
                    lambda: Http2Connection(
                        self.name,
                        loop,
                        target=self.target,
                        max_streams=self.local_max,
                        max_header_list=self.max_header_list,
                        on_change=self._wake,
                    ),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )
                self._check_alpn(transport, conn)
                await conn.settled
                if conn.unsettled is not None:
                    raise conn.unsettled
        except BaseException as exc:
            if conn is not None:
                conn.close(abort=True)
            if isinstance(exc, TimeoutError):
                self._connect_errors += 1
                raise UpstreamConnectTimeout(
                    f"connect to {self.target} took over {connect_timeout:g}s", self.name, self.target
                ) from None
            if isinstance(exc, OSError):
                self._connect_errors += 1
                reason = exc.strerror or str(exc) or type(exc).__name__
                raise UpstreamConnectError(
                    f"cannot connect to {self.target}: {reason}", self.name, self.target
                ) from exc
            if isinstance(exc, UpstreamError):
                self._connect_errors += 1
            raise
        finally:
            self._connecting -= 1
            self._wake()  # done either way: a waiter may use it, or try to open one itself
        if self._closed:
            conn.close()
            raise UpstreamUnavailable("gateway is shutting down", self.name, self.target)
        self._connects += 1
        self.connections.append(conn)
        if self._trace:
            upstream_logger.log(TRACE, "%s: connected %r", self.name, conn)

    def _check_alpn(self, transport: asyncio.BaseTransport, conn: Http2Connection) -> None:
        if self._ssl is None:
            return
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if chosen != "h2":
            conn.close(abort=True)
            raise UpstreamConnectError(
                f"{self.target} did not select h2 by ALPN (it chose {chosen or 'nothing'}); use protocol: http1 for it",
                self.name,
                self.target,
            )

    def _drop(self, conn: Http2Connection, why: str) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
            self._discards += 1
            if self._trace:
                upstream_logger.log(TRACE, "%s: closing %r (%s)", self.name, conn, why)
            if self.breaker is not None:
                for pool in self.siblings:  # room under the breaker's max_connections, for any target's waiter
                    if pool is not self:
                        pool._wake()
        if not conn.closed and not conn.streams:
            conn.close()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
