"""A plugin whose startup enters a task group that its shutdown exits (the jwt plugin's JWKS refresher, an outbound
client's transport): the gateway's lifespan and a reload's retired snapshot shut it down cleanly. Before issue 17 the
shutdown ran inside a shielded scope entered later, and anyio refused to exit the task group there."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from fastgate import Gateway, Plugin
from fastgate.config import build_config
from tests.reload_support import gateway_config
from tests.servers import RunningServer, captured_logs, run_gateway, wait_until

pytestmark = pytest.mark.anyio

EVENTS: list[str] = []


class Background(Plugin):
    """Runs a task from startup to shutdown in a task group of its own."""

    def __init__(self, label: str = "a") -> None:
        self.label = label
        self._group: anyio.abc.TaskGroup | None = None

    async def startup(self) -> None:
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        group.start_soon(self._tick)
        EVENTS.append(f"started {self.label}")

    async def _tick(self) -> None:
        await anyio.sleep_forever()

    async def shutdown(self) -> None:
        group, self._group = self._group, None
        assert group is not None
        group.cancel_scope.cancel()
        await group.__aexit__(None, None, None)
        EVENTS.append(f"stopped {self.label}")


def _config(upstream: str, label: str) -> Any:
    route = {
        "prefix": "/",
        "upstream": "main",
        "plugins": [{"use": f"{__name__}:Background", "options": {"label": label}}],
    }
    return build_config(gateway_config({"main": upstream}, [route]))


async def test_a_plugin_task_group_from_startup_exits_at_shutdown_and_on_reload(upstream: RunningServer) -> None:
    EVENTS.clear()
    gateway = Gateway(_config(upstream.url, "first"))
    with captured_logs("fastgate.error", logging.WARNING) as logs:
        async with run_gateway(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            assert (await client.get("/echo")).status_code == 200
            await gateway.reload(_config(upstream.url, "second"))
            await wait_until(lambda: "stopped first" in EVENTS)  # the retired snapshot drained and shut down
            assert (await client.get("/echo")).status_code == 200
    assert EVENTS == ["started first", "started second", "stopped first", "stopped second"]
    assert [record.getMessage() for record in logs.records] == []
