"""Hot reload inside one gateway (issue 11): the swap, what in-flight requests see, what happens to the pools."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from fastgate import Gateway
from fastgate.config import GatewayConfig, build_config
from fastgate.exceptions import ConfigError
from fastgate.observability.metrics import metrics_mapping
from fastgate.reloading import ConfigSource
from tests.reload_support import NamedUpstream, gateway_config, write_config
from tests.servers import RunningServer, captured_logs, run_gateway, run_server, wait_until

pytestmark = pytest.mark.anyio


@pytest.fixture
async def first() -> AsyncIterator[RunningServer]:
    async with run_server(NamedUpstream("first")) as server:
        yield server


@pytest.fixture
async def second() -> AsyncIterator[RunningServer]:
    async with run_server(NamedUpstream("second")) as server:
        yield server


def config(upstreams: dict[str, str], *routes: tuple[str, str], **sections: object) -> GatewayConfig:
    return build_config(
        gateway_config(upstreams, [{"prefix": prefix, "upstream": name} for prefix, name in routes], **sections)
    )


async def get(client: httpx.AsyncClient, path: str) -> dict[str, object]:
    response = await client.get(path)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def reload_counts(gateway: Gateway) -> dict[str, float]:
    assert gateway.metrics is not None
    values = metrics_mapping(gateway.metrics.render()[0].decode())
    return {
        result: values.get(f'fastgate_config_reload_total{{result="{result}"}}', 0.0) for result in ("success", "error")
    }


async def test_reload_swaps_routes_for_new_requests(first: RunningServer, second: RunningServer) -> None:
    gateway = Gateway(config({"first": first.url}, ("/", "first")))
    async with run_gateway(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        assert (await get(client, "/x"))["upstream"] == "first"
        changes = await gateway.reload(config({"first": first.url, "second": second.url}, ("/", "second")))
        assert changes == "added second"
        assert (await get(client, "/x"))["upstream"] == "second"
        assert reload_counts(gateway) == {"success": 1.0, "error": 0.0}


async def test_invalid_reload_keeps_the_old_config_logs_one_line_and_counts_an_error(
    first: RunningServer, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    write_config(path, gateway_config({"first": first.url}, [{"prefix": "/", "upstream": "first"}]))
    source = ConfigSource(path, {})
    gateway = Gateway(source.load(), source=source)
    async with run_gateway(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        write_config(path, gateway_config({"first": first.url}, [{"prefix": "/", "upstream": "nowhere"}]))
        with captured_logs("fastgate.error", logging.WARNING) as logs, pytest.raises(ConfigError):
            await gateway.reload()
        [line] = [record.getMessage() for record in logs.records]
        assert "config reload refused" in line and "routes[0].upstream: unknown upstream 'nowhere'" in line
        assert (await get(client, "/x"))["upstream"] == "first"
        assert reload_counts(gateway) == {"success": 0.0, "error": 1.0}


async def test_a_change_that_needs_a_restart_is_refused_and_the_old_config_keeps_serving(
    first: RunningServer,
) -> None:
    gateway = Gateway(config({"first": first.url}, ("/", "first")))
    async with run_gateway(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        moved = config({"first": first.url}, ("/", "first"), server={"port": 9999})
        with pytest.raises(ConfigError, match=r"server.port: cannot change without a restart \(0 -> 9999\)"):
            await gateway.reload(moved)
        assert gateway.config.server.port == 0
        assert (await get(client, "/x"))["upstream"] == "first"
        assert reload_counts(gateway)["error"] == 1.0


async def test_an_in_flight_request_finishes_on_the_config_it_started_with(
    first: RunningServer, second: RunningServer
) -> None:
    upstream = first.app
    assert isinstance(upstream, NamedUpstream)
    gateway = Gateway(config({"first": first.url}, ("/", "first")))
    async with run_gateway(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        async with anyio.create_task_group() as group:
            held: list[httpx.Response] = []

            async def hold() -> None:
                held.append(await client.get("/hold"))

            group.start_soon(hold)
            with anyio.fail_after(5):
                await upstream.holding.wait()
            await gateway.reload(config({"second": second.url}, ("/", "second")))  # "first" is gone
            assert (await get(client, "/x"))["upstream"] == "second"
            upstream.release.set()
        assert held[0].status_code == 200 and held[0].json()["upstream"] == "first"


async def test_pools_of_unchanged_upstreams_are_kept_the_upstream_sees_no_new_connection(
    first: RunningServer, second: RunningServer
) -> None:
    upstream = first.app
    assert isinstance(upstream, NamedUpstream)
    gateway = Gateway(config({"first": first.url}, ("/", "first")))
    async with run_gateway(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        before = (await get(client, "/x"))["peer"]
        transport = gateway.transports["first"]
        for _ in range(3):  # any number of reloads that leave "first" as it was
            await gateway.reload(
                config({"first": first.url, "second": second.url}, ("/other", "second"), ("/", "first"))
            )
            await gateway.reload(config({"first": first.url}, ("/", "first")))
        assert gateway.transports["first"] is transport
        assert (await get(client, "/x"))["peer"] == before
        assert set(upstream.peers) == {before}  # one connection from the gateway, all along


async def test_a_removed_upstreams_pool_closes_once_its_last_request_ends(
    first: RunningServer, second: RunningServer
) -> None:
    upstream = first.app
    assert isinstance(upstream, NamedUpstream)
    gateway = Gateway(config({"first": first.url}, ("/", "first")))
    async with run_gateway(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        held_transport = gateway.snapshot.held["first"]
        pool = held_transport.transport.pool  # type: ignore[attr-defined]
        async with anyio.create_task_group() as group:
            group.start_soon(client.get, "/hold")
            with anyio.fail_after(5):
                await upstream.holding.wait()
            await gateway.reload(config({"second": second.url}, ("/", "second")))
            await anyio.sleep(0.2)
            assert not held_transport.closed.is_set()  # its request is still in flight
            assert pool.stats().busy == 1
            upstream.release.set()
        with anyio.fail_after(5):
            await held_transport.closed.wait()
        assert pool.stats().busy == 0 and pool.stats().idle == 0
        assert gateway.snapshot.held.keys() == {"second"}


async def test_a_changed_upstream_gets_a_new_pool_and_the_old_one_closes(
    first: RunningServer, second: RunningServer
) -> None:
    gateway = Gateway(config({"api": first.url}, ("/", "api")))
    async with run_gateway(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        assert (await get(client, "/x"))["upstream"] == "first"
        old = gateway.snapshot.held["api"]
        assert await gateway.reload(config({"api": second.url}, ("/", "api"))) == "changed api"
        assert (await get(client, "/x"))["upstream"] == "second"
        with anyio.fail_after(5):
            await old.closed.wait()


async def test_new_plugin_chains_start_before_the_swap_and_old_ones_shut_down_after_their_requests(
    first: RunningServer,
) -> None:
    from tests import plugin_fixtures

    upstream = first.app
    assert isinstance(upstream, NamedUpstream)

    def with_plugin(label: str) -> GatewayConfig:
        plugin = {"use": "tests.plugin_fixtures:Lifespan", "options": {"label": label}}
        route = {"prefix": "/", "upstream": "first", "plugins": [plugin]}
        return build_config(gateway_config({"first": first.url}, [route]))

    plugin_fixtures.EVENTS.clear()
    gateway = Gateway(with_plugin("old"))
    async with run_gateway(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(client.get, "/hold")
            with anyio.fail_after(5):
                await upstream.holding.wait()
            await gateway.reload(with_plugin("new"))
            assert plugin_fixtures.EVENTS == ["startup old", "startup new"]  # old still serves its request
            upstream.release.set()
        await wait_until(lambda: "shutdown old" in plugin_fixtures.EVENTS)
        assert plugin_fixtures.EVENTS == ["startup old", "startup new", "shutdown old"]
    assert plugin_fixtures.EVENTS[-1] == "shutdown new"


async def test_a_plugin_failing_to_start_refuses_the_reload(first: RunningServer) -> None:
    gateway = Gateway(config({"first": first.url}, ("/", "first")))
    async with run_gateway(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        route = {"prefix": "/", "upstream": "first", "plugins": [{"use": "tests.plugin_fixtures:FailingStartup"}]}
        with pytest.raises(ConfigError, match="failed in startup: OSError: redis is down"):
            await gateway.reload(build_config(gateway_config({"first": first.url}, [route])))
        assert (await get(client, "/x"))["upstream"] == "first"
        assert reload_counts(gateway)["error"] == 1.0
