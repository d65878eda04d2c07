"""Keep-alive connections to one upstream.

How this works
--------------
``acquire()`` hands out the most recently used idle connection (LIFO keeps the working set warm and lets
the rest expire), or opens a new one while fewer than ``max_connections`` exist, or queues the caller until
a connection is released or ``limits``'s pool timeout passes (then :class:`UpstreamUnavailable`, a 503).
``release(conn)`` gives a reusable connection straight to the first waiter, else back to the idle stack
(at most ``max_keepalive_connections``), and closes anything else.

``sweep(now)`` runs periodically from the transport's background task: it fails busy connections whose
deadline passed (read, write and idle-stream timeouts, so no request carries a timer of its own) and closes
idle ones older than ``keepalive_expiry``, before the upstream's own idle timeout can race us.

A waiter that gives up (pool timeout) or is cancelled leaves the queue at once, so the queue holds only live
waiters however long every connection stays busy. With an upstream ``circuit_breaker`` (``breaker``, shared by the
pools of the upstream's targets, ``siblings``), the queue is bounded in length too: a caller that would wait past
``max_pending_requests`` is refused at once (:class:`UpstreamOverflow`), and no connection is opened past
``max_connections`` across the siblings; to make room, an idle connection of a sibling is closed, and a connection
released while a sibling waits below its own limit is closed so that the sibling's waiter can open one.
Without a breaker none of this runs (one attribute test on the paths that open or wait).

``stats()`` is the pool's state and counters as data, for tests, balancers, metrics and an admin API alike.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass

from ..config import Timeouts, UpstreamConfig
from ..exceptions import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamOverflow,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..observability.logging import TRACE, upstream_logger
from ..policies.breaker import CircuitBreaker
from .connection import Connection
from .tls import client_context


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of one pool: connections by state now, and counters since the pool was made.

    >>> pool.stats()
    PoolStats(busy=1, idle=3, connecting=0, waiting=0, connects=4, reuses=96, connect_errors=0, ...)

    ``discards`` counts connections closed instead of kept (not reusable, expired, closed by the upstream);
    ``pool_timeouts`` the acquires that gave up waiting for a connection (503).
    """

    busy: int
    idle: int
    connecting: int
    waiting: int
    connects: int
    reuses: int
    connect_errors: int
    discards: int
    pool_timeouts: int


class ConnectionPool:
    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.host = config.host
        self.port = config.port
        self.target = config.target
        self.max_head = config.max_response_header_bytes
        self.timeouts = config.timeouts
        self.limits = config.limits
        # read on every acquire and release: plain attributes, not the pydantic model's (its __getattr__ hook costs)
        self._keepalive_expiry = config.limits.keepalive_expiry
        self._max_keepalive = config.limits.max_keepalive_connections
        self._ssl = client_context(config.ca_file) if config.scheme == "https" else None
        self._idle: deque[Connection] = deque()
        self._busy: set[Connection] = set()
        self._connecting = 0
        # An ordered set: first come first served, and a waiter that gives up leaves in O(1).
        self._waiters: OrderedDict[asyncio.Future[Connection | None], None] = OrderedDict()
        self._closed = False
        self._connects = self._reuses = self._connect_errors = self._discards = self._pool_timeouts = 0
        self._trace = upstream_logger.isEnabledFor(TRACE)
        # The loop this pool lives on, cached: asyncio.get_running_loop() costs a getpid() system call each time.
        self._loop: asyncio.AbstractEventLoop | None = None
        # The upstream's circuit breaker and the pools it spans (upstream/guarded.py sets both); None: no breaker.
        self.breaker: CircuitBreaker | None = None
        self.siblings: list[ConnectionPool] = [self]

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.name} {self.target} busy={len(self._busy)} idle={len(self._idle)}"
            f" connecting={self._connecting} waiting={len(self._waiters)}>"
        )

    def stats(self) -> PoolStats:
        return PoolStats(
            busy=len(self._busy),
            idle=len(self._idle),
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
        return len(self._busy) + len(self._idle) + self._connecting

    async def acquire(self, *, fresh: bool = False, timeouts: Timeouts | None = None) -> Connection:
        """A connection for one exchange. ``fresh``: a new one if the limit allows (else an idle one, as usual).

        ``timeouts``: a route's, whose ``connect`` and ``pool`` replace the upstream's for this wait.
        """
        if self._closed:
            raise UpstreamUnavailable("gateway is shutting down", self.name, self.target)
        loop = self._loop or self._bind_loop()
        if fresh and self.size < self.limits.max_connections and (self.breaker is None or self._room()):
            # Never at the cost of an idle connection: it may be healthy, and closing it gains nothing here.
            return await self._connect(timeouts=timeouts)
        idle = self._idle
        if idle:
            expiry = self._keepalive_expiry
            now = loop.time()
            while idle:
                conn = idle.pop()
                if conn.closed or now - conn.idle_since >= expiry:
                    self._discard(conn, "expired" if not conn.closed else "closed by upstream")
                    continue
                self._busy.add(conn)
                self._reuses += 1
                if self._trace:
                    upstream_logger.log(TRACE, "%s: reusing %r", self.name, conn)
                return conn
        if self.size < self.limits.max_connections and (self.breaker is None or self._room()):
            return await self._connect(timeouts=timeouts)
        breaker = self.breaker
        if breaker is None:
            return await self._wait_for_connection(timeouts or self.timeouts)
        which = breaker.try_start_pending()
        if which is not None:
            raise UpstreamOverflow(which, self.name, self.target, getattr(breaker.thresholds, which))
        try:
            return await self._wait_for_connection(timeouts or self.timeouts)
        finally:
            breaker.finish_pending()

    def release(self, conn: Connection, reusable: bool) -> None:
        self._busy.discard(conn)
        if reusable and not self._closed:
            while self._waiters:
                waiter, _ = self._waiters.popitem(last=False)
                if not waiter.done():
                    self._busy.add(conn)
                    self._reuses += 1
                    waiter.set_result(conn)
                    return
            if len(self._idle) < self._max_keepalive and (self.breaker is None or not self._sibling_waits()):
                conn.idle_since = conn.loop.time()
                self._idle.append(conn)
                return
        self._discard(conn, "released" if reusable else "not reusable")
        self._wake_one_waiter()

    def sweep(self, now: float) -> None:
        for conn in [c for c in self._busy if c.deadline and now >= c.deadline]:
            conn.fail(
                UpstreamTimeout(
                    f"no {conn.waiting_for} from upstream within {conn.armed_timeout:g}s", self.name, self.target
                )
            )
        expiry = self.limits.keepalive_expiry
        idle = self._idle
        while idle and (idle[0].closed or now - idle[0].idle_since >= expiry):
            self._discard(idle.popleft(), "keep-alive expired")
        if idle and any(c.closed for c in idle):
            for conn in [c for c in idle if c.closed]:
                idle.remove(conn)
                self._discard(conn, "closed by upstream")

    def aclose(self) -> None:
        self._closed = True
        for conn in list(self._idle) + list(self._busy):
            self._discard(conn, "gateway shutdown")
        self._idle.clear()
        self._busy.clear()
        while self._waiters:
            waiter, _ = self._waiters.popitem(last=False)
            if not waiter.done():
                waiter.set_exception(UpstreamUnavailable("gateway is shutting down", self.name, self.target))

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    async def _connect(self, *, reserved: bool = False, timeouts: Timeouts | None = None) -> Connection:
        """Open a connection; ``reserved``: a released slot was already counted for us in ``_connecting``."""
        loop = self._loop or self._bind_loop()
        connect_timeout = (timeouts or self.timeouts).connect
        if not reserved:
            self._connecting += 1
        try:
            try:
                # asyncio.timeout cancels with a raw Task.cancel: safe here, as nothing inside awaits shielded work
                # (a socket connect, and an exchange's shielded close never runs under it).
                async with asyncio.timeout(connect_timeout):
                    _, conn = await loop.create_connection(
                        lambda: Connection(self.name, loop, target=self.target, max_head=self.max_head),
                        self.host,
                        self.port,
                        ssl=self._ssl,
                        server_hostname=self.host if self._ssl else None,
                    )
            except TimeoutError:
                self._connect_errors += 1
                raise UpstreamConnectTimeout(
                    f"connect to {self.target} took over {connect_timeout:g}s", self.name, self.target
                ) from None
            except OSError as exc:
                self._connect_errors += 1
                reason = exc.strerror or str(exc) or type(exc).__name__
                raise UpstreamConnectError(
                    f"cannot connect to {self.target}: {reason}", self.name, self.target
                ) from exc
        except BaseException:
            self._connecting -= 1
            self._wake_one_waiter()  # the slot is free again (connect failed, or we were cancelled)
            raise
        self._connecting -= 1
        self._connects += 1
        if self._trace:
            upstream_logger.log(TRACE, "%s: connected %r", self.name, conn)
        self._busy.add(conn)
        return conn

    async def _wait_for_connection(self, timeouts: Timeouts) -> Connection:
        """Queue until a connection (or a free slot) is handed to us, first come first served.

        A freed slot is reserved for the waiter it is handed to (counted in ``_connecting``), so a request that
        arrives meanwhile cannot take it and send the waiter to the back of the queue.
        """
        waiter: asyncio.Future[Connection | None] = (self._loop or self._bind_loop()).create_future()
        self._waiters[waiter] = None
        try:
            # A raw Task.cancel at the deadline (asyncio.timeout): safe, the block awaits only our waiter future.
            async with asyncio.timeout(timeouts.pool):
                await waiter
        except TimeoutError:
            if waiter.cancelled():
                self._waiters.pop(waiter, None)
                self._pool_timeouts += 1
                raise UpstreamUnavailable(
                    f"connection pool exhausted: {self.limits.max_connections} connections busy for {timeouts.pool:g}s",
                    self.name,
                    self.target,
                ) from None
            # something was handed to us just as the wait ran out: use it
        except BaseException:
            self._waiters.pop(waiter, None)
            # cancelled (the client left) after something was handed to us: pass it on
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_on(waiter.result())
            raise
        handed = waiter.result()
        if handed is None:
            return await self._connect(reserved=True, timeouts=timeouts)
        return handed

    def _pass_on(self, handed: Connection | None) -> None:
        if handed is None:
            self._connecting -= 1
            self._wake_one_waiter()
        else:
            self.release(handed, reusable=not handed.closed)

    def _wake_one_waiter(self) -> None:
        """A connection slot is free: the first live waiter here gets it, else (with a breaker) a sibling's."""
        if self._wake_local() or self.breaker is None:
            return
        for pool in self.siblings:
            if pool is not self and pool.size < pool.limits.max_connections and pool._wake_local():
                return

    def _wake_local(self) -> bool:
        while self._waiters:
            waiter, _ = self._waiters.popitem(last=False)
            if not waiter.done():
                self._connecting += 1  # the slot is the waiter's now
                waiter.set_result(None)
                return True
        return False

    def _room(self) -> bool:
        """Whether the breaker's ``max_connections`` (across the siblings) allows one more connection.

        At the cap, an idle connection of a sibling is closed to make room: it waits for nobody, we do.
        """
        breaker = self.breaker
        assert breaker is not None
        open_now = 0
        for pool in self.siblings:
            open_now += pool.size
        if open_now >= breaker.thresholds.max_connections:
            for pool in self.siblings:
                if pool._idle:
                    pool._discard(pool._idle.popleft(), "room for another target (circuit breaker)")
                    open_now -= 1
                    break
        return breaker.may_open_connection(open_now)

    def _sibling_waits(self) -> bool:
        """A sibling has a waiter that only the breaker's ``max_connections`` holds back (room in its own pool)."""
        return any(
            pool is not self and pool._waiters and pool.size < pool.limits.max_connections for pool in self.siblings
        )

    def _discard(self, conn: Connection, why: str) -> None:
        self._discards += 1
        conn.close()
        if self._trace:
            upstream_logger.log(TRACE, "%s: closing %r (%s)", self.name, conn, why)


def sweep_interval(config: UpstreamConfig) -> float:
    """How often the sweeper runs: a tenth of the shortest timeout, between 5 ms and 0.5 s."""
    t = config.timeouts
    per_try = config.retries.per_try_timeout
    candidates = [v for v in (t.read, t.write, t.stream_idle, per_try, config.limits.keepalive_expiry) if v]
    return min(0.5, max(0.005, min(candidates, default=5.0) / 10))
