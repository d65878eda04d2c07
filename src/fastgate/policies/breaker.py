"""Circuit breaking as Envoy does it: load shedding on four per-upstream thresholds, as pure counters.

Pure: no I/O, no clock, no loop. The runtime (``upstream/pool.py``, ``upstream/guarded.py``) asks before each step
and reports when the step ends::

    which = breaker.try_start_request()         # None, or "max_requests": refuse with 503 at once
    ...                                         # a connection is needed and none is free:
    which = breaker.try_start_pending()         # None (then wait), or the threshold that refuses
    breaker.finish_pending()                    # got a connection (or gave up waiting)
    breaker.may_open_connection(open_now)       # below max_connections across the upstream's targets?
    breaker.try_start_retry()                   # False: the retry is not made, the last answer stands
    breaker.finish_retry(); breaker.finish_request()

How this works
--------------
Envoy's thresholds (``circuit_breakers.thresholds`` of a cluster; defaults 1024, 1024, 1024, 3) are not a
failure-rate breaker that opens and closes: each one caps how much of a kind of work may be outstanding at once, and
work over a cap fails at once instead of queueing. Here, per upstream (across all of its targets):

``max_requests``
    requests in flight: admitted and holding (or opening) a connection, until the response is closed. A request
    waiting for a connection is *pending*, not in flight, as in Envoy. Checked on admission.
``max_pending_requests``
    requests waiting for a connection (every connection busy, no new one allowed by ``max_connections`` or the
    pool's own ``limits.max_connections``). A request that would be one too many is refused, so the queue is bounded
    in length (``timeouts.pool`` still bounds each wait in time).
``max_connections``
    upstream connections open at once (opening, busy or idle). A request that needs a new connection over it waits
    as a pending request (counted in ``connection_overflows``, Envoy's ``upstream_cx_overflow``); with
    ``max_pending_requests: 0`` there is no queue, and it is refused naming ``max_connections``.
``max_retries``
    retries in flight at once. A retry over it is not made; the try's own answer (or error) goes to the client.

Every refusal is counted per threshold (``overflows``), for metrics and the admin API (``stats()``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BreakerStats", "CircuitBreaker", "Thresholds"]

MAX_CONNECTIONS = "max_connections"
MAX_PENDING_REQUESTS = "max_pending_requests"
MAX_REQUESTS = "max_requests"
MAX_RETRIES = "max_retries"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The four caps (Envoy's defaults).

    >>> Thresholds(max_pending_requests=10)
    Thresholds(max_connections=1024, max_pending_requests=10, max_requests=1024, max_retries=3)
    """

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A snapshot: what is outstanding now, and the refusals per threshold since the breaker was made.

    ``requests`` are in flight (pending ones not included), ``pending`` wait for a connection, ``connections`` is the
    last count the pools reported, ``retries`` are in flight. ``*_overflows`` count refusals (for connections: the
    times a new connection was not allowed, whether the request then waited or was refused).
    """

    requests: int
    pending: int
    connections: int
    retries: int
    request_overflows: int
    pending_overflows: int
    connection_overflows: int
    retry_overflows: int

    @property
    def overflows(self) -> dict[str, int]:
        """Refusals by threshold name, the ``x-fastgate-overflow`` values."""
        return {
            MAX_CONNECTIONS: self.connection_overflows,
            MAX_PENDING_REQUESTS: self.pending_overflows,
            MAX_REQUESTS: self.request_overflows,
            MAX_RETRIES: self.retry_overflows,
        }


class CircuitBreaker:
    """Envoy-style thresholds for one upstream as counters; see the module docstring for the protocol.

    >>> breaker = CircuitBreaker(Thresholds(max_requests=1))
    >>> breaker.try_start_request(), breaker.try_start_request()
    (None, 'max_requests')
    """

    __slots__ = (
        "thresholds",
        "admitted",
        "pending",
        "connections",
        "retries",
        "request_overflows",
        "pending_overflows",
        "connection_overflows",
        "retry_overflows",
    )

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self.admitted = 0  # in flight plus pending: every request between try_start_request and finish_request
        self.pending = 0
        self.connections = 0
        self.retries = 0
        self.request_overflows = self.pending_overflows = self.connection_overflows = self.retry_overflows = 0

    @property
    def requests(self) -> int:
        """Requests in flight: admitted and not waiting for a connection."""
        return self.admitted - self.pending

    def try_start_request(self) -> str | None:
        """Admit a request (None; then ``finish_request`` once its response is closed) or name the threshold."""
        if self.admitted - self.pending >= self.thresholds.max_requests:
            self.request_overflows += 1
            return MAX_REQUESTS
        self.admitted += 1
        return None

    def finish_request(self) -> None:
        if self.admitted > 0:
            self.admitted -= 1

    def try_start_pending(self) -> str | None:
        """Let a request wait for a connection (None; then ``finish_pending``) or name the threshold that refuses."""
        limit = self.thresholds.max_pending_requests
        if self.pending >= limit:
            self.pending_overflows += 1
            return MAX_PENDING_REQUESTS if limit else MAX_CONNECTIONS
        self.pending += 1
        return None

    def finish_pending(self) -> None:
        if self.pending > 0:
            self.pending -= 1

    def may_open_connection(self, open_now: int) -> bool:
        """Whether one more connection may be opened while ``open_now`` are open (counted when not)."""
        self.connections = open_now
        if open_now < self.thresholds.max_connections:
            return True
        self.connection_overflows += 1
        return False

    def try_start_retry(self) -> bool:
        """Take a place for one retry (then ``finish_retry``), or refuse it (counted)."""
        if self.retries >= self.thresholds.max_retries:
            self.retry_overflows += 1
            return False
        self.retries += 1
        return True

    def finish_retry(self) -> None:
        if self.retries > 0:
            self.retries -= 1

    def stats(self) -> BreakerStats:
        return BreakerStats(
            requests=self.requests,
            pending=self.pending,
            connections=self.connections,
            retries=self.retries,
            request_overflows=self.request_overflows,
            pending_overflows=self.pending_overflows,
            connection_overflows=self.connection_overflows,
            retry_overflows=self.retry_overflows,
        )

    def __repr__(self) -> str:
        t = self.thresholds
        return (
            f"<CircuitBreaker requests={self.requests}/{t.max_requests} pending={self.pending}/"
            f"{t.max_pending_requests} connections={self.connections}/{t.max_connections}"
            f" retries={self.retries}/{t.max_retries}>"
        )
