from __future__ import annotations

import logging
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio

from fastgate.policies.ratelimit import RateLimitPolicy
from fastgate.policies.stores import (
    LAG_ALLOWANCE,
    SWEEP_EVERY,
    LagAwareDeadline,
    MemoryStore,
    RateLimitStore,
    RedisStore,
    StoreUnavailable,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def new_key() -> bytes:
    return uuid.uuid4().hex.encode()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[RateLimitStore]:
    """Each store behind the same protocol, as uvicorn's tests run once per HTTP protocol implementation."""
    if request.param == "memory":
        result: RateLimitStore = MemoryStore()
    else:
        result = RedisStore(redis_server.url, timeout=0.5)  # generous: the CI box has two busy cores
    await result.open()
    try:
        yield result
    finally:
        await result.aclose()


# --- both stores --------------------------------------------------------------------------------------------------


async def test_burst_goes_at_once_then_requests_are_refused(store: RateLimitStore) -> None:
    policy = RateLimitPolicy(rate=10, period=60.0, burst=5)
    key = new_key()
    decisions = [await store.decide(key, policy) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    assert not any(d.degraded for d in decisions)
    assert 5.9 <= decisions[-1].retry_after <= 6.0  # one interval (6 s), minus the little time the calls took
    assert 29.9 <= decisions[-1].reset_after <= 30.0


async def test_keys_are_counted_apart(store: RateLimitStore) -> None:
    policy = RateLimitPolicy(rate=1, period=60.0, burst=1)
    first, second = new_key(), new_key()
    assert (await store.decide(first, policy)).allowed
    assert not (await store.decide(first, policy)).allowed
    assert (await store.decide(second, policy)).allowed


async def test_refused_key_is_allowed_again_after_retry_after(store: RateLimitStore) -> None:
    policy = RateLimitPolicy(rate=20, period=1.0, burst=1)  # one every 50 ms
    key = new_key()
    assert (await store.decide(key, policy)).allowed
    refused = await store.decide(key, policy)
    assert not refused.allowed and 0 < refused.retry_after <= 0.05
    started = time.monotonic()
    with anyio.fail_after(2):
        while not (await store.decide(key, policy)).allowed:  # noqa: ASYNC110 - polling the store
            await anyio.sleep(0.005)
    assert time.monotonic() - started >= refused.retry_after - 0.002


# --- memory -------------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


async def test_memory_store_rotating_keys_cannot_grow_memory_without_bound() -> None:
    store = MemoryStore(max_keys=1000, clock=FakeClock())
    policy = RateLimitPolicy(rate=1, period=3600.0, burst=10)  # entries live an hour: nothing expires by itself
    for index in range(20_000):
        await store.decide(b"attacker-%d" % index, policy)
        assert len(store) <= 1000
    assert store.evicted == 19_000
    assert "keys=1000/1000 evicted=19000" in repr(store)


async def test_memory_store_sweeps_keys_whose_bucket_is_full_again() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    policy = RateLimitPolicy(rate=10, period=1.0, burst=1)
    for index in range(200):
        await store.decide(b"client-%d" % index, policy)
    assert len(store) == 200
    clock.now += 100_000  # every bucket full again: the entries carry nothing
    for _ in range(SWEEP_EVERY * 8):  # each sweep looks at a few of the least recently charged keys
        await store.decide(b"steady", policy)
        clock.now += 100_000
    assert len(store) == 1
    assert store.evicted == 0


async def test_memory_store_eviction_prefers_keys_that_are_no_longer_limited() -> None:
    clock = FakeClock()
    store = MemoryStore(max_keys=4, clock=clock)
    slow = RateLimitPolicy(rate=1, period=3600.0, burst=1)
    fast = RateLimitPolicy(rate=1000, period=1.0, burst=1)
    await store.decide(b"limited", slow)
    for index in range(3):
        await store.decide(b"passing-%d" % index, fast)
    clock.now += 10_000
    await store.decide(b"new", fast)  # over max_keys: the expired "passing" entries go first
    assert store.evicted == 0
    assert not (await store.decide(b"limited", slow)).allowed


def test_memory_store_million_rotating_keys_bounded_memory_and_constant_time_per_decision() -> None:
    """Issue 17 item 8: past 100,000 keys each new key scanned them all (11 ms per decision). Now O(1): the time per
    decision with 1,000,000 rotating keys (evicting on every one) stays within a generous factor of the time at
    10,000 (no eviction yet), measured in the same run; the store never holds more than its bound."""
    clock = FakeClock()
    store = MemoryStore(max_keys=100_000, clock=clock)
    policy = RateLimitPolicy(rate=1, period=3600.0, burst=10)  # nothing expires: every new key past the bound evicts
    chunk = 10_000
    per_decision: list[float] = []
    started = time.monotonic()
    for first in range(0, 1_000_000, chunk):
        keys = [b"2001:db8::%x" % index for index in range(first, first + chunk)]
        began = time.perf_counter()
        for key in keys:
            store.decide_now(key, policy)
        per_decision.append((time.perf_counter() - began) / chunk)
        assert len(store) <= 100_000
        assert time.monotonic() - started < 120, f"1,000,000 decisions take too long (at {first + chunk:,})"
    assert len(store) == 100_000 and store.evicted == 900_000
    at_10k = per_decision[0]
    at_1m = sorted(per_decision[-10:])[5]  # the median of the last 100,000: robust to a busy neighbour
    assert at_1m < 20 * at_10k + 20e-6, f"{at_10k * 1e6:.1f} µs/decision at 10k keys, {at_1m * 1e6:.1f} at 1M"


async def test_memory_store_keeps_a_client_that_is_being_refused_while_keys_rotate() -> None:
    """LRU on *seen*, not on charged: a limited client hammering the gateway stays at the recent end, so rotating
    keys never hand it a fresh bucket."""
    store = MemoryStore(max_keys=100, clock=FakeClock())
    policy = RateLimitPolicy(rate=1, period=3600.0, burst=2)
    for _ in range(2):
        assert (await store.decide(b"hammer", policy)).allowed
    for index in range(1000):
        assert not (await store.decide(b"hammer", policy)).allowed
        await store.decide(b"rotating-%d" % index, policy)
    assert not (await store.decide(b"hammer", policy)).allowed
    assert store.evicted == 1000 - 99


async def test_memory_store_evicts_the_least_recently_seen_key_when_nothing_expired() -> None:
    store = MemoryStore(max_keys=3, clock=FakeClock())
    policy = RateLimitPolicy(rate=1, period=3600.0, burst=1)
    for key in (b"a", b"b", b"c"):
        await store.decide(key, policy)
    assert not (await store.decide(b"a", policy)).allowed  # "a" seen again: "b" is now the oldest
    await store.decide(b"d", policy)
    assert store.evicted == 1
    assert (await store.decide(b"b", policy)).allowed  # "b" went: a fresh bucket (the documented cost)
    assert not (await store.decide(b"a", policy)).allowed


# --- Redis --------------------------------------------------------------------------------------------------------


async def test_redis_key_expires_when_its_bucket_is_full_again(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout=0.5, key_prefix=b"test:")
    await store.open(require=True)
    try:
        key = new_key()
        policy = RateLimitPolicy(rate=10, period=1.0, burst=5)
        for _ in range(3):
            await store.decide(key, policy)
        ttl = await store._client.pttl(b"test:" + key)
        assert 250 <= ttl <= 300
        assert int(await store._client.get(b"test:" + key)) > 1_600_000_000 * 1_000_000  # Redis' clock, in µs
    finally:
        await store.aclose()


async def test_redis_store_loads_its_script_again_after_script_flush(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout=0.5)
    await store.open(require=True)
    try:
        policy = RateLimitPolicy(rate=1, period=60.0, burst=1)
        key = new_key()
        assert (await store.decide(key, policy)).allowed
        await store._client.script_flush()
        refused = await store.decide(key, policy)
        assert not refused.allowed and not refused.degraded
    finally:
        await store.aclose()


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fastgate.error" and "rate limit" in r.getMessage()]


@pytest.mark.parametrize("on_error", ["allow", "deny"])
async def test_redis_outage_follows_on_error_logs_once_and_recovers_without_restart(
    private_redis_server: RedisServer, on_error: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastgate.error")
    server = private_redis_server
    store = RedisStore(server.url, on_error=on_error, timeout=0.5, retry_interval=0.02)  # type: ignore[arg-type]
    await store.open(require=True)
    policy = RateLimitPolicy(rate=1, period=60.0, burst=2)
    key = new_key()
    try:
        assert (await store.decide(key, policy)).allowed

        await anyio.to_thread.run_sync(server.stop)
        decisions = []
        with anyio.fail_after(10):
            for _ in range(50):
                decisions.append(await store.decide(key, policy))
                await anyio.sleep(0.002)  # past retry_interval now and then: Redis is tried again, and fails again
        assert all(d.degraded for d in decisions)
        assert all(d.allowed is (on_error == "allow") for d in decisions)
        assert store.down and store.failures >= 2
        [warning] = outage_lines(caplog)
        assert "failed" in warning and f"on_error={on_error}" in warning

        await anyio.to_thread.run_sync(server.start)  # same socket path: the same address
        with anyio.fail_after(10):
            while (decision := await store.decide(key, policy)).degraded:  # noqa: ASYNC110 - polling Redis
                await anyio.sleep(0.01)
        # limits apply again (a fresh Redis: the key starts over, with burst 2)
        assert decision.allowed
        assert (await store.decide(key, policy)).allowed
        assert not (await store.decide(key, policy)).allowed
        assert not store.down
        assert len(outage_lines(caplog)) == 2
        assert "answers again" in outage_lines(caplog)[1]
    finally:
        await store.aclose()


async def test_slow_redis_costs_at_most_the_timeout_then_on_error_decides(
    private_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastgate.error")
    store = RedisStore(private_redis_server.url, on_error="deny", timeout=0.05, retry_interval=10)
    await store.open(require=True)
    policy = RateLimitPolicy(rate=100, period=1.0, burst=100)
    try:
        assert (await store.decide(new_key(), policy)).allowed
        private_redis_server.pause()
        started = time.monotonic()
        refused = await store.decide(new_key(), policy)
        assert time.monotonic() - started < 0.5
        assert not refused.allowed and refused.degraded and refused.retry_after == 10
        started = time.monotonic()
        assert (await store.decide(new_key(), policy)).degraded  # within retry_interval: Redis is not even asked
        assert time.monotonic() - started < 0.01
        assert "TimeoutError" in outage_lines(caplog)[0]
    finally:
        private_redis_server.resume()
        await store.aclose()


async def _decide_with_the_loop_blocked(store: RedisStore, policy: RateLimitPolicy, turns: int) -> float:
    """One decision while another task, ``turns`` loop turns after it started, blocks the loop for 50 ms with
    synchronous work; how long the decision took."""
    took = 0.0

    async def decide() -> None:
        nonlocal took
        started = time.monotonic()
        assert (await store.decide(new_key(), policy)).allowed
        took = time.monotonic() - started

    async with anyio.create_task_group() as group:
        group.start_soon(decide)
        for _ in range(turns):
            await anyio.lowlevel.checkpoint()
        time.sleep(0.05)  # noqa: ASYNC251 - the point: synchronous work holds the loop while Redis answers
    return took


async def test_redis_loop_blocked_between_send_and_reply_is_not_a_redis_failure(
    private_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17 item 7: the timeout bounds Redis, not our loop. With the old 5 ms default judged in wall time, a
    loop held 50 ms after the command went out counted as a Redis failure and turned the limit off (on_error: allow)
    for retry_interval. The answer arrived in well under a millisecond; only our loop was late to read it."""
    caplog.set_level(logging.INFO, logger="fastgate.error")
    store = RedisStore(private_redis_server.url, on_error="allow", retry_interval=0)  # the default timeout, 20 ms
    await store.open(require=True)
    policy = RateLimitPolicy(rate=1000, period=1.0, burst=1000)
    try:
        blocked = [await _decide_with_the_loop_blocked(store, policy, turns) for turns in (1, 2, 3, 4, 6, 8) * 3]
        assert sum(took >= 0.045 for took in blocked) >= 9, blocked  # the loop really was held during decisions
        # Before: 18 failures in 18, with 5 ms and with 20 ms. One is tolerated: on this shared 2-core machine
        # redis-server itself may wait more than 20 ms for a CPU, which is a real Redis delay.
        assert store.failures <= 1, (store.failures, blocked, outage_lines(caplog))
    finally:
        await store.aclose()


async def test_redis_that_really_stalls_is_a_failure_even_while_the_loop_lags(
    private_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The other side: CLIENT PAUSE holds every command on the Redis side. Then the timer fires on time with no
    answer, a timeout, also when our loop was held once meanwhile (the deadline is extended, not lifted)."""
    caplog.set_level(logging.INFO, logger="fastgate.error")
    store = RedisStore(private_redis_server.url, on_error="deny", timeout=0.02, retry_interval=0)
    admin = redis.asyncio.Redis.from_url(private_redis_server.url)
    await store.open(require=True)
    policy = RateLimitPolicy(rate=1000, period=1.0, burst=1000)
    try:
        assert (await store.decide(new_key(), policy)).allowed
        await admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
        started = time.monotonic()
        refused = await store.decide(new_key(), policy)
        assert not refused.allowed and refused.degraded
        assert time.monotonic() - started < 1.0  # 20 ms, give or take a busy machine
        assert store.failures == 1
        started = time.monotonic()
        took = await _decide_with_the_loop_blocked_expecting_refusal(store, policy)
        assert store.failures == 2
        assert took < 0.05 + 0.02 + LAG_ALLOWANCE + 0.5, took  # blocked 50 ms + timeout + allowance, generously
        assert "TimeoutError" in outage_lines(caplog)[0]
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        await store.aclose()


async def _decide_with_the_loop_blocked_expecting_refusal(store: RedisStore, policy: RateLimitPolicy) -> float:
    took = 0.0

    async def decide() -> None:
        nonlocal took
        started = time.monotonic()
        decision = await store.decide(new_key(), policy)
        assert not decision.allowed and decision.degraded
        took = time.monotonic() - started

    async with anyio.create_task_group() as group:
        group.start_soon(decide)
        await anyio.lowlevel.checkpoint()
        time.sleep(0.05)  # noqa: ASYNC251 - our loop is held too: the Redis stall must still count
    return took


def test_lag_aware_deadline_fires_on_time_and_extends_only_for_a_late_timer() -> None:
    """Pure: a deadline whose timer is late by more than the tolerance is moved, one on time cancels."""

    async def main() -> tuple[bool, float, bool]:
        with anyio.CancelScope() as free:
            LagAwareDeadline(free, 0.01)
            await anyio.sleep(5)
        with anyio.CancelScope() as held:
            deadline = LagAwareDeadline(held, 0.01)
            time.sleep(0.06)  # noqa: ASYNC251 - the loop is held past the deadline
            await anyio.sleep(5)  # cancelled 10 ms after the loop came back, not at once
        return free.cancelled_caught, deadline.lag, held.cancelled_caught

    free_cancelled, lag, held_cancelled = anyio.run(main)
    assert free_cancelled and held_cancelled
    assert lag >= 0.04


async def test_redis_unreachable_at_startup(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"unix://{tmp_path}/nothing.sock"
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await RedisStore(url).open(require=True)
    store = RedisStore(url, on_error="allow")
    await store.open()  # not required: logged, and on_error decides until Redis answers
    decision = await store.decide(b"k", RateLimitPolicy(rate=1, period=1.0, burst=1))
    assert decision.allowed and decision.degraded
    assert len(outage_lines(caplog)) == 1
    await store.aclose()


def test_password_stays_out_of_logs_and_reprs() -> None:
    store = RedisStore("redis://user:secret@127.0.0.1:1/0")
    assert "secret" not in repr(store)
    assert "redis://***@127.0.0.1:1/0" in repr(store)  # the whole userinfo goes (issue 17 item 11)


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"fastgate\[redis\]"):
        RedisStore("redis://127.0.0.1:6379/0")


async def test_three_processes_sharing_one_key_get_the_configured_rate(redis_server: RedisServer) -> None:
    """Three independent clients (processes, like three gateway instances) at 3x the limit for 3 s."""
    rate, burst, duration = 100, 10, 3.0
    key = uuid.uuid4().hex
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.policies.hammer", redis_server.url, key, repr(duration)]
            + [str(rate), str(rate), str(burst)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    with anyio.fail_after(60):  # all connected (a busy machine starts interpreters slowly), then one start time
        for process in processes:
            assert process.stdout is not None
            assert await anyio.to_thread.run_sync(process.stdout.readline) == b"ready\n"
    start = time.time() + 0.2
    results = []
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(b"%r\n" % start)
        process.stdin.flush()
    for process in processes:
        out, _ = await anyio.to_thread.run_sync(lambda p=process: p.communicate(timeout=30))
        assert process.returncode == 0
        results.append(tuple(int(n) for n in out.split()))
    allowed = sum(a for a, _ in results)
    assert sum(d for _, d in results) == 0
    expected = burst + rate * duration
    assert abs(allowed - expected) <= 0.05 * rate * duration, (allowed, expected, results)
