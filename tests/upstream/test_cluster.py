"""Several targets per upstream, through a real gateway in front of real upstream servers (one per target)."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect

from fastgate import Gateway
from fastgate.config import UpstreamConfig, build_config
from fastgate.exceptions import BadRequest
from fastgate.upstream.balancer import LeastRequest
from fastgate.upstream.cluster import Cluster
from fastgate.upstream.transport import CHUNKED, UpstreamRequest
from tests.servers import RunningServer, run_gateway, wait_until
from tests.ws_upstream import WebSocketRecorder, WebSocketUpstreamApp

pytestmark = pytest.mark.anyio


@dataclass
class TargetApp:
    """An upstream that counts what it gets and answers with its name, a chosen status or after a delay."""

    name: str
    status: int = 200
    delay: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)  # per method
    paths: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    bodies: list[int] = field(default_factory=list)
    break_mid_body: bool = False

    @property
    def count(self) -> int:
        return len(self.paths)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        size = 0
        more = True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        if scope["path"] == "/healthz":
            await _answer(send, 200, b"ok")
            return
        self.paths.append(scope["path"])
        self.hosts.append(dict(scope["headers"]).get(b"host", b"").decode())
        self.bodies.append(size)
        if self.delay:
            await anyio.sleep(self.delay)
        if self.break_mid_body:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
            await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
            raise RuntimeError("breaking off the response")  # uvicorn closes the connection mid-body
        await _answer(send, self.statuses.get(scope["method"], self.status), self.name.encode())


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Target:
    """A target server that can be stopped and started again on the same port."""

    def __init__(self, app: Any, group: anyio.abc.TaskGroup, ws: str = "auto") -> None:
        self.app = app
        self.ws = ws
        self.group = group
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._done = anyio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        sock = bind_socket_on(self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, http="httptools", ws=self.ws, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        done = anyio.Event()

        async def serve() -> None:
            try:
                await server.serve([sock])
            finally:
                sock.close()
                done.set()

        self.group.start_soon(serve)
        await wait_until(lambda: server.started or done.is_set(), limit=10)
        self._server, self._done = server, done

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.should_exit = True
            with anyio.fail_after(10):
                await self._done.wait()


def bind_socket_on(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@contextlib.asynccontextmanager
async def targets(*apps: Any, ws: str = "auto") -> AsyncIterator[list[Target]]:
    async with anyio.create_task_group() as group:
        running = [Target(app, group, ws) for app in apps]
        try:
            for target in running:
                await target.start()
            yield running
        finally:
            with anyio.CancelScope(shield=True):
                for target in running:
                    await target.stop()


@contextlib.asynccontextmanager
async def gateway(servers: list[Target], weights: list[int] | None = None, **upstream: Any) -> AsyncIterator[Any]:
    weights = weights or [1] * len(servers)
    config = build_config(
        {
            "upstreams": {
                "api": {"targets": [{"url": s.url, "weight": w} for s, w in zip(servers, weights, strict=True)]}
                | upstream
            },
            "routes": [{"prefix": "/", "upstream": "api"}],
        }
    )
    app = Gateway(config)
    async with run_gateway(app) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        client.cluster = app.transports["api"]  # type: ignore[attr-defined]
        client.gateway = server  # type: ignore[attr-defined]
        yield client


async def load(client: httpx.AsyncClient, n: int, concurrency: int = 8, **kwargs: Any) -> Counter[int]:
    statuses: Counter[int] = Counter()
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            response = await client.get(f"/r{i}", **kwargs)
            statuses[response.status_code] += 1

    async with anyio.create_task_group() as group:
        for _ in range(concurrency):
            group.start_soon(worker)
    return statuses


def cluster_of(client: httpx.AsyncClient) -> Cluster:
    cluster: Cluster = client.cluster  # type: ignore[attr-defined]
    return cluster


# -- balancing -------------------------------------------------------------------------------------------------


async def test_round_robin_weights_3_to_1_send_75_percent_to_the_first_target() -> None:
    a, b = TargetApp("a"), TargetApp("b")
    async with targets(a, b) as servers, gateway(servers, [3, 1]) as client:
        statuses = await load(client, 4000)
    assert statuses == {200: 4000}
    share = a.count / (a.count + b.count)
    print(f"round_robin 3:1 over 4,000 requests: first target {share:.2%}")
    assert abs(share - 0.75) <= 0.02


async def test_least_request_sends_new_requests_away_from_a_slow_target() -> None:
    slow, fast = TargetApp("slow", delay=0.2), TargetApp("fast")
    async with targets(slow, fast) as servers, gateway(servers, balancer="least_request") as client:
        statuses = await load(client, 400, concurrency=16)
    assert statuses == {200: 400}
    print(f"least_request: slow target took {slow.count} of 400")
    assert slow.count < 400 * 0.2


async def test_least_request_in_flight_count_returns_to_zero_after_a_cancelled_and_a_body_error_request() -> None:
    slow, other = TargetApp("slow", delay=3), TargetApp("other", delay=3)  # the servers wait for them on stop
    async with targets(slow, other) as servers:
        upstream = UpstreamConfig(targets=[{"url": s.url} for s in servers], balancer="least_request")
        async with Cluster("api", upstream) as cluster:
            balancer = cluster.balancer
            assert isinstance(balancer, LeastRequest)

            # cancelled while the upstream has the request and has not answered yet
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(cluster.send, UpstreamRequest(b"GET", b"/slow", [(b"host", b"api")]), None)
                    await wait_until(lambda: slow.count + other.count == 1, limit=10)
                    assert sum(balancer.active) == 1
                    scope.cancel()
            assert balancer.active == (0, 0)

            # the client's body breaks off with a bad request after its first piece went upstream
            async def bad_body() -> AsyncIterator[bytes]:
                yield b"x" * 10
                raise BadRequest("bad chunk")

            request = UpstreamRequest(b"POST", b"/body", [(b"host", b"api")], body_length=CHUNKED)
            with pytest.raises(BadRequest):
                await cluster.send(request, bad_body())
            assert balancer.active == (0, 0)


async def test_consistent_hash_keeps_a_key_on_one_target_and_moves_about_1_in_n_when_one_goes() -> None:
    apps = [TargetApp(f"t{i}") for i in range(5)]
    keys = [f"user-{i}" for i in range(400)]

    async def placement(servers: list[Target]) -> dict[str, str]:
        async with gateway(servers, balancer="consistent_hash", hash_on="header:x-user") as client:
            found = {}
            for key in keys:
                seen = {(await client.get("/", headers={"x-user": key})).text for _ in range(2)}
                assert len(seen) == 1, f"{key} went to {seen}"
                found[key] = seen.pop()
            return found

    async with targets(*apps) as servers:
        before = await placement(servers)
        after = await placement(servers[:4])  # t4 removed
        grown = await placement(servers)  # and added back: the same placement as before
    moved = sum(1 for key in keys if before[key] != after[key])
    print(f"consistent_hash N=5: removing one target moved {moved / len(keys):.1%} of {len(keys)} keys")
    assert 0.12 <= moved / len(keys) <= 0.30
    others = sum(1 for key in keys if before[key] != "t4" and after[key] != before[key])
    assert others <= len(keys) * 0.03  # nearly all of them were t4's keys (Maglev is near-minimal, not minimal)
    assert grown == before
    assert Counter(before.values()).most_common()[-1][1] > len(keys) / 5 * 0.5  # every target has keys


async def test_consistent_hash_on_a_cookie_and_on_the_client_address() -> None:
    apps = [TargetApp(f"t{i}") for i in range(3)]
    async with targets(*apps) as servers:
        async with gateway(servers, balancer="consistent_hash", hash_on="cookie:sid") as client:
            for sid in ("a", "b", "c", "d"):
                seen = {(await client.get("/", headers={"cookie": f"x=1; sid={sid}"})).text for _ in range(3)}
                assert len(seen) == 1
        async with gateway(servers, balancer="consistent_hash", hash_on="client_ip") as client:
            seen = {(await client.get("/")).text for _ in range(10)}
            assert len(seen) == 1  # every request comes from 127.0.0.1


async def test_preserve_host_false_sends_each_target_its_own_authority() -> None:
    a, b = TargetApp("a"), TargetApp("b")
    async with targets(a, b) as servers, gateway(servers, preserve_host=False) as client:
        await load(client, 10, concurrency=1)
    assert set(a.hosts) == {f"127.0.0.1:{servers[0].port}"}
    assert set(b.hosts) == {f"127.0.0.1:{servers[1].port}"}


# -- health ----------------------------------------------------------------------------------------------------

HEALTH = {"path": "/healthz", "interval": 1, "timeout": 1, "unhealthy_threshold": 2, "healthy_threshold": 2}


async def test_a_stopped_target_gets_no_new_requests_within_the_bound_and_traffic_returns_when_it_is_back() -> None:
    a, b = TargetApp("a"), TargetApp("b")
    bound = HEALTH["interval"] * HEALTH["unhealthy_threshold"] + 1
    async with targets(a, b) as servers, gateway(servers, health_check=HEALTH) as client:
        cluster = cluster_of(client)
        await load(client, 20)
        await servers[1].stop()
        killed = time.monotonic()
        statuses: Counter[int] = Counter()
        tries_at_down = -1
        while time.monotonic() - killed < bound + 1:
            statuses += await load(client, 4, concurrency=2)
            if tries_at_down < 0 and cluster.stats()[1].state == "unhealthy":
                down_after = time.monotonic() - killed
                tries_at_down = cluster.stats()[1].requests
        assert tries_at_down >= 0, "never marked down"
        print(f"health: stopped target marked down {down_after:.2f}s after it stopped (bound {bound}s)")
        assert down_after <= bound
        assert cluster.stats()[1].requests == tries_at_down  # no tries at all once it was down
        assert statuses == {200: sum(statuses.values())}  # connect errors were retried on the other target
        count = b.count
        await servers[1].start()
        started = time.monotonic()
        await wait_until(lambda: cluster.stats()[1].state == "healthy", limit=HEALTH["interval"] * 3.5)
        print(f"health: restarted target healthy again after {time.monotonic() - started:.2f}s")
        await load(client, 20)
        assert b.count > count


async def test_all_targets_down_still_get_requests_and_the_log_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    a, b = TargetApp("a"), TargetApp("b")
    health = HEALTH | {"interval": 0.2, "unhealthy_threshold": 1}
    async with targets(a, b) as servers, gateway(servers, health_check=health) as client:
        cluster = cluster_of(client)
        for server in servers:
            await server.stop()
        await wait_until(lambda: {t.state for t in cluster.stats()} == {"unhealthy"}, limit=3)
        with caplog.at_level(logging.INFO, logger="fastgate.error"):
            before = [t.requests for t in cluster.stats()]
            statuses = await load(client, 6, concurrency=1)
            after = [t.requests for t in cluster.stats()]
    assert statuses == {502: 6}
    assert sum(after) - sum(before) >= 6  # they were tried (fail open), not refused by the gateway
    assert [r.message for r in caplog.records].count(
        "upstream api: all 2 targets are down; sending to them anyway (fail open)"
    ) == 1


async def test_outlier_detection_ejects_a_target_answering_503_until_the_ejection_expires(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad, good = TargetApp("bad", status=503), TargetApp("good")
    outlier = {"consecutive_failures": 3, "base_ejection_time": 1}
    with caplog.at_level(logging.INFO, logger="fastgate.error"):
        async with (
            targets(bad, good) as servers,
            gateway(servers, outlier_detection=outlier, retries={"max_retries": 0}) as client,
        ):
            cluster = cluster_of(client)
            await load(client, 6, concurrency=1)
            assert cluster.stats()[0].state == "ejected"
            ejected_at = time.monotonic()
            count = bad.count
            assert await load(client, 20) == {200: 20}
            assert bad.count == count
            await wait_until(lambda: cluster.health.eligible(time.monotonic()) is None, limit=3)
            assert 0.9 <= time.monotonic() - ejected_at <= 2.5
            await load(client, 4, concurrency=1)
            assert bad.count > count
    lines = [r.message for r in caplog.records if "target 127.0.0.1" in r.message]
    assert any("healthy -> ejected (consecutive_failures" in line for line in lines)
    assert any("ejected -> healthy (ejection_expired" in line for line in lines)


# -- retries ---------------------------------------------------------------------------------------------------

RETRY_503 = {"max_retries": 1, "retry_on": [503], "backoff": {"base": 0.001, "max": 0.002}}


async def test_a_503_is_retried_on_the_other_target() -> None:
    bad, good = TargetApp("bad", status=503), TargetApp("good")
    async with targets(bad, good) as servers, gateway(servers, retries=RETRY_503) as client:
        # at most 3 retries in flight (min_retry_concurrency; more concurrency would meet the budget)
        assert await load(client, 20, concurrency=3) == {200: 20}
    assert bad.count > 0 and good.count == 20


async def test_a_refused_connection_is_retried_on_the_other_target_by_default() -> None:
    a, b = TargetApp("a"), TargetApp("b")
    async with targets(a, b) as servers, gateway(servers) as client:
        await servers[0].stop()
        assert await load(client, 10, concurrency=3) == {200: 10}
        assert await client.post("/p", content=b"x" * 100) is not None  # POST too: nothing was sent
    assert b.count == 11


async def test_post_is_not_retried_after_it_was_sent_unless_non_idempotent() -> None:
    bad, good = TargetApp("bad", status=503), TargetApp("good")
    async with targets(bad, good) as servers:
        async with gateway(servers, retries=RETRY_503) as client:
            answers = Counter([(await client.post("/p", content=b"x" * 100)).status_code for _ in range(10)])
        assert answers == {503: 5, 200: 5}
        async with gateway(servers, retries=RETRY_503 | {"non_idempotent": True}) as client:
            answers = Counter([(await client.post("/p", content=b"x" * 100)).status_code for _ in range(10)])
        assert answers == {200: 10}
    assert set(good.bodies) == {100}  # the replayed body arrived whole


async def test_a_body_larger_than_the_replay_buffer_is_not_retried() -> None:
    bad, good = TargetApp("bad", status=503), TargetApp("good")
    policy = RETRY_503 | {"non_idempotent": True}
    async with targets(bad, good) as servers, gateway(servers, retries=policy) as client:
        big = [(await client.put("/big", content=b"x" * (1 << 20))).status_code for _ in range(4)]
        small = [(await client.put("/small", content=b"x" * 1000)).status_code for _ in range(4)]
    assert Counter(big) == {503: 2, 200: 2}  # the 1 MiB bodies sent to `bad` are not sent again
    assert small == [200] * 4
    assert good.bodies.count(1 << 20) == 2 and good.bodies.count(1000) == 4


async def test_per_try_timeout_moves_a_slow_try_to_the_other_target() -> None:
    slow, fast = TargetApp("slow", delay=3), TargetApp("fast")
    policy = {"max_retries": 1, "retry_on": ["timeout"], "per_try_timeout": 0.3}
    async with targets(slow, fast) as servers, gateway(servers, retries=policy) as client:
        started = time.monotonic()
        assert await load(client, 4, concurrency=4) == {200: 4}
        took = time.monotonic() - started
    assert slow.count == 2 and fast.count == 4
    assert took < 2


async def test_nothing_is_retried_once_the_response_started() -> None:
    broken, good = TargetApp("broken", break_mid_body=True), TargetApp("good")
    policy = {"max_retries": 2, "retry_on": ["reset", "connect_error", 502]}
    async with targets(broken, good) as servers, gateway(servers, retries=policy) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get("/first")  # round robin's first pick is the first target
    assert broken.paths == ["/first"] and good.paths == []


async def test_retry_budget_without_room_relays_the_503() -> None:
    bad, good = TargetApp("bad", status=503), TargetApp("good")
    policy = RETRY_503 | {"budget_percent": 0, "min_retry_concurrency": 0}
    async with targets(bad, good) as servers, gateway(servers, retries=policy) as client:
        assert await load(client, 10, concurrency=1) == {503: 5, 200: 5}


# -- WebSocket -------------------------------------------------------------------------------------------------


async def test_websocket_sessions_are_spread_over_two_targets_and_skip_a_stopped_one() -> None:
    recorders = [WebSocketRecorder(), WebSocketRecorder()]
    apps = [WebSocketUpstreamApp(r) for r in recorders]
    async with targets(*apps, ws="websockets-sansio") as servers, gateway(servers) as client:
        gw: RunningServer = client.gateway  # type: ignore[attr-defined]
        for _ in range(4):
            async with connect(f"ws://127.0.0.1:{gw.port}/ws/echo") as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
        assert [len(r.handshakes) for r in recorders] == [2, 2]
        await servers[0].stop()
        for _ in range(2):
            async with connect(f"ws://127.0.0.1:{gw.port}/ws/echo") as ws:
                await ws.send("again")
                assert await ws.recv() == "again"
        assert len(recorders[1].handshakes) == 4
