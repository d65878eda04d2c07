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
``SWEEP_EVERY`` decisions); past ``max_keys`` the least recently charged key is dropped, which at worst hands that
client a fresh bucket. A client rotating keys (spoofed header values) therefore costs at most ``max_keys`` entries.

``RedisStore`` makes each decision one Lua script call (EVALSHA; redis-py's ``Script`` loads it again after a
NOSCRIPT, e.g. when Redis restarted), atomic across every worker and instance on the same Redis. The time comes from
``redis.call('TIME')``, so gateway clocks do not matter; the key expires when its bucket is full again, so Redis holds
only keys that are actually limited. Each decision gets ``timeout`` seconds, pool wait and connect included. A failure
(refused, reset, timed out, Redis error) makes ``on_error`` decide, ``allow`` (fail open) or ``deny`` (fail closed),
and Redis is left alone for ``retry_interval`` seconds so that a dead or slow Redis costs requests nothing more. The
first failure logs one warning, the first success after it one info line: one pair per outage, not one per request.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio

from ..observability.safe_url import safe_url
from .ratelimit import Decision, RateLimitPolicy

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["SWEEP_EVERY", "MemoryStore", "RateLimitStore", "RedisStore", "StoreUnavailable"]

logger = logging.getLogger("fastgate.error")

SWEEP_EVERY = 256
_SWEEP_BATCH = 32

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
    """Per-process GCRA state, bounded to ``max_keys`` entries; ``clock`` gives microseconds.

    store = MemoryStore(max_keys=100_000)
    decision = await store.decide(key, policy)

    Per process: with N workers the limit is N times looser. Use :class:`RedisStore` to share it.
    """

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], int] = monotonic_us) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self.max_keys = max_keys
        self._clock = clock
        self._tats: dict[bytes, int] = {}  # insertion order = least recently charged first
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
        new_tat, decision = policy.decide(tats.get(key), now)
        if new_tat is not None:
            tats.pop(key, None)
            tats[key] = new_tat
            if len(tats) > self.max_keys:
                self._sweep(now, len(tats))
                while len(tats) > self.max_keys:
                    del tats[next(iter(tats))]
                    self.evicted += 1
        self._decisions += 1
        if self._decisions % SWEEP_EVERY == 0:
            self._sweep(now, _SWEEP_BATCH)
        return decision

    def _sweep(self, now: int, limit: int) -> None:
        """Drop entries whose TAT has passed among the ``limit`` least recently charged ones."""
        tats = self._tats
        expired = [key for key, _ in zip(tats, range(limit), strict=False) if tats[key] <= now]
        for key in expired:
            del tats[key]

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


def _import_redis() -> Any:
    try:
        return importlib.import_module("redis.asyncio")
    except ImportError:
        raise ImportError(
            "store: redis needs the redis package: pip install 'fastgate[redis]' (the 'redis' extra)"
        ) from None


class RedisStore:
    """GCRA state in Redis, shared by every worker and gateway instance that uses the same Redis.

    store = RedisStore("redis://127.0.0.1:6379/0", on_error="allow", timeout=0.005)
    await store.open(); decision = await store.decide(key, policy); await store.aclose()

    ``timeout`` bounds each decision (pool wait, connect and the script call); ``on_error`` decides while Redis is
    failing, and Redis is tried again ``retry_interval`` seconds after a failure.
    """

    def __init__(
        self,
        url: str,
        *,
        on_error: OnError = "allow",
        timeout: float = 0.005,
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
        with anyio.move_on_after(self.timeout) as scope:
            try:
                result = await self._script(keys=[self.key_prefix + key], args=[policy.interval, policy.tolerance])
            except self._errors as exc:
                error = exc
        if scope.cancelled_caught:
            error = TimeoutError(f"no answer within {self.timeout * 1000:g} ms")
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
