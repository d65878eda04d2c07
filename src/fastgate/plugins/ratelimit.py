"""The built-in ``rate_limit`` plugin: a route's ``rate_limit:`` key, or ``plugins: [{use: rate_limit, ...}]``.

    routes:
      - prefix: /api
        upstream: api
        rate_limit: {rate: 100, per: 1s, burst: 50, key: client_ip, store: memory}

How this works
--------------
``on_request`` runs before any body byte is read: it builds the request's key (``policies.ratelimit``), asks the
store, and either remembers the ``RateLimit`` field for the response or raises :class:`RateLimited` (a 429 JSON
answer carrying ``Retry-After``, ``RateLimit-Policy`` and ``RateLimit``). ``on_response`` appends the two fields to
the allowed response. The ``RateLimit-Policy`` pair and the ``RateLimit`` prefix are bytes built once here.

A route's ``rate_limit:`` key becomes the **last** plugin of its chain, after its ``plugins:`` (as Envoy runs
``jwt_authn`` before ``ratelimit`` and Kong its auth plugins before rate limiting), so an authentication plugin has
set ``request.identity`` by then. To limit before authentication (against credential guessing, say), name
``rate_limit`` in ``plugins:`` ahead of the auth plugin.

Buckets are counted under ``namespace`` (by default where the limit is configured, ``routes[0].rate_limit`` or
``routes[0].plugins[2]``: the same on every worker and instance that loads the same config) plus the key's values.

``store: memory`` is a :class:`MemoryStore` of this plugin, per process. ``store: redis`` uses the gateway's one
:class:`RedisStore` per process for its ``redis:`` config (:data:`REDIS_STORES`), opened by the first route's
``startup`` in the lifespan and closed by the last one's ``shutdown``: one connection pool however many routes use it.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from ..config import RateLimitConfig, RedisConfig
from ..exceptions import RateLimited
from ..policies.ratelimit import Decision, KeyPart, client_ip_key, rate_limit_headers, rate_limit_key, route_digest
from ..policies.stores import MemoryStore, RedisStore
from .base import Plugin, RequestContext, ResponseHead

__all__ = ["REDIS_STORES", "RateLimit", "RedisStores"]


class RedisStores:
    """One :class:`RedisStore` per :class:`RedisConfig` (and event loop) in this process, counted by its users.

    >>> store = await REDIS_STORES.acquire(config)   # the first user opens it (a plugin's startup)
    >>> await REDIS_STORES.release(config)           # the last user closes it (a plugin's shutdown)
    """

    def __init__(self) -> None:
        self._stores: dict[tuple[RedisConfig, asyncio.AbstractEventLoop], tuple[RedisStore, int]] = {}

    async def acquire(self, config: RedisConfig) -> RedisStore:
        slot = (config, asyncio.get_running_loop())  # a redis-py asyncio client belongs to one loop
        found = self._stores.get(slot)
        if found is not None:
            self._stores[slot] = (found[0], found[1] + 1)
            return found[0]
        store = RedisStore(
            config.url,
            on_error=config.on_error,
            timeout=config.timeout,
            retry_interval=config.retry_interval,
            max_connections=config.max_connections,
        )
        self._stores[slot] = (store, 1)
        await store.open()  # unreachable: logged once, and on_error decides until Redis answers
        return store

    async def release(self, config: RedisConfig) -> None:
        slot = (config, asyncio.get_running_loop())
        found = self._stores.get(slot)
        if found is None:
            return
        store, users = found
        if users > 1:
            self._stores[slot] = (store, users - 1)
            return
        del self._stores[slot]
        await store.aclose()

    def __len__(self) -> int:
        return len(self._stores)

    def __repr__(self) -> str:
        return f"<RedisStores {[f'{store!r} users={users}' for store, users in self._stores.values()]}>"


REDIS_STORES = RedisStores()


class RateLimit(Plugin):
    """``rate`` per ``per`` after a ``burst``, counted per ``key`` in ``store`` (the options of ``rate_limit:``).

    >>> RateLimit(rate=100, per="1s", burst=50, key="header:x-api-key,client_ip")

    ``name`` labels the header fields (``"default"``; give two limits on one route different names).
    ``namespace`` and ``redis`` are filled in by the gateway: where the limit is configured, and its ``redis:``.
    """

    def __init__(
        self,
        *,
        name: str = "default",
        namespace: str = "rate_limit",
        redis: RedisConfig | dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.config = RateLimitConfig.model_validate(options)
        self.policy = self.config.policy(name)
        self.parts = self.config.key_parts
        self.namespace = namespace.encode("utf-8")
        self.redis = RedisConfig.model_validate(redis) if isinstance(redis, dict) else redis
        self.memory = MemoryStore() if self.config.store == "memory" else None
        self._redis_store: RedisStore | None = None
        self._state_key = f"fastgate.rate_limit.{id(self):x}"  # this limit's entry in request.state
        self._policy_header = (b"ratelimit-policy", self.policy.policy_field())
        self._field_prefix = self._policy_header[1].rpartition(b";q=")[0] + b";r="  # b'"default";r='
        # the default key (client_ip alone) from a digest of the namespace hashed once
        self._ip_digest = route_digest(self.namespace) if self.parts == (KeyPart("client_ip"),) else None

    async def startup(self) -> None:
        if self.memory is not None:
            return
        if self.redis is None:
            raise RuntimeError("rate_limit store 'redis' needs a top-level redis: {url: redis://host:6379/0}")
        self._redis_store = await REDIS_STORES.acquire(self.redis)

    async def shutdown(self) -> None:
        if self._redis_store is not None and self.redis is not None:
            self._redis_store = None
            await REDIS_STORES.release(self.redis)

    async def on_request(self, request: RequestContext) -> None:
        client = request.client
        client_ip = client[0].encode("latin-1") if client else b"unknown"
        if self._ip_digest is not None:
            key = client_ip_key(self._ip_digest, client_ip)
        else:
            identity = request.identity
            key = rate_limit_key(
                self.parts,
                route=self.namespace,
                client_ip=client_ip,
                headers=request.headers.raw,
                identity=identity.encode("utf-8") if identity else None,
            )
        decision: Decision
        if self.memory is not None:
            decision = self.memory.decide_now(key, self.policy)
        elif self._redis_store is not None:
            decision = await self._redis_store.decide(key, self.policy)
        else:
            raise RuntimeError("rate_limit used before the gateway's lifespan started its store")
        if not decision.allowed:
            raise RateLimited("rate limit exceeded", headers=rate_limit_headers(self.policy, decision))
        # What on_response appends: the RateLimit field value, or None when Redis was not asked (on_error: allow).
        request.state[self._state_key] = None if decision.degraded else self._field(decision)

    def _field(self, decision: Decision) -> bytes:
        """``rate_limit_headers``' RateLimit value (``t`` rounded up), from the prefix built once."""
        return self._field_prefix + b"%d;t=%d" % (decision.remaining, math.ceil(round(decision.reset_after, 6)))

    async def on_response(self, request: RequestContext, response: ResponseHead) -> None:
        raw = response.headers.raw
        raw.append(self._policy_header)
        value = request.state.get(self._state_key)
        if value is not None:
            raw.append((b"ratelimit", value))

    def __repr__(self) -> str:
        store = self.memory if self.memory is not None else (self._redis_store or "redis (not started)")
        return (
            f"<RateLimit {self.namespace.decode()} {self.policy.policy_field().decode()} key={self.config.key} {store}>"
        )
