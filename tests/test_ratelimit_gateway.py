"""Rate limits on routes, through real gateways, real upstreams and a real redis-server (docs/security.md)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastgate import Answer, ConfigError, Gateway, Plugin, RequestContext
from fastgate.config import build_config
from fastgate.exceptions import RateLimited
from fastgate.plugins.ratelimit import REDIS_STORES, RateLimit
from fastgate.policies.ratelimit import rate_limit_headers
from fastgate.policies.stores import MemoryStore
from fastgate.testing import PluginRunner
from tests.redis_server import RedisServer
from tests.reload_support import fastgate_run
from tests.servers import GatewayProcess, RunningServer, free_port, run_gateway
from tests.upstream_app import Recorder
from tests.ws_upstream import WebSocketRecorder

pytestmark = pytest.mark.anyio


class SetIdentity(Plugin):
    """A stand-in for an authentication plugin: ``x-user`` is the identity; without it, 401."""

    async def on_request(self, request: RequestContext) -> Answer | None:
        user = request.headers.get("x-user")
        if not user:
            return Answer(401, {"www-authenticate": "Basic"}, b"who are you")
        request.identity = user
        return None


IDENTITY = {"use": "tests.test_ratelimit_gateway:SetIdentity"}


def _config(upstream_url: str, *routes: dict[str, Any], **top: Any) -> Any:
    return build_config({"upstreams": {"main": {"url": upstream_url}}, "routes": list(routes), **top})


def _client(gw: RunningServer, local_address: str | None = None) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=local_address) if local_address else None
    return httpx.AsyncClient(base_url=gw.url, timeout=10, transport=transport)


def _limit(**options: Any) -> dict[str, Any]:
    return {"prefix": "/", "upstream": "main", "rate_limit": options}


async def test_memory_limit_lets_the_burst_through_then_answers_429_with_the_draft_headers(
    upstream: RunningServer, recorder: Recorder
) -> None:
    gateway = Gateway(_config(upstream.url, _limit(rate=10, per="1m", burst=3)))  # T = 6 s, tau = 18 s
    async with run_gateway(gateway) as gw, _client(gw) as client:
        allowed = [await client.get("/echo") for _ in range(3)]
        assert [r.status_code for r in allowed] == [200, 200, 200]
        for response in allowed:
            assert response.headers["ratelimit-policy"] == '"default";q=10;w=60'
        # r: what may go now; t: seconds until the bucket is full again (one more interval per request)
        assert [r.headers["ratelimit"] for r in allowed] == [
            '"default";r=2;t=6',
            '"default";r=1;t=12',
            '"default";r=0;t=18',
        ]

        refused = await client.post("/echo", content=b"never read")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "6"  # one interval, rounded up to whole seconds
        assert refused.headers["ratelimit-policy"] == '"default";q=10;w=60'
        assert refused.headers["ratelimit"] == '"default";r=0;t=18'
        assert refused.headers["content-type"] == "application/json"
        body = refused.json()
        assert body["error"] == "rate_limited" and body["request_id"] == refused.headers["x-request-id"]
        assert len(recorder.requests) == 3  # the refused request never reached the upstream


async def test_refused_response_matches_the_issue_example(upstream: RunningServer) -> None:
    gateway = Gateway(_config(upstream.url, _limit(rate=100, per="1s", burst=50, key="client_ip", store="memory")))
    async with run_gateway(gateway) as gw, _client(gw) as client:
        statuses: list[int] = []
        with anyio.fail_after(30):
            for _ in range(500):  # 50 at once, then 100 a second: one is refused long before 500
                response = await client.get("/echo")
                statuses.append(response.status_code)
                if response.status_code == 429:
                    break
        assert statuses[-1] == 429 and statuses.count(200) >= 50
        assert response.headers["ratelimit-policy"] == '"default";q=100;w=1'
        assert response.headers["ratelimit"] == '"default";r=0;t=1'
        assert response.headers["retry-after"] == "1"


async def test_refused_client_goes_again_after_retry_after(upstream: RunningServer) -> None:
    gateway = Gateway(_config(upstream.url, _limit(rate=20, per="1s", burst=1)))  # one every 50 ms
    async with run_gateway(gateway) as gw, _client(gw) as client:
        assert (await client.get("/echo")).status_code == 200
        assert (await client.get("/echo")).status_code == 429
        started = time.monotonic()
        with anyio.fail_after(5):
            while (response := await client.get("/echo")).status_code == 429:  # noqa: ASYNC110 - polling the gateway
                await anyio.sleep(0.01)
        assert time.monotonic() - started < 2
        assert response.headers["ratelimit"] == '"default";r=0;t=1'


async def test_header_key_shares_a_bucket_across_addresses(upstream: RunningServer) -> None:
    gateway = Gateway(_config(upstream.url, _limit(rate=1, per="1m", burst=1, key="header:x-api-key")))
    async with run_gateway(gateway) as gw, _client(gw) as first, _client(gw, "127.0.0.2") as second:
        assert (await first.get("/echo", headers={"x-api-key": "a"})).status_code == 200
        assert (await second.get("/echo", headers={"x-api-key": "a"})).status_code == 429  # same key, other address
        assert (await second.get("/echo", headers={"x-api-key": "b"})).status_code == 200
        # no header: counted under the address, so leaving it out is no way around the limit
        assert (await first.get("/echo")).status_code == 200
        assert (await first.get("/echo")).status_code == 429
        assert (await first.get("/echo", headers={"x-api-key": ""})).status_code == 429


async def test_composite_key_counts_each_header_value_and_address_pair_apart(upstream: RunningServer) -> None:
    route = _limit(rate=1, per="1m", burst=1, key="header:x-api-key,client_ip")
    gateway = Gateway(_config(upstream.url, route))
    async with run_gateway(gateway) as gw, _client(gw) as first, _client(gw, "127.0.0.2") as second:
        assert (await first.get("/echo", headers={"x-api-key": "a"})).status_code == 200
        assert (await first.get("/echo", headers={"x-api-key": "a"})).status_code == 429
        assert (await second.get("/echo", headers={"x-api-key": "a"})).status_code == 200  # other address
        assert (await first.get("/echo", headers={"x-api-key": "b"})).status_code == 200  # other key
        assert (await first.get("/echo")).status_code == 200  # the address alone
        assert (await first.get("/echo")).status_code == 429


async def test_identity_key_counts_per_identity_after_the_auth_plugin(
    upstream: RunningServer, recorder: Recorder
) -> None:
    route = {**_limit(rate=1, per="1m", burst=2, key="identity"), "plugins": [IDENTITY]}
    gateway = Gateway(_config(upstream.url, route))
    assert [name for name, _ in gateway.plugin_chains[0].plugins] == [IDENTITY["use"], "rate_limit"]
    async with run_gateway(gateway) as gw, _client(gw) as client:
        # refused by authentication first: those requests are not charged to anyone
        for _ in range(3):
            assert (await client.get("/echo")).status_code == 401
        alice = [(await client.get("/echo", headers={"x-user": "alice"})).status_code for _ in range(3)]
        assert alice == [200, 200, 429]
        assert (await client.get("/echo", headers={"x-user": "bob"})).status_code == 200  # same address, own bucket
        assert len(recorder.requests) == 3


async def test_rate_limit_in_plugins_runs_where_it_is_listed_and_names_its_fields(upstream: RunningServer) -> None:
    # Before authentication, per address (against guessing), then per identity after it.
    guard = {"use": "rate_limit", "options": {"rate": 3, "per": "1m", "key": "client_ip", "name": "guard"}}
    route = {**_limit(rate=1, per="1m", burst=1, key="identity"), "plugins": [guard, IDENTITY]}
    gateway = Gateway(_config(upstream.url, route))
    async with run_gateway(gateway) as gw, _client(gw) as client:
        assert (await client.get("/echo")).status_code == 401  # charged to the guard
        ok = await client.get("/echo", headers={"x-user": "alice"})
        assert ok.status_code == 200
        assert ok.headers.get_list("ratelimit-policy") == ['"default";q=1;w=60', '"guard";q=3;w=60']
        assert ok.headers.get_list("ratelimit") == ['"default";r=0;t=60', '"guard";r=1;t=40']
        refused = await client.get("/echo", headers={"x-user": "alice"})
        assert refused.status_code == 429 and refused.headers["ratelimit-policy"] == '"default";q=1;w=60'
        guarded = await client.get("/echo", headers={"x-user": "bob"})
        assert guarded.status_code == 429 and guarded.headers["ratelimit-policy"] == '"guard";q=3;w=60'


async def test_routes_never_share_a_bucket(upstream: RunningServer) -> None:
    routes = [
        {"prefix": "/a", "upstream": "main", "rate_limit": {"rate": 1, "per": "1m", "key": "route"}},
        {"prefix": "/b", "upstream": "main", "rate_limit": {"rate": 1, "per": "1m", "key": "route"}},
    ]
    async with run_gateway(Gateway(_config(upstream.url, *routes))) as gw, _client(gw) as client:
        assert [(await client.get(path)).status_code for path in ("/a", "/a", "/b", "/b")] == [200, 429, 200, 429]


async def test_route_without_rate_limit_has_no_plugin_step(upstream: RunningServer) -> None:
    gateway = Gateway(_config(upstream.url, {"prefix": "/", "upstream": "main"}))
    assert gateway.plugin_chains == []
    async with run_gateway(gateway) as gw, _client(gw) as client:
        response = await client.get("/echo")
        assert response.status_code == 200 and "ratelimit" not in response.headers


async def test_websocket_handshakes_are_limited_too(ws_upstream: RunningServer, ws_recorder: WebSocketRecorder) -> None:
    gateway = Gateway(_config(ws_upstream.url, _limit(rate=1, per="1m", burst=1)))
    async with run_gateway(gateway) as gw:
        url = f"ws://127.0.0.1:{gw.port}/ws/echo"
        async with connect(url, open_timeout=5) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, open_timeout=5):
                pass
        refused = info.value.response
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "60"
        assert refused.headers["RateLimit"] == '"default";r=0;t=60'
        assert len(ws_recorder.handshakes) == 1


async def test_plugin_headers_equal_the_pure_header_function() -> None:
    """The plugin's precomputed bytes say what ``rate_limit_headers`` says, decision by decision (a fake clock)."""
    plugin = RateLimit(rate=3, per="700ms", burst=4, name='we "quote"', key="route")
    now = [0]
    plugin.memory = MemoryStore(clock=lambda: now[0])
    runner = PluginRunner(plugin)
    tat: int | None = None
    outcomes = []
    for step in range(12):
        now[0] = step * 50_000  # 50 ms apart: faster than the rate, so refusals come after the burst
        new_tat, decision = plugin.policy.decide(tat, now[0])
        expected = rate_limit_headers(plugin.policy, decision)
        outcomes.append(decision.allowed)
        if decision.allowed:
            tat = new_tat
            result = await runner.request("GET", "/x")
            assert result.answer is None
            response = await runner.response(result.request, 200, {"server": "up"})
            assert response.headers.raw == [(b"server", b"up"), *expected]
        else:
            with pytest.raises(RateLimited) as info:
                await runner.request("GET", "/x")
            assert list(info.value.headers) == expected
    assert True in outcomes and False in outcomes
    assert expected[0] == (b"ratelimit-policy", b'"we \\"quote\\"";q=30;w=7')


def test_redis_store_in_plugins_needs_the_top_level_redis() -> None:
    route = {
        "prefix": "/",
        "upstream": "main",
        "plugins": [{"use": "rate_limit", "options": {"rate": 1, "store": "redis"}}],
    }
    with pytest.raises(
        ConfigError, match=r"routes\[0\]\.plugins\[0\]\.options\.store: 'redis' needs a top-level redis"
    ):
        _config("http://127.0.0.1:1", route)


def test_bad_rate_limit_options_in_plugins_name_the_plugin() -> None:
    route = {"prefix": "/", "upstream": "main", "plugins": [{"use": "rate_limit", "options": {"rate": 0}}]}
    with pytest.raises(ConfigError, match=r"routes\[0\]\.plugins\[0\]\.options: rate_limit did not accept them"):
        Gateway(_config("http://127.0.0.1:1", route))


# --- Redis --------------------------------------------------------------------------------------------------------


def _redis_route(key_value: str, **options: Any) -> dict[str, Any]:
    limit = {"rate": 1, "per": "1m", "burst": 2, "key": "header:x-test", "store": "redis", **options}
    return {"prefix": "/", "upstream": "main", "rate_limit": limit, "request_headers": {"set": {"x-test": key_value}}}


async def test_redis_store_is_shared_by_two_gateways_through_one_pool(
    upstream: RunningServer, redis_server: RedisServer
) -> None:
    redis = {"url": redis_server.url, "timeout": 0.5}
    key = uuid.uuid4().hex  # the session's Redis is shared with other tests
    config = _config(upstream.url, _redis_route(key), {**_redis_route(key), "prefix": "/other"}, redis=redis)
    first, second = Gateway(config), Gateway(config)
    async with run_gateway(first) as gw1, run_gateway(second) as gw2, _client(gw1) as one, _client(gw2) as two:
        assert len(REDIS_STORES) == 1  # one store (one pool) for both gateways and both routes
        assert (await one.get("/echo")).status_code == 200
        second_answer = await two.get("/echo")
        assert second_answer.status_code == 200
        assert second_answer.headers["ratelimit"] == '"default";r=0;t=120'
        refused = await one.get("/echo")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
        assert (await two.get("/other")).status_code == 200  # the other route: its own bucket
    assert len(REDIS_STORES) == 0  # closed with the last lifespan


@pytest.mark.parametrize("on_error", ["allow", "deny"])
async def test_redis_outage_follows_on_error_logs_once_and_limits_return_with_redis(
    upstream: RunningServer, private_redis_server: RedisServer, on_error: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = private_redis_server
    redis = {"url": server.url, "on_error": on_error, "timeout": 0.5, "retry_interval": 0.05}
    gateway = Gateway(_config(upstream.url, _redis_route("k", burst=1), redis=redis))
    async with run_gateway(gateway) as gw, _client(gw) as client:
        caplog.set_level(logging.INFO, logger="fastgate.error")
        assert (await client.get("/echo")).status_code == 200
        assert (await client.get("/echo")).status_code == 429

        await anyio.to_thread.run_sync(server.stop)
        statuses: list[int] = []
        with anyio.fail_after(20):
            started = time.monotonic()
            while time.monotonic() - started < 0.5 and len(statuses) < 200:  # several retry_intervals
                response = await client.get("/echo")
                statuses.append(response.status_code)
                assert response.headers["ratelimit-policy"] == '"default";q=1;w=60'
                assert "ratelimit" not in response.headers  # nothing was counted
                if on_error == "deny":
                    assert response.headers["retry-after"] == "1"
                await anyio.sleep(0.01)
        assert set(statuses) == {200 if on_error == "allow" else 429} and len(statuses) >= 5
        lines = [r.getMessage() for r in caplog.records if "rate limit: Redis" in r.getMessage()]
        assert len(lines) == 1, lines  # one line per outage, not one per request
        assert f"on_error={on_error}" in lines[0]

        await anyio.to_thread.run_sync(server.start)  # the same address (its Unix socket path)
        with anyio.fail_after(20):
            while "ratelimit" not in (response := await client.get("/echo")).headers:  # noqa: ASYNC110 - polling
                await anyio.sleep(0.02)
        # a fresh Redis: the key starts over, and the limit applies again, without a restart
        assert response.status_code == 200 and response.headers["ratelimit"] == '"default";r=0;t=60'
        assert (await client.get("/echo")).status_code == 429
        lines = [r.getMessage() for r in caplog.records if "rate limit: Redis" in r.getMessage()]
        assert len(lines) == 2 and "answers again" in lines[1]


# --- three gateway processes on one Redis -------------------------------------------------------------------------

RATE, BURST, DURATION, SENDERS = 30, 15, 10.0, 6


@contextlib.contextmanager
def _gateway_process(config_path: Path, log_path: Path) -> Iterator[GatewayProcess]:
    port = free_port()
    with fastgate_run(config_path, log_path, port, "--host", "127.0.0.1", "--port", str(port)) as running:
        yield running


async def _drive(url: str, rate: float, until: float, counts: dict[str, int]) -> None:
    """Requests to ``url`` on a schedule of ``rate`` a second until ``until``; ``SENDERS`` in flight at most (so a
    slow request on a busy machine holds the schedule back only when several are slow at once)."""

    async def sender(client: httpx.AsyncClient, offset: int) -> None:
        sent = 0
        start = time.monotonic()
        while True:
            due = start + (offset + SENDERS * sent) / rate
            if due >= until:
                return
            await anyio.sleep(max(0.0, due - time.monotonic()))
            response = await client.get("/limited/echo")
            sent += 1
            if response.status_code == 200:
                counts["allowed"] += 1
                counts["degraded"] += "ratelimit" not in response.headers
            elif response.status_code == 429:
                counts["refused"] += 1
            else:
                counts["other"] += 1

    async with httpx.AsyncClient(base_url=url, timeout=10) as client, anyio.create_task_group() as tg:
        for offset in range(SENDERS):
            tg.start_soon(sender, client, offset)


async def test_three_gateway_processes_on_one_redis_let_the_configured_rate_through(
    upstream: RunningServer, private_redis_server: RedisServer, tmp_path: Path
) -> None:
    config = {
        "redis": {"url": private_redis_server.url, "timeout": 0.5},  # generous: two busy cores
        "upstreams": {"main": {"url": upstream.url}},
        "routes": [
            {
                "prefix": "/limited",
                "upstream": "main",
                "strip_prefix": True,
                "rate_limit": {"rate": RATE, "per": "1s", "burst": BURST, "key": "route", "store": "redis"},
            },
            {"prefix": "/", "upstream": "main"},
        ],
        "server": {"access_log": False},
    }
    config_path = tmp_path / "gateway.json"
    config_path.write_text(json.dumps(config))
    with contextlib.ExitStack() as stack:
        gateways = [stack.enter_context(_gateway_process(config_path, tmp_path / f"gw{n}.log")) for n in range(3)]
        async with httpx.AsyncClient(timeout=10) as client:
            for gw in gateways:  # warm: each gateway answers on the route without a limit
                assert (await client.get(f"{gw.url}/echo")).status_code == 200
        counts = {"allowed": 0, "refused": 0, "degraded": 0, "other": 0}
        with anyio.fail_after(DURATION + 30):
            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                for gw in gateways:  # 3 × RATE offered in all: each gateway gets RATE a second
                    tg.start_soon(_drive, gw.url, float(RATE), started + DURATION, counts)
            elapsed = time.monotonic() - started
        logs = "".join(gw.log() for gw in gateways)
    expected = RATE * DURATION + BURST
    print(f"three gateways, {elapsed:.1f}s: {counts}, expected {expected:g} allowed")
    assert counts["other"] == 0 and counts["degraded"] == 0, (counts, logs[-3000:])
    assert counts["allowed"] + counts["refused"] >= 2.5 * RATE * DURATION  # it was driven at about 3x
    assert abs(counts["allowed"] - expected) <= 0.05 * expected, counts


async def test_fastgate_run_redis_default_timeout_survives_a_loop_held_by_other_requests(
    upstream: RunningServer, private_redis_server: RedisServer, tmp_path: Path
) -> None:
    """Issue 17 item 7 through ``fastgate run``: ``redis:`` without ``timeout`` (20 ms, judged against our loop's lag)
    while other requests hold the gateway's loop 30 ms each. Before, a 5 ms wall-clock timeout counted our busy loop
    as a Redis failure, and on_error: allow turned the limit off for retry_interval, under exactly this load."""
    config = {
        "redis": {"url": private_redis_server.url},  # the default timeout and on_error: allow
        "upstreams": {"main": {"url": upstream.url}},
        "routes": [
            {
                "prefix": "/limited",
                "upstream": "main",
                "strip_prefix": True,
                "rate_limit": {"rate": 100_000, "per": "1s", "burst": 100_000, "key": "route", "store": "redis"},
            },
            {"prefix": "/busy", "upstream": "main", "strip_prefix": True, "plugins": ["tests.loop_hold:HoldLoop"]},
        ],
        "server": {"access_log": False},
    }
    config_path = tmp_path / "gateway.json"
    config_path.write_text(json.dumps(config))
    counts = {"limited": 0, "degraded": 0, "busy": 0}
    with _gateway_process(config_path, tmp_path / "gw.log") as gw:

        async def busy(client: httpx.AsyncClient) -> None:
            for _ in range(10):
                assert (await client.get("/busy/echo")).status_code == 200
                counts["busy"] += 1

        async def limited(client: httpx.AsyncClient) -> None:
            for _ in range(40):
                response = await client.get("/limited/echo")
                assert response.status_code == 200
                counts["limited"] += 1
                counts["degraded"] += "ratelimit" not in response.headers  # on_error decided: nothing counted

        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            assert (await client.get("/limited/echo")).headers["ratelimit"]  # warm: Redis answers
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for _ in range(4):
                        tg.start_soon(busy, client)
                    for _ in range(4):
                        tg.start_soon(limited, client)
        log = gw.log()
    outages = [line for line in log.splitlines() if "rate limit: Redis" in line and "failed" in line]
    assert counts["limited"] == 160 and counts["busy"] == 40
    # Before: 107 and 158 of 160 let through unlimited, outage after outage. Now none, 10 runs in a row at load 6; one
    # outage (half a second of on_error) is tolerated: on a shared 2-core machine redis-server itself may wait over
    # 20 ms for a CPU, which is a real Redis delay, and the warning then shows no loop lag.
    assert len(outages) <= 1 and counts["degraded"] < 80, (counts, outages)


async def test_plugin_startup_opens_no_redis_when_no_route_uses_it(upstream: RunningServer, tmp_path: Path) -> None:
    redis = {"url": f"unix://{tmp_path}/nothing.sock"}  # nothing listens there
    gateway = Gateway(_config(upstream.url, _limit(rate=5), redis=redis))
    async with run_gateway(gateway) as gw, _client(gw) as client:
        assert len(REDIS_STORES) == 0
        assert (await client.get("/echo")).status_code == 200
