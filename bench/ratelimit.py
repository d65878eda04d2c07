"""µs per rate-limit decision, memory and Redis: ``python bench/ratelimit.py [N]`` (starts a private redis-server).

Bounded: N decisions per store (default 20,000), one client, sequential awaits; spread over 1,000 keys.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


async def main(count: int) -> None:
    print(f"memory: {await measure(MemoryStore(), count):.2f} µs/decision")
    with RedisServer() as server:
        print(f"redis (unix socket): {await measure(RedisStore(server.url, timeout=1.0), count):.1f} µs/decision")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, backend_options={"use_uvloop": True})
