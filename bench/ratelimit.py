"""µs per rate-limit decision, memory and Redis: ``python bench/ratelimit.py [N]`` (starts a private redis-server).

Bounded: N decisions per store (default 20,000), one client, sequential awaits; spread over 1,000 keys. The
``rate_limit`` plugin rows add what a request on a limited route pays around the decision: the key (a BLAKE2b
digest of the route and the client's address), the RateLimit field, and the two headers appended to the response.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastgate.config import RedisConfig
from fastgate.plugins.base import HeaderList, RequestContext, ResponseHead
from fastgate.plugins.ratelimit import RateLimit
from fastgate.policies.ratelimit import RateLimitPolicy
from fastgate.policies.stores import MemoryStore, RateLimitStore, RedisStore
from tests.redis_server import RedisServer


async def measure(store: RateLimitStore, count: int) -> float:
    policy = RateLimitPolicy(rate=100, period=1.0, burst=50)
    keys = [b"bench-%d" % (index % 1000) for index in range(count)]
    await store.open()
    started = time.perf_counter()
    for key in keys:
        await store.decide(key, policy)
    elapsed = time.perf_counter() - started
    await store.aclose()
    return elapsed / count * 1e6


async def measure_plugin(plugin: RateLimit, count: int) -> float:
    requests = [
        RequestContext("GET", b"/api", HeaderList([]), "/api", (f"10.0.{index % 1000 // 256}.{index % 256}", 5000))
        for index in range(count)
    ]
    await plugin.startup()
    started = time.perf_counter()
    for request in requests:
        await plugin.on_request(request)  # rate 1e6/s: never refused, the common case
        await plugin.on_response(request, ResponseHead(200, HeaderList([])))
    elapsed = time.perf_counter() - started
    await plugin.shutdown()
    return elapsed / count * 1e6


async def main(count: int) -> None:
    print(f"memory: {await measure(MemoryStore(), count):.2f} µs/decision")
    options = {"rate": 1_000_000, "per": "1s", "burst": 1_000_000, "key": "client_ip"}
    print(f"rate_limit plugin, memory: {await measure_plugin(RateLimit(**options), count):.2f} µs/request")
    with RedisServer() as server:
        print(f"redis (unix socket): {await measure(RedisStore(server.url, timeout=1.0), count):.1f} µs/decision")
        redis = RedisConfig(url=server.url, timeout=1.0)
        plugin = RateLimit(**options, store="redis", redis=redis)
        print(f"rate_limit plugin, redis (unix socket): {await measure_plugin(plugin, count):.1f} µs/request")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, backend_options={"use_uvloop": True})
