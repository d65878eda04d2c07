"""Circuit breaking per upstream (Envoy's thresholds), through a real gateway in front of real upstream servers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx
import pytest

from fastgate import Gateway
from fastgate.config import build_config
from fastgate.observability.metrics import metrics_mapping
from fastgate.upstream.cluster import Cluster
from fastgate.upstream.guarded import GuardedCluster
from tests.servers import RunningServer, answer_lifespan, run_gateway, run_server, wait_until

pytestmark = pytest.mark.anyio


@dataclass
class HoldingApp:
    """An upstream that holds every request until ``release`` is set.

    ``/flaky?id=X`` answers the first request for each X with 503 at once and holds the later ones (its retries).
    """

    arrivals: list[str] = field(default_factory=list)
    release: anyio.Event = field(default_factory=anyio.Event)
    flaky_seen: set[str] = field(default_factory=set)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        query = scope["query_string"].decode()
        self.arrivals.append(scope["path"] + ("?" + query if query else ""))
        if scope["path"] == "/flaky":
            key = parse_qs(query)["id"][0]
            if key not in self.flaky_seen:
                self.flaky_seen.add(key)
                await _answer(send, 503, b"upstream says 503")
                return
        await self.release.wait()
        await _answer(send, 200, b"done")


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def breaker_gateway(
    urls: list[str], breaker: dict[str, int], **upstream: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, GuardedCluster]]:
    address: dict[str, Any] = {"url": urls[0]} if len(urls) == 1 else {"targets": [{"url": u} for u in urls]}
    gateway = Gateway(
        build_config(
            {
                "upstreams": {"api": {**address, "circuit_breaker": breaker, **upstream}},
                "routes": [{"prefix": "/", "upstream": "api"}],
            }
        )
    )
    async with run_gateway(gateway) as server, httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        cluster = gateway.transports["api"]
        assert isinstance(cluster, GuardedCluster)
        yield client, cluster


@contextlib.asynccontextmanager
async def holding_upstream() -> AsyncIterator[tuple[HoldingApp, RunningServer]]:
    app = HoldingApp()
    async with run_server(app) as server:
        yield app, server


class Requests:
    """Requests started in the background, their responses collected by path."""

    def __init__(self, client: httpx.AsyncClient, group: Any) -> None:
        self.client = client
        self.group = group
        self.responses: list[httpx.Response] = []

    def start(self, path: str) -> None:
        async def run() -> None:
            self.responses.append(await self.client.get(path))

        self.group.start_soon(run)


def assert_overflow(response: httpx.Response, which: str) -> None:
    assert response.status_code == 503
    assert response.json()["error"] == "upstream_overflow"
    assert response.headers["x-fastgate-overflow"] == which


async def test_over_max_requests_is_answered_503_at_once_and_the_upstream_never_sees_it() -> None:
    async with (
        holding_upstream() as (app, upstream),
        breaker_gateway([upstream.url], {"max_requests": 2}) as (
            client,
            cluster,
        ),
    ):
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                held = Requests(client, group)
                held.start("/hold?n=1")
                held.start("/hold?n=2")
                await wait_until(lambda: len(app.arrivals) == 2, limit=10)
                refused = await client.get("/hold?n=3")  # answered while the two are still held
                assert_overflow(refused, "max_requests")
                assert cluster.breaker_stats().requests == 2
                app.release.set()
        assert [r.status_code for r in held.responses] == [200, 200]
        assert sorted(app.arrivals) == ["/hold?n=1", "/hold?n=2"]
        stats = cluster.breaker_stats()
        assert (stats.requests, stats.pending, stats.retries, stats.request_overflows) == (0, 0, 0, 1)


async def test_over_max_pending_requests_is_answered_503_and_the_queue_stays_bounded() -> None:
    breaker = {"max_connections": 1, "max_pending_requests": 1}
    async with holding_upstream() as (app, upstream), breaker_gateway([upstream.url], breaker) as (client, cluster):
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                held = Requests(client, group)
                held.start("/hold?n=1")
                await wait_until(lambda: len(app.arrivals) == 1, limit=10)
                held.start("/hold?n=2")  # the one connection is busy: this one waits
                await wait_until(lambda: cluster.breaker_stats().pending == 1, limit=10)
                refused = await client.get("/hold?n=3")
                assert_overflow(refused, "max_pending_requests")
                assert app.arrivals == ["/hold?n=1"]
                app.release.set()
        assert [r.status_code for r in held.responses] == [200, 200]
        assert app.arrivals == ["/hold?n=1", "/hold?n=2"]
        stats = cluster.breaker_stats()
        assert (stats.requests, stats.pending, stats.connections, stats.pending_overflows) == (0, 0, 1, 1)


async def test_over_max_connections_without_a_queue_is_answered_503_naming_max_connections() -> None:
    breaker = {"max_connections": 1, "max_pending_requests": 0}
    async with holding_upstream() as (app, upstream), breaker_gateway([upstream.url], breaker) as (client, cluster):
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                held = Requests(client, group)
                held.start("/hold?n=1")
                await wait_until(lambda: len(app.arrivals) == 1, limit=10)
                refused = await client.get("/hold?n=2")
                assert_overflow(refused, "max_connections")
                app.release.set()
            # the connection is free again: the next request reuses it
            assert (await client.get("/hold?n=3")).status_code == 200
        assert [r.status_code for r in held.responses] == [200]
        assert app.arrivals == ["/hold?n=1", "/hold?n=3"]
        stats = cluster.breaker_stats()
        assert stats.connection_overflows >= 1
        assert (stats.requests, stats.connections) == (0, 1)


async def test_max_retries_limits_concurrent_retries_and_the_last_answer_goes_to_the_client() -> None:
    retries = {"max_retries": 1, "retry_on": [503], "backoff": {"base": 0.001, "max": 0.002}}
    async with (
        holding_upstream() as (app, upstream),
        breaker_gateway([upstream.url], {"max_retries": 1}, retries=retries) as (client, cluster),
    ):
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                held = Requests(client, group)
                held.start("/flaky?id=a")  # 503, then its retry is held upstream: one retry in flight
                await wait_until(lambda: app.arrivals == ["/flaky?id=a", "/flaky?id=a"], limit=10)
                assert cluster.breaker_stats().retries == 1
                answered = await client.get("/flaky?id=b")  # its retry would be a second one in flight
                assert answered.status_code == 503
                assert answered.text == "upstream says 503"  # the try's own answer, not an overflow
                assert "x-fastgate-overflow" not in answered.headers
                app.release.set()
        assert [r.status_code for r in held.responses] == [200]
        assert app.arrivals.count("/flaky?id=b") == 1
        stats = cluster.breaker_stats()
        assert (stats.retries, stats.retry_overflows, stats.requests) == (0, 1, 0)


async def test_under_the_thresholds_every_request_passes_and_counts_return_to_zero() -> None:
    breaker = {"max_connections": 4, "max_pending_requests": 16, "max_requests": 20}
    async with holding_upstream() as (app, upstream), breaker_gateway([upstream.url], breaker) as (client, cluster):
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                held = Requests(client, group)
                for n in range(20):
                    held.start(f"/hold?n={n}")
                await wait_until(lambda: len(app.arrivals) == 4 and cluster.breaker_stats().pending == 16, limit=20)
                stats = cluster.breaker_stats()
                assert (stats.requests, stats.pending, stats.connections) == (4, 16, 4)
                app.release.set()
        assert [r.status_code for r in held.responses] == [200] * 20
        stats = cluster.breaker_stats()
        assert (stats.requests, stats.pending, stats.retries) == (0, 0, 0)
        assert stats.overflows == {
            "max_connections": 16,
            "max_pending_requests": 0,
            "max_requests": 0,
            "max_retries": 0,
        }


async def test_max_connections_spans_the_targets_of_an_upstream() -> None:
    breaker = {"max_connections": 1, "max_pending_requests": 4}
    async with (
        holding_upstream() as (app_a, upstream_a),
        holding_upstream() as (app_b, upstream_b),
        breaker_gateway([upstream_a.url, upstream_b.url], breaker) as (client, cluster),
    ):
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                held = Requests(client, group)
                held.start("/hold?n=1")  # round robin: target a
                await wait_until(lambda: len(app_a.arrivals) == 1, limit=10)
                held.start("/hold?n=2")  # target b: may not open a second connection, so it waits
                await wait_until(lambda: cluster.breaker_stats().pending == 1, limit=10)
                assert app_b.arrivals == []
                app_a.release.set()
                app_b.release.set()
            # a's connection was closed so that b's waiter could open one
            assert app_b.arrivals == ["/hold?n=2"]
            assert cluster.breaker_stats().connections == 1
            # target a again: b's idle connection is closed to make room
            assert (await client.get("/hold?n=3")).status_code == 200
        assert [r.status_code for r in held.responses] == [200, 200]
        assert app_a.arrivals == ["/hold?n=1", "/hold?n=3"]
        assert cluster.breaker_stats().connections == 1


async def test_without_a_circuit_breaker_the_plain_cluster_is_used() -> None:
    async with holding_upstream() as (app, upstream):
        gateway = Gateway(
            build_config({"upstreams": {"api": {"url": upstream.url}}, "routes": [{"prefix": "/", "upstream": "api"}]})
        )
        async with run_gateway(gateway):
            cluster = gateway.transports["api"]
            assert type(cluster) is Cluster
            assert cluster.pool.breaker is None


async def test_circuit_breaker_counts_and_overflows_are_prometheus_metrics() -> None:
    async with holding_upstream() as (app, upstream):
        gateway = Gateway(
            build_config(
                {
                    "upstreams": {"api": {"url": upstream.url, "circuit_breaker": {"max_requests": 2}}},
                    "routes": [{"prefix": "/", "upstream": "api"}],
                }
            )
        )
        metrics = gateway.observability.metrics
        assert metrics is not None

        def scraped() -> dict[str, float]:
            assert metrics is not None
            return dict(metrics_mapping(metrics.render()[0].decode()))

        async with run_gateway(gateway) as server, httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            values = scraped()
            assert values['fastgate_upstream_overflow_total{threshold="max_requests",upstream="api"}'] == 0
            assert values['fastgate_circuit_breaker_requests{upstream="api"}'] == 0
            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    held = Requests(client, group)
                    held.start("/hold?n=1")
                    held.start("/hold?n=2")
                    await wait_until(lambda: len(app.arrivals) == 2, limit=10)
                    for _ in range(3):
                        assert_overflow(await client.get("/hold?n=3"), "max_requests")
                    values = scraped()
                    assert values['fastgate_circuit_breaker_requests{upstream="api"}'] == 2
                    assert values['fastgate_circuit_breaker_connections{upstream="api"}'] == 2
                    assert values['fastgate_circuit_breaker_pending_requests{upstream="api"}'] == 0
                    assert values['fastgate_circuit_breaker_retries{upstream="api"}'] == 0
                    assert values['fastgate_upstream_overflow_total{threshold="max_requests",upstream="api"}'] == 3
                    app.release.set()
            values = scraped()
            assert values['fastgate_circuit_breaker_requests{upstream="api"}'] == 0
            assert values['fastgate_upstream_overflow_total{threshold="max_requests",upstream="api"}'] == 3  # not twice
            assert values['fastgate_upstream_overflow_total{threshold="max_pending_requests",upstream="api"}'] == 0


async def test_circuit_breaker_refusals_log_one_line_per_burst_then_its_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def overflow_lines() -> list[str]:
        records = caplog.records
        return [r.getMessage() for r in records if r.name == "fastgate.error" and "circuit breaker" in r.getMessage()]

    async with (
        holding_upstream() as (app, upstream),
        breaker_gateway([upstream.url], {"max_requests": 1}) as (client, _),
    ):
        with caplog.at_level(logging.INFO, logger="fastgate.error"), anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                held = Requests(client, group)
                held.start("/hold?n=1")
                await wait_until(lambda: len(app.arrivals) == 1, limit=10)
                for _ in range(20):
                    assert_overflow(await client.get("/hold?n=2"), "max_requests")
                assert len(overflow_lines()) == 1  # the first refusal of the burst, as any error is logged
                assert "-> 503 upstream_overflow" in overflow_lines()[0]
                await wait_until(lambda: len(overflow_lines()) == 2, limit=10)  # the burst ended: its size
                assert overflow_lines()[1] == (
                    "upstream api: circuit breaker refused 20 request(s) in a burst (20 over max_requests)"
                )
                assert_overflow(await client.get("/hold?n=3"), "max_requests")  # a new burst logs again
                assert len(overflow_lines()) == 3 and "-> 503 upstream_overflow" in overflow_lines()[2]
                app.release.set()
