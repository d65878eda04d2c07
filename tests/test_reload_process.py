"""Hot reload of ``fastgate run FILE`` as a real process (issue 11): SIGHUP, --watch, --workers 2, draining."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect

from tests.reload_support import NamedUpstream, fastgate_run, gateway_config, ports, write_config
from tests.servers import GatewayProcess, RunningServer, run_server
from tests.ws_upstream import WebSocketRecorder, WebSocketUpstreamApp

pytestmark = pytest.mark.anyio

RELOADS = 10


@pytest.fixture
async def api() -> AsyncIterator[RunningServer]:
    async with run_server(NamedUpstream("api")) as server:
        yield server


@pytest.fixture
async def ws_upstream() -> AsyncIterator[RunningServer]:
    async with run_server(WebSocketUpstreamApp(WebSocketRecorder()), ws="websockets-sansio") as server:
        yield server


def config(api: RunningServer, port: int, *extra_prefixes: str, **sections: Any) -> dict[str, Any]:
    routes = [{"prefix": prefix, "upstream": "api"} for prefix in extra_prefixes]
    upstreams = {"api": api.url}
    if "ws" in sections:
        upstreams["ws"] = sections.pop("ws")
        routes.append({"prefix": "/ws", "upstream": "ws"})
    return gateway_config(upstreams, [*routes, {"prefix": "/", "upstream": "api"}], port=port, **sections)


async def status_of(client: httpx.AsyncClient, path: str) -> int:
    try:
        return (await client.get(path)).status_code
    except httpx.TransportError:
        return 0


async def wait_for_status(client: httpx.AsyncClient, path: str, status: int, limit: float = 20) -> None:
    with anyio.fail_after(limit):
        while await status_of(client, path) != status:  # noqa: ASYNC110 - another process: polling
            await anyio.sleep(0.05)


async def wait_for_log(gateway: GatewayProcess, pattern: str, count: int = 1, limit: float = 20) -> list[str]:
    with anyio.fail_after(limit):
        while len(found := re.findall(pattern, gateway.log())) < count:  # noqa: ASYNC110 - a log file
            await anyio.sleep(0.05)
    return found


async def test_sighup_reload_swaps_routes(api: RunningServer, tmp_path: Path) -> None:
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    write_config(path, config(api, port, server={"log_level": "info"}))
    with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            assert (await client.get("/x")).status_code == 200
            write_config(path, {**config(api, port), "routes": [{"prefix": "/only", "upstream": "api"}]})
            gateway.process.send_signal(signal.SIGHUP)
            await wait_for_status(client, "/x", 404)
            assert (await client.get("/only/x")).json()["upstream"] == "api"
            # An invalid file: refused in one line naming the key; the running config stays.
            write_config(path, {**config(api, port), "routes": [{"prefix": "/", "upstream": "nowhere"}]})
            gateway.process.send_signal(signal.SIGHUP)
            [line] = await wait_for_log(gateway, r".*config reload refused.*")
            assert "routes[0].upstream: unknown upstream 'nowhere'" in line
            assert (await client.get("/only/x")).status_code == 200
        assert gateway.process.poll() is None


async def test_reloads_under_load_fail_no_request_and_a_websocket_survives_ten_reloads(
    api: RunningServer, ws_upstream: RunningServer, tmp_path: Path
) -> None:
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    write_config(path, config(api, port, ws=ws_upstream.url))
    results = {"ok": 0, "failed": 0}
    failures: list[str] = []
    with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=10, limits=limits) as client,
            # The swap is polled on a client of its own: on the load's pool a poll waited behind the eight load tasks
            # for seconds at a time (httpcore's pool does not queue fairly), while the gateway had reloaded in 50 ms.
            httpx.AsyncClient(base_url=gateway.url, timeout=10) as poller,
            connect(f"ws://127.0.0.1:{port}/ws/echo", open_timeout=10, ping_interval=None) as ws,
        ):
            stop = anyio.Event()

            async def load() -> None:
                for _ in range(5000):  # bounded in count, and by `stop` (set after the reloads, or at 60 s)
                    if stop.is_set():
                        return
                    try:
                        response = await client.get("/load")
                        ok = response.status_code == 200 and response.json()["upstream"] == "api"
                    except (httpx.HTTPError, ValueError) as exc:
                        ok, response = False, exc  # type: ignore[assignment]
                    results["ok" if ok else "failed"] += 1
                    if not ok:
                        failures.append(repr(response))

            started = time.monotonic()
            with anyio.fail_after(90):
                async with anyio.create_task_group() as group:
                    for _ in range(8):
                        group.start_soon(load)
                    for reload in range(RELOADS):
                        write_config(path, config(api, port, f"/r{reload}", ws=ws_upstream.url))
                        gateway.process.send_signal(signal.SIGHUP)
                        await wait_for_status(poller, f"/r{reload}/x", 200)  # swapped in
                        await ws.send(f"after reload {reload}")
                        with anyio.fail_after(5):
                            assert await ws.recv() == f"after reload {reload}"
                        await anyio.sleep(0.2)  # load on the new config before the next reload
                    stop.set()
            elapsed = time.monotonic() - started
    reloaded = re.findall(r"config reloaded", gateway.log())
    print(f"\n{RELOADS} reloads in {elapsed:.1f}s under load: {results['ok']} ok, {results['failed']} failed")
    assert len(reloaded) == RELOADS
    assert results["failed"] == 0, failures[:5]
    assert results["ok"] > 200


async def test_every_worker_reloads_with_workers_2(api: RunningServer, tmp_path: Path) -> None:
    port, admin_port = ports(2)
    path = tmp_path / "gateway.yaml"
    admin = {"listen": f"127.0.0.1:{admin_port}"}
    write_config(path, config(api, port, server={"workers": 2}, admin=admin))
    with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
        await wait_for_log(gateway, r"Application startup complete", count=2)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            write_config(path, config(api, port, "/new", server={"workers": 2}, admin=admin))
            gateway.process.send_signal(signal.SIGHUP)  # to the manager, which passes it on
            pids = await wait_for_log(gateway, r"config reloaded \(worker (\d+)\)", count=2)
            assert len(set(pids)) == 2
            for _ in range(20):  # new connections land on either worker: each has the new route
                async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as fresh:
                    assert (await fresh.get("/new/x")).status_code == 200
            # A file a worker cannot load: each keeps its config and says so.
            write_config(path, {**config(api, port, server={"workers": 2}, admin=admin), "routes": []})
            gateway.process.send_signal(signal.SIGHUP)
            refused = await wait_for_log(gateway, r"config reload refused \(worker (\d+)\).*routes", count=2)
            assert len(set(refused)) == 2
            assert (await client.get("/new/x")).status_code == 200
            # POST /reload on the admin listener: validated by the worker that answers, then every worker reloads.
            write_config(path, config(api, port, "/newer", server={"workers": 2}, admin=admin))
            response = await client.post(f"http://{admin['listen']}/reload")
            assert response.status_code == 200, response.text
            await wait_for_log(gateway, r"config reloaded \(worker \d+\)", count=4)
            await wait_for_status(client, "/newer/x", 200)
        assert gateway.process.poll() is None


async def test_watch_reloads_on_file_change(api: RunningServer, tmp_path: Path) -> None:
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    write_config(path, config(api, port))
    with fastgate_run(path, tmp_path / "gateway.log", port, "--watch") as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            assert (await client.get("/watched/x")).status_code == 200  # the catch-all route
            write_config(path, {**config(api, port), "routes": [{"prefix": "/watched", "upstream": "api"}]})
            await wait_for_status(client, "/x", 404)
            assert (await client.get("/watched/x")).status_code == 200


async def test_readyz_answers_503_while_draining_after_sigterm(api: RunningServer, tmp_path: Path) -> None:
    port, admin_port = ports(2)
    path = tmp_path / "gateway.yaml"
    write_config(path, config(api, port, admin={"listen": f"127.0.0.1:{admin_port}", "token": "t"}))
    headers = {"authorization": "Bearer t"}
    with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=10) as client,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}", timeout=10, headers=headers) as admin,
        ):
            assert (await admin.get("/readyz")).json() == {"status": "ready"}
            async with anyio.create_task_group() as group:
                slow: list[httpx.Response] = []

                async def slow_request() -> None:
                    slow.append(await client.get("/slow?delay=3"))

                group.start_soon(slow_request)
                await anyio.sleep(0.5)  # the request is in flight at the upstream
                gateway.process.send_signal(signal.SIGTERM)
                with anyio.fail_after(5):
                    while (response := await admin.get("/readyz")).status_code != 503:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                assert response.json() == {"status": "draining"}
                assert (await admin.get("/healthz")).status_code == 200  # still serving its requests
            assert slow[0].status_code == 200  # Uvicorn's graceful drain is intact
        # Uvicorn re-raises the signal it drained on: the process ends by SIGTERM, not by a crash.
        assert gateway.process.wait(15) == -signal.SIGTERM
        assert "Application shutdown complete" in gateway.log() and "Traceback" not in gateway.log()
