"""Retry decisions: whether a failed try may be retried, how long to back off, and the cluster-wide retry budget.

Pure: no I/O and no clock; the random source is passed in. The runtime's retry loop asks, after each failed try::

    if policy.should_retry(attempt, failure, method, request_sent, response_started) and budget.try_start_retry():
        await anyio.sleep(policy.backoff(attempt, rng))   # then pick another target and try again
        ...                                               # finally: budget.finish_retry()

How this works
--------------
``should_retry`` applies, in order:

1. Nothing is retried once a byte of the response went to the client (nginx: "passing a request to the next
   server is only possible if nothing has been sent to a client yet"); the status can no longer change.
2. At most ``max_retries`` retries: ``attempt`` counts the tries made so far, so ``attempt <= max_retries``.
3. The failure must be in ``retry_on``: ``connect_error``, ``timeout``, ``reset``, or a status code.
4. nginx's rule for requests that may have reached the upstream: once the request was sent, a non-idempotent
   method is not retried unless ``non_idempotent`` is set. A refused connection means nothing was sent, so it may
   always be retried; a response status means it was sent, whatever the caller says; a timeout or reset is
   "sent" if ``request_sent`` says so (a connect timeout is not).

Idempotent methods are RFC 9110's (section 9.2.2): GET, HEAD, OPTIONS, PUT, DELETE, TRACE. nginx instead lists the
non-idempotent ones (POST, LOCK, PATCH) and treats the rest as idempotent; an allow-list keeps unknown extension
methods (WebDAV's MKCOL, say) from being replayed.

Defaults differ from both anchors, on purpose: one retry, on connect errors only. nginx retries ``error timeout``
by default, which replays a slow request against a second server; Envoy retries nothing unless a route sets a
policy, and then once. A connect error is the one failure where a retry is always safe and cheap.

Backoff is Envoy's fully jittered exponential one: before retry ``n`` (n = 1, 2, ...) wait a uniform time in
``[0, (2**n - 1) × base)``, at most ``max`` (25 ms base, 250 ms max: the first retry waits up to 25 ms, the second
up to 75 ms, the third up to 175 ms).

The budget is Envoy's ``retry_budget``: retries in flight may not exceed ``budget_percent`` of the requests in
flight (20%), but ``min_retry_concurrency`` (3) are always allowed, so that a quiet upstream can still retry.
Envoy counts pending requests too; here "active" is whatever the runtime reports, one count per client request.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastgate.upstream.health_state import FAILURE_KINDS, Outcome

__all__ = ["IDEMPOTENT_METHODS", "RetryBudget", "RetryPolicy"]

IDEMPOTENT_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

_MAX_EXPONENT = 60  # 2**60 × base is past any cap; keeps the float finite for absurd attempt numbers


def _retry_on(items: Iterable[str | int]) -> frozenset[str | int]:
    result: set[str | int] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise ValueError(f"retry_on: {item!r} is neither a failure kind nor a status code")
        if isinstance(item, str) and item not in FAILURE_KINDS:
            raise ValueError(f"retry_on: unknown failure {item!r}; choose from {', '.join(sorted(FAILURE_KINDS))}")
        if isinstance(item, int) and not 100 <= item <= 599:
            raise ValueError(f"retry_on: {item} is not a status code from 100 to 599")
        result.add(item)
    return frozenset(result)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how to retry, as plain values (the config schema builds one per route).

    policy = RetryPolicy(max_retries=2, retry_on=frozenset({"connect_error", 503}))
    policy.should_retry(1, 503, "GET", request_sent=True, response_started=False)  # True
    """

    max_retries: int = 1
    retry_on: frozenset[str | int] = field(default_factory=lambda: frozenset({"connect_error"}))
    per_try_timeout: float | None = None
    backoff_base: float = 0.025
    backoff_max: float = 0.25
    budget_percent: float = 20.0
    min_retry_concurrency: int = 3
    non_idempotent: bool = False

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        object.__setattr__(self, "retry_on", _retry_on(self.retry_on))
        if self.per_try_timeout is not None and self.per_try_timeout <= 0:
            raise ValueError("per_try_timeout must be positive (or None for no limit)")
        if self.backoff_base < 0 or self.backoff_max < self.backoff_base:
            raise ValueError("need 0 <= backoff_base <= backoff_max")
        if not 0 <= self.budget_percent <= 100:
            raise ValueError("budget_percent must be between 0 and 100")
        if self.min_retry_concurrency < 0:
            raise ValueError("min_retry_concurrency must be >= 0")

    def should_retry(
        self,
        attempt: int,
        failure: Outcome,
        method: str,
        request_sent: bool,
        response_started: bool,
    ) -> bool:
        """Whether the try number ``attempt`` (1 for the first), which ended with ``failure``, may be retried.

        ``request_sent``: some of the request went out on the connection. ``response_started``: some of the
        response went to the client. ``method`` as received (methods are case-sensitive, RFC 9110 section 9.1).
        """
        if response_started or attempt > self.max_retries or failure not in self.retry_on:
            return False
        if failure == "connect_error":
            return True
        sent = request_sent or isinstance(failure, int)
        return not sent or self.non_idempotent or method in IDEMPOTENT_METHODS

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry): Envoy's full jitter."""
        n = min(max(attempt, 1), _MAX_EXPONENT)
        return min(rng.random() * ((1 << n) - 1) * self.backoff_base, self.backoff_max)

    def new_budget(self) -> RetryBudget:
        """A budget with this policy's limits, to share between the routes of one upstream."""
        return RetryBudget(self.budget_percent, self.min_retry_concurrency)


@dataclass(slots=True)
class RetryBudget:
    """Envoy's retry budget as pure counters: retries in flight <= max(min_retry_concurrency, budget% × active).

    budget = RetryBudget(budget_percent=20, min_retry_concurrency=3)
    budget.start_request(); ok = budget.try_start_retry()  # ... budget.finish_retry(); budget.finish_request()
    """

    budget_percent: float = 20.0
    min_retry_concurrency: int = 3
    active: int = 0
    retries: int = 0

    @property
    def limit(self) -> int:
        """Retries allowed in flight now."""
        return max(self.min_retry_concurrency, int(self.active * self.budget_percent / 100))

    def start_request(self) -> None:
        self.active += 1

    def finish_request(self) -> None:
        if self.active > 0:
            self.active -= 1

    def try_start_retry(self) -> bool:
        """Take a place for one retry if the budget has one; the caller then calls ``finish_retry``."""
        if self.retries >= self.limit:
            return False
        self.retries += 1
        return True

    def finish_retry(self) -> None:
        if self.retries > 0:
            self.retries -= 1

    def __repr__(self) -> str:
        return f"<RetryBudget retries={self.retries}/{self.limit} active={self.active}>"
