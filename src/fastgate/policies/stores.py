"""Where rate-limit state lives: a :class:`RateLimitStore` answers "may this key go now?" for a policy.

    store = MemoryStore()                                    # or: RedisStore("redis://127.0.0.1:6379/0")
    await store.open()                                       # in the lifespan
    decision = await store.decide(key, policy)              # policy: ratelimit.RateLimitPolicy
    await store.aclose()

How this works
--------------
Both stores run the same GCRA step (``RateLimitPolicy.decide`` in Python, the same arithmetic in Lua for Redis) on
one stored number per key, the theoretical arrival time in microseconds.

``MemoryStore`` keeps it in a dict of one process. **With N worker processes, each has its own dict and the limit is
N times looser**; so is it with N gateway instances. Use ``RedisStore`` for a limit that holds across workers and
instances. Memory is bounded: a key whose TAT has passed holds nothing and is swept (a few of the oldest entries every
``SWEEP_EVERY`` decisions); past ``max_keys`` an expired entry among the least recently seen few goes, else the least
recently seen key, which at worst hands that client a fresh bucket. Each step is O(1): a client rotating keys (an IPv6
/64, spoofed header values) costs at most ``max_keys`` entries and the same few µs per decision at any size.

``RedisStore`` makes each decision one Lua script call (EVALSHA; redis-py's ``Script`` loads it again after a
NOSCRIPT, e.g. when Redis restarted), atomic across every worker and instance on the same Redis. The time comes from
``redis.call('TIME')``, so gateway clocks do not matter; the key expires when its bucket is full again, so Redis holds
only keys that are actually limited. A failure (refused, reset, timed out, Redis error) makes ``on_error`` decide,
``allow`` (fail open) or ``deny`` (fail closed), and Redis is left alone for ``retry_interval`` seconds so that a dead
or slow Redis costs requests nothing more. The first failure logs one warning, the first success after it one info
line: one pair per outage, not one per request.

Timeouts measure Redis, not our own event loop. Each decision gets ``timeout`` seconds (default 20 ms, as Envoy's
rate-limit filter), pool wait and connect included, judged by a loop timer (:class:`LagAwareDeadline`). When that
timer fires late, our loop was busy (a loaded loop has turns of tens of ms, or a handler ran synchronous work) and
the reply may be sitting unread in our socket: that is no Redis failure, so the deadline is extended by a fresh
``timeout`` from then on, up to ``LAG_ALLOWANCE`` seconds in all. Only a timer that fires on time with no answer
(Redis silent while our loop was free to read it) counts as a timeout. Before issue 17 the default was 5 ms of wall
time, and on a loaded loop one late reply turned the limit off (``on_error: allow``) for ``retry_interval``, exactly
under the load the limit is for.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio

from ..observability.safe_url import safe_url
from .ratelimit import Decision, RateLimitPolicy

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = [
    "LAG_ALLOWANCE",
    "SWEEP_EVERY",
    "LagAwareDeadline",
    "MemoryStore",
    "RateLimitStore",
    "RedisStore",
    "StoreUnavailable",
]

logger = logging.getLogger("fastgate.error")

SWEEP_EVERY = 256
_SWEEP_BATCH = 32
_EVICT_SCAN = 8

OnError = Literal["allow", "deny"]


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


class RateLimitStore(Protocol):
    """Counts requests per key; ``decide`` charges one request and says whether it may go."""

    async def open(self) -> None: ...

    async def decide(self, key: bytes, policy: RateLimitPolicy) -> Decision: ...

    async def aclose(self) -> None: ...


class StoreUnavailable(Exception):
    """``RedisStore.open(require=True)`` could not reach Redis (startup failure, exit 3)."""


class MemoryStore:
    """Per-process GCRA state, at most ``max_keys`` entries; ``clock`` gives microseconds.

    store = MemoryStore(max_keys=100_000)
    decision = await store.decide(key, policy)

    Per process: with N workers the limit is N times looser. Use :class:`RedisStore` to share it.

    Eviction is O(1) per decision, whatever the number of keys. Entries are kept in an ``OrderedDict`` in the order
    they were last *seen* (charged or refused): LRU, not FIFO, so that a client being limited right now, which is
    the one that matters, is never the next to go however long ago it was first seen. A new key past ``max_keys``
    looks at the ``_EVICT_SCAN`` least recently seen entries and drops those whose TAT has passed (they hold
    nothing: dropping them changes no decision); only when none of them has, it drops the least recently seen one.
    (A plain dict in insertion order would do the same in theory, but deleting its first entry over and over
    leaves holes that ``next(iter(d))`` walks again each time: 50 µs per eviction at 100,000 keys, O(n).)

    What an eviction can cost: the dropped key, if it comes back, starts with a full bucket, so it may be allowed
    up to ``burst`` requests it would otherwise have been refused. That happens only to a key not seen while
    ``max_keys`` other keys were charged or refused after it; a client sending steadily is never evicted. A client
    rotating keys (addresses of an IPv6 /64, made-up header values) is new on every key anyway and gains nothing,
    and costs at most ``max_keys`` entries: about 215 bytes each on CPython 3.11 (key, TAT and the ordered slot,
    measured with tracemalloc), 21 MB at the default 100,000.
    """

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], int] = monotonic_us) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.max_keys = max_keys
        self._clock = clock
        self._tats: OrderedDict[bytes, int] = OrderedDict()  # least recently seen first
        self._decisions = 0
        self.evicted = 0

    async def open(self) -> None:
        pass

    async def decide(self, key: bytes, policy: RateLimitPolicy) -> Decision:
        return self.decide_now(key, policy)

    def decide_now(self, key: bytes, policy: RateLimitPolicy) -> Decision:
        """``decide`` without the coroutine: the memory store never waits."""
        now = self._clock()
        tats = self._tats
        tat = tats.get(key)
        new_tat, decision = policy.decide(tat, now)
        if new_tat is not None:
            tats[key] = new_tat
            if tat is None:
                if len(tats) > self.max_keys:
                    self._evict(now)
            else:
                tats.move_to_end(key)
        elif tat is not None:
            tats.move_to_end(key)  # refused: seen now, so a limited client stays at the recent end
        self._decisions += 1
        if self._decisions % SWEEP_EVERY == 0:
            self._sweep(now, _SWEEP_BATCH)
        return decision

    def _evict(self, now: int) -> None:
        """Back to ``max_keys``: expired entries among the oldest few first, else the least recently seen one."""
        tats = self._tats
        if self._sweep(now, _EVICT_SCAN) == 0:
            tats.popitem(last=False)
            self.evicted += 1

    def _sweep(self, now: int, limit: int) -> int:
        """Drop entries whose TAT has passed among the ``limit`` least recently seen ones; how many went."""
        tats = self._tats
        expired = [key for key, tat in islice(tats.items(), limit) if tat <= now]
        for key in expired:
            del tats[key]
        return len(expired)

    def __len__(self) -> int:
        return len(self._tats)

    async def aclose(self) -> None:
        self._tats.clear()

    def __repr__(self) -> str:
        return f"<MemoryStore keys={len(self._tats)}/{self.max_keys} evicted={self.evicted}>"


# GCRA in microseconds of Redis' clock; see ratelimit.py. KEYS[1]: the key; ARGV: interval, tolerance (µs).
# Returns {allowed (0/1), TAT - now after the request}. Numbers go back to Redis through string.format('%d'):
# Lua 5.1 prints large numbers as 1.7e+15 otherwise. TIME before a write is fine under effects replication
# (the default since Redis 5, the only mode since 7).
GCRA_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > tolerance then
  return {0, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', math.ceil((new_tat - now) / 1000)))
return {1, new_tat - now}
"""


DEFAULT_REDIS_TIMEOUT = 0.02
# How much longer than ``timeout`` a decision may wait, in all, while our own loop is too busy to read the reply.
LAG_ALLOWANCE = 1.0
# A timer later than this (and than half the timeout) fired late: the loop was busy, not Redis. libuv's timers have
# 1 ms resolution, so anything under 2 ms is on time.
_ON_TIME = 0.002
# After an on-time deadline, one more look this much later: the next loop turn reads what is already in the socket.
_LAST_LOOK = 0.001


class LagAwareDeadline:
    """Cancels ``scope`` once Redis had ``timeout`` seconds in which our loop was free to read its answer.

    with anyio.CancelScope() as scope:
        deadline = LagAwareDeadline(scope, 0.02)
        try: await redis_call()
        finally: deadline.cancel()

    A loop timer fires at the deadline. Late (by more than ``max(2 ms, timeout / 2)``): our loop was busy for
    ``lag`` seconds, during which the answer may have arrived unread; the timer is set again ``timeout`` from now,
    up to ``allowance`` seconds past the first deadline. On time: one last look a loop turn later (1 ms: the loop
    may have been busy right up to the deadline, and a loop runs its due timers before it reads its sockets), then
    the scope is cancelled, since Redis did not answer although we could read it. ``lag`` sums how late it fired.
    """

    __slots__ = ("_handle", "_last_look", "_loop", "_scope", "_timeout", "_tolerance", "_until", "due", "lag")

    def __init__(self, scope: anyio.CancelScope, timeout: float, allowance: float = LAG_ALLOWANCE) -> None:
        self._loop = asyncio.get_running_loop()
        self._scope = scope
        self._timeout = timeout
        self._tolerance = max(_ON_TIME, timeout / 2)
        now = self._loop.time()
        self.due = now + timeout
        self._until = self.due + allowance
        self.lag = 0.0
        self._last_look = False
        self._handle = self._loop.call_at(self.due, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        late = now - self.due
        if late > self._tolerance and now < self._until:
            self.lag += late
            self._last_look = False
            self._arm(now + self._timeout)
        elif not self._last_look:
            self._last_look = True
            self._arm(now + _LAST_LOOK)
        else:
            self._scope.cancel()

    def _arm(self, due: float) -> None:
        self.due = due
        self._handle = self._loop.call_at(due, self._fire)

    def cancel(self) -> None:
        self._handle.cancel()


def _import_redis() -> Any:
    try:
        return importlib.import_module("redis.asyncio")
    except ImportError:
        raise ImportError(
            "store: redis needs the redis package: pip install 'fastgate[redis]' (the 'redis' extra)"
        ) from None


class RedisStore:
    """GCRA state in Redis, shared by every worker and gateway instance that uses the same Redis.

    store = RedisStore("redis://127.0.0.1:6379/0", on_error="allow", timeout=0.02)
    await store.open(); decision = await store.decide(key, policy); await store.aclose()

    ``timeout`` bounds each decision (pool wait, connect and the script call) in time our loop could have read the
    answer (:class:`LagAwareDeadline`); ``on_error`` decides while Redis is failing, and Redis is tried again
    ``retry_interval`` seconds after a failure: one miss, a refused connection or a timeout, lets ``on_error`` decide
    every decision for ``retry_interval``.
    """

    def __init__(
        self,
        url: str,
        *,
        on_error: OnError = "allow",
        timeout: float = DEFAULT_REDIS_TIMEOUT,
        retry_interval: float = 0.5,
        max_connections: int = 64,
        key_prefix: bytes = b"fastgate:rl:",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if on_error not in ("allow", "deny"):
            raise ValueError(f"on_error must be 'allow' or 'deny', got {on_error!r}")
        if timeout <= 0 or retry_interval < 0 or max_connections < 1:
            raise ValueError("need timeout > 0, retry_interval >= 0 and max_connections >= 1")
        redis = _import_redis()
        retry = importlib.import_module("redis.asyncio.retry").Retry
        no_backoff = importlib.import_module("redis.backoff").NoBackoff
        self.url = url
        self.on_error: OnError = on_error
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.key_prefix = key_prefix
        self._clock = clock
        # One immediate retry on a fresh connection: after a Redis restart the pooled sockets are dead.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None, retry=retry(no_backoff(), 1)
        )
        self._client: Redis = redis.Redis(connection_pool=pool, retry=retry(no_backoff(), 1))
        self._script: AsyncScript = self._client.register_script(GCRA_SCRIPT)
        self._errors: tuple[type[BaseException], ...] = (
            importlib.import_module("redis.exceptions").RedisError,
            OSError,
        )
        self._down_since: float | None = None
        self._retry_at = 0.0
        self.failures = 0

    async def open(self, *, require: bool = False) -> None:
        """Load the script (and so check Redis is there). Unreachable: ``StoreUnavailable`` if ``require``, else
        the outage is logged and ``on_error`` applies until Redis answers."""
        error: BaseException | None = None
        with anyio.move_on_after(max(self.timeout, 1.0)) as scope:
            try:
                self._script.sha = await self._client.script_load(GCRA_SCRIPT)
            except self._errors as exc:
                error = exc
        if scope.cancelled_caught:
            error = TimeoutError(f"no answer within {max(self.timeout, 1.0):g}s")
        if error is not None:
            if require:
                raise StoreUnavailable(f"Redis at {self._safe_url()} is unreachable: {error}") from error
            self._failed(error)

    @property
    def down(self) -> bool:
        """Whether Redis is failing now (``on_error`` is deciding)."""
        return self._down_since is not None

    async def decide(self, key: bytes, policy: RateLimitPolicy) -> Decision:
        if self._down_since is not None and self._clock() < self._retry_at:
            return self._fallback(policy)
        result: Any = None
        error: BaseException | None = None
        with anyio.CancelScope() as scope:
            deadline = LagAwareDeadline(scope, self.timeout)
            try:
                result = await self._script(keys=[self.key_prefix + key], args=[policy.interval, policy.tolerance])
            except self._errors as exc:
                error = exc
            finally:
                deadline.cancel()
        if scope.cancelled_caught:
            busy = f" (plus {deadline.lag * 1000:.0f} ms our event loop was busy)" if deadline.lag else ""
            error = TimeoutError(f"no answer within {self.timeout * 1000:g} ms{busy}")
        if error is not None:
            self._failed(error)
            return self._fallback(policy)
        if self._down_since is not None:
            outage = self._clock() - self._down_since
            self._down_since = None
            logger.info(
                "rate limit: Redis at %s answers again after %.1fs; limits apply again", self._safe_url(), outage
            )
        allowed, ahead = result
        return policy.decision(bool(allowed), int(ahead))

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        now = self._clock()
        self._retry_at = now + self.retry_interval
        if self._down_since is None:
            self._down_since = now
            what = "let through unlimited" if self.on_error == "allow" else "refused with 429"
            logger.warning(
                "rate limit: Redis at %s failed (%s: %s); on_error=%s: requests are %s until it answers",
                self._safe_url(),
                type(error).__name__,
                error,
                self.on_error,
                what,
            )

    def _fallback(self, policy: RateLimitPolicy) -> Decision:
        if self.on_error == "allow":
            return policy.admitted()
        return policy.denied(max(self.retry_interval, 1.0))

    def _safe_url(self) -> str:
        """The URL as logs show it (observability/safe_url.py: no userinfo, no query values)."""
        return safe_url(self.url)

    async def aclose(self) -> None:
        await self._client.aclose(close_connection_pool=True)  # the pool is ours: Redis() only closes its own

    def __repr__(self) -> str:
        state = "down" if self._down_since is not None else "up"
        return f"<RedisStore {self._safe_url()} {state} on_error={self.on_error} failures={self.failures}>"
