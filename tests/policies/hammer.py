"""One independent gateway-like client for the shared-limit test: ``python -m tests.policies.hammer URL KEY DURATION
PER_SECOND RATE BURST``. Once connected it prints ``ready`` and reads the wall-clock START from stdin (so a slow
interpreter start on a busy machine cannot eat into the run); from START for DURATION seconds it asks
``RedisStore.decide`` PER_SECOND times a second, paced to a schedule, and prints ``allowed degraded`` counts."""

from __future__ import annotations

import sys
import time

import anyio

from fastgate.policies.ratelimit import RateLimitPolicy
from fastgate.policies.stores import RedisStore


async def main(url: str, key: str, duration: float, per_second: float, rate: int, burst: int) -> None:
    policy = RateLimitPolicy(rate=rate, period=1.0, burst=burst)
    store = RedisStore(url, timeout=0.5)
    await store.open(require=True)
    allowed = degraded = 0
    try:
        print("ready", flush=True)
        start = float(await anyio.to_thread.run_sync(sys.stdin.readline))
        await anyio.sleep(max(0.0, start - time.time()))
        sent = 0
        while True:
            due = start + sent / per_second
            if due >= start + duration:
                break
            await anyio.sleep(max(0.0, due - time.time()))
            decision = await store.decide(key.encode(), policy)
            allowed += decision.allowed and not decision.degraded
            degraded += decision.degraded
            sent += 1
    finally:
        await store.aclose()
    print(allowed, degraded, flush=True)


if __name__ == "__main__":
    url, key, duration, per_second, rate, burst = sys.argv[1:]
    anyio.run(main, url, key, float(duration), float(per_second), int(rate), int(burst))
