"""The connection pool against a real listening socket: limits, hand-over and fairness."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest

from fastgate.config import UpstreamConfig
from fastgate.exceptions import UpstreamConnectError, UpstreamUnavailable
from fastgate.upstream.pool import ConnectionPool, PoolStats
from fastgate.upstream.transport import FastgateTransport, UpstreamRequest
from tests.misbehaving import raw_upstream, read_head
from tests.servers import REFUSED_PORT, wait_until

pytestmark = pytest.mark.anyio


async def _idle(stream: anyio.abc.SocketStream, _: int) -> None:
    await anyio.sleep(30)


def _pool(url: str, **limits: object) -> ConnectionPool:
    return ConnectionPool("test", UpstreamConfig(url=url, limits=limits, timeouts={"pool": 2}))


async def test_released_connection_goes_to_the_first_waiter() -> None:
    async with raw_upstream(_idle) as (url, connections):
        pool = _pool(url, max_connections=1)
        first = await pool.acquire()
        got: list[object] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: _take(pool, got))
            await anyio.sleep(0.05)
            assert pool.stats().waiting == 1
            pool.release(first, reusable=True)
        assert got == [first]
        pool.aclose()
    assert connections == [1]


async def test_freed_slot_is_reserved_for_the_waiter_not_a_newcomer() -> None:
    async with raw_upstream(_idle) as (url, _):
        pool = _pool(url, max_connections=1)
        first = await pool.acquire()
        order: list[str] = []

        async def take(name: str) -> None:
            conn = await pool.acquire()
            order.append(name)
            pool.release(conn, reusable=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(take, "waiter")
            await anyio.sleep(0.05)
            pool.release(first, reusable=False)  # closed: the slot, not the connection, is handed over
            tg.start_soon(take, "newcomer")  # arrives before the waiter has run
        assert order == ["waiter", "newcomer"]
        assert pool.size == 1
        pool.aclose()


async def test_cancelled_waiter_passes_its_slot_on() -> None:
    async with raw_upstream(_idle) as (url, _):
        pool = _pool(url, max_connections=1)
        first = await pool.acquire()
        got: list[object] = []
        async with anyio.create_task_group() as tg:
            doomed = anyio.CancelScope()
            tg.start_soon(_cancellable_take, pool, doomed)
            await anyio.sleep(0.05)
            tg.start_soon(_take, pool, got)
            await anyio.sleep(0.05)
            pool.release(first, reusable=False)
            doomed.cancel()
        assert len(got) == 1
        assert pool.size == 1
        pool.aclose()


async def test_pool_timeout_gives_503_and_shutdown_fails_waiters() -> None:
    async with raw_upstream(_idle) as (url, _):
        pool = ConnectionPool("test", UpstreamConfig(url=url, limits={"max_connections": 1}, timeouts={"pool": 0.1}))
        await pool.acquire()
        with pytest.raises(UpstreamUnavailable, match="pool exhausted"):
            await pool.acquire()
        pool.timeouts = pool.timeouts.model_copy(update={"pool": 5})
        errors: list[BaseException] = []

        async def wait() -> None:
            try:
                await pool.acquire()
            except UpstreamUnavailable as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.05)
            pool.aclose()
        assert [str(e) for e in errors] == ["gateway is shutting down"]


async def _take(pool: ConnectionPool, got: list[object]) -> None:
    got.append(await pool.acquire())


async def _cancellable_take(pool: ConnectionPool, scope: anyio.CancelScope) -> None:
    with scope:
        await pool.acquire()


async def test_timed_out_and_cancelled_waiters_leave_the_queue() -> None:
    async with raw_upstream(_idle) as (url, _):
        pool = ConnectionPool("test", UpstreamConfig(url=url, limits={"max_connections": 1}, timeouts={"pool": 0.05}))
        held = await pool.acquire()
        timed_out: list[BaseException] = []

        async def give_up() -> None:
            try:
                await pool.acquire()
            except UpstreamUnavailable as exc:
                timed_out.append(exc)

        with anyio.fail_after(10):
            for _ in range(4):  # rounds of 500 acquires that all time out: 2,000 in all, as in the report
                async with anyio.create_task_group() as tg:
                    for _ in range(500):
                        tg.start_soon(give_up)
        assert len(timed_out) == 2000
        assert pool.stats().waiting == 0
        assert pool.stats().pool_timeouts == 2000

        pool.timeouts = pool.timeouts.model_copy(update={"pool": 30})
        async with anyio.create_task_group() as tg:
            for _ in range(500):
                tg.start_soon(pool.acquire)
            await wait_until(lambda: pool.stats().waiting == 500)
            tg.cancel_scope.cancel()  # clients that left while queued
        assert pool.stats().waiting == 0

        # the queue still works for whoever waits now
        async with anyio.create_task_group() as tg:
            got: list[object] = []
            tg.start_soon(_take, pool, got)
            await wait_until(lambda: pool.stats().waiting == 1)
            pool.release(held, reusable=True)
        assert got == [held]
        pool.aclose()


async def test_stale_connection_retry_keeps_the_healthy_idle_connections() -> None:
    both_open = anyio.Event()
    opened = 0
    died = False

    async def handler(stream: anyio.abc.SocketStream, number: int) -> None:
        nonlocal opened, died
        opened += 1
        if opened == 2:
            both_open.set()
        while True:
            head = await read_head(stream)
            if head.startswith(b"GET /hold "):
                await both_open.wait()
            elif head.startswith(b"GET /die ") and not died:
                died = True
                return  # a keep-alive connection the upstream closed just as we reused it
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with raw_upstream(handler) as (url, connections):
        async with FastgateTransport("test", UpstreamConfig(url=url)) as transport:

            async def get(path: bytes) -> int:
                response = await transport.send(UpstreamRequest(b"GET", path, [(b"host", b"x")]), None)
                while await response.read():
                    pass
                await response.aclose()
                return response.status

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:  # two connections, both idle afterwards
                    tg.start_soon(get, b"/hold")
                    tg.start_soon(get, b"/hold")
                assert transport.pool.stats().idle == 2
                assert await get(b"/die") == 200  # retried once on a fresh connection
            stats = transport.pool.stats()
            assert (stats.idle, stats.busy) == (2, 0)  # the healthy idle one and the fresh one
            assert stats.connects == 3
            assert await get(b"/a") == 200 and await get(b"/b") == 200
            assert transport.pool.stats().connects == 3  # both served by kept connections
    assert connections == [1, 2, 3]


async def test_pool_stats_count_connects_reuses_and_errors() -> None:
    async with raw_upstream(_idle) as (url, _):
        pool = _pool(url, max_connections=2)
        assert pool.stats() == PoolStats(0, 0, 0, 0, 0, 0, 0, 0, 0)
        first = await pool.acquire()
        assert (pool.stats().busy, pool.stats().connects) == (1, 1)
        pool.release(first, reusable=True)
        assert (pool.stats().busy, pool.stats().idle) == (0, 1)
        again = await pool.acquire()
        assert again is first and pool.stats().reuses == 1
        pool.release(again, reusable=False)
        assert pool.stats().discards == 1 and pool.stats().idle == 0
        pool.aclose()

    refused = ConnectionPool("test", UpstreamConfig(url=f"http://127.0.0.1:{REFUSED_PORT}"))
    with pytest.raises(UpstreamConnectError) as caught:
        await refused.acquire()
    assert refused.stats().connect_errors == 1 and refused.stats().connecting == 0
    assert caught.value.upstream == "test"
    assert caught.value.target == refused.target == f"127.0.0.1:{refused.port}"
