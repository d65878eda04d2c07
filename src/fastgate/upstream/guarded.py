"""A :class:`Cluster` behind an upstream's ``circuit_breaker`` (Envoy's thresholds, ``policies/breaker.py``).

How this works
--------------
``create_transport`` builds a :class:`GuardedCluster` only for an upstream with a ``circuit_breaker`` block, so an
upstream without one runs the plain :class:`Cluster` and pays nothing. The guarded one:

- admits each request against ``max_requests`` before anything else (no target picked, no connection taken) and
  counts it until its response is closed (or the send failed);
- shares one breaker between the connection pools of its targets, which bound their pending queue by
  ``max_pending_requests`` and the connections they open together by ``max_connections`` (``upstream/pool.py``);
- takes a retry's place from the breaker after the retry budget gave one, so at most ``max_retries`` retries are in
  flight at once; a retry over it is not made and the try's own answer goes to the client.

Refusals are :class:`~fastgate.exceptions.UpstreamOverflow`: 503 ``upstream_overflow`` with ``x-fastgate-overflow``,
logged once per burst (``upstream/overflow_log.py``).
The httpx transport has no pool of ours: there, ``max_requests`` and ``max_retries`` apply, the other two do not.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import UpstreamConfig
from ..exceptions import UpstreamOverflow
from ..policies.breaker import MAX_REQUESTS, BreakerStats, CircuitBreaker, Thresholds
from ..policies.retry_policy import RetryBudget
from .cluster import Cluster, _Tracked
from .overflow_log import OverflowLog
from .pool import ConnectionPool
from .transport import UpstreamRequest, UpstreamResponse

if TYPE_CHECKING:
    from .h2.pool import Http2Pool


@dataclass(slots=True)
class BreakerBudget(RetryBudget):
    """The retry budget, and then a place among the breaker's ``max_retries``."""

    breaker: CircuitBreaker | None = None

    def try_start_retry(self) -> bool:
        if not RetryBudget.try_start_retry(self):
            return False
        if self.breaker is not None and not self.breaker.try_start_retry():
            RetryBudget.finish_retry(self)
            return False
        return True

    def finish_retry(self) -> None:
        RetryBudget.finish_retry(self)
        if self.breaker is not None:
            self.breaker.finish_retry()


class GuardedCluster(Cluster):
    """A cluster whose requests, pending requests, connections and retries are capped by a :class:`CircuitBreaker`.

    >>> config = UpstreamConfig(url="http://127.0.0.1:9000", circuit_breaker={"max_requests": 100})
    >>> async with GuardedCluster("api", config) as cluster:
    ...     cluster.breaker_stats().requests
    0
    """

    def __init__(self, name: str, config: UpstreamConfig, *, rng: random.Random | None = None) -> None:
        super().__init__(name, config, rng=rng)
        settings = config.circuit_breaker
        assert settings is not None, "GuardedCluster needs circuit_breaker in its config"
        self.breaker = CircuitBreaker(Thresholds(**settings.model_dump()))
        budget = self.budget
        self.budget = BreakerBudget(budget.budget_percent, budget.min_retry_concurrency, breaker=self.breaker)
        self.pools: list[ConnectionPool] = [
            pool
            for target in self.targets
            if isinstance(pool := getattr(target.transport, "pool", None), ConnectionPool)
        ]
        for pool in self.pools:
            pool.breaker = self.breaker
            pool.siblings = self.pools
        # HTTP/2 pools (protocol: h2c | h2) take the same breaker; an upstream's targets share one protocol.
        # Found by attribute, not isinstance: importing the HTTP/2 pool would load the codec for every breaker.
        self.h2_pools: list[Http2Pool] = []
        for target in self.targets:
            h2_pool = getattr(target.transport, "pool", None)
            if getattr(h2_pool, "multiplexed", False):
                self.h2_pools.append(h2_pool)  # type: ignore[arg-type]  # an Http2Pool, by its class attribute
        for h2_pool in self.h2_pools:
            h2_pool.breaker = self.breaker
            h2_pool.siblings = self.h2_pools
        self.overflow_log = OverflowLog(name)  # refusals logged once per burst (proxy/http.py)

    def __repr__(self) -> str:
        return f"<GuardedCluster {self.name} {self.breaker!r} {self.balancer!r} {self.health!r}>"

    async def send(self, request: UpstreamRequest, body: AsyncIterator[bytes] | None) -> UpstreamResponse:
        breaker = self.breaker
        if breaker.try_start_request() is not None:
            raise UpstreamOverflow(MAX_REQUESTS, self.name, limit=breaker.thresholds.max_requests)
        try:
            response = await super().send(request, body)
        except BaseException:
            breaker.finish_request()
            raise
        return _Tracked(response, breaker.finish_request)

    def breaker_stats(self) -> BreakerStats:
        """The breaker's counters, with the connections open now across the targets' pools."""
        if self.pools or self.h2_pools:
            self.breaker.connections = sum(pool.size for pool in self.pools) + sum(p.size for p in self.h2_pools)
        return self.breaker.stats()
