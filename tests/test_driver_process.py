"""A real ``fastgate run`` process under each driver of the exchange core.

In-process tests that serve a gateway run once per driver (tests/conftest.py); the tests that start ``fastgate`` as a
child process run the default driver (native: fastgate's server calls ``Gateway.handle`` directly). Here real
processes run under both, ``FASTGATE_DRIVER=asgi`` making the server serve the gateway through its ASGI adapter:
a GET, a streamed POST body, a chunked response, and a refusal answered by fastgate itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fastgate.app import DRIVER_ENV
from tests.reload_support import fastgate_run, gateway_config, write_config
from tests.servers import RunningServer, free_port, run_server
from tests.upstream_app import Recorder, UpstreamApp

pytestmark = pytest.mark.anyio


@pytest.fixture
async def origin(recorder: Recorder) -> AsyncIterator[RunningServer]:
    async with run_server(UpstreamApp(recorder)) as server:
        yield server


@pytest.mark.parametrize("driver", ["native", "asgi"])
async def test_fastgate_run_serves_the_same_exchanges_under_either_driver(
    driver: str, origin: RunningServer, recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if driver == "asgi":
        monkeypatch.setenv(DRIVER_ENV, "asgi")
    else:
        monkeypatch.delenv(DRIVER_ENV, raising=False)
    port = free_port()
    config = tmp_path / "gateway.yaml"
    write_config(
        config,
        gateway_config({"api": origin.url}, [{"prefix": "/api", "upstream": "api", "strip_prefix": True}], port=port),
    )
    with fastgate_run(config, tmp_path / "gateway.log", port) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            echoed = await client.get("/api/echo?x=1")
            assert echoed.status_code == 200
            assert echoed.json()["raw_path"] == "/echo"

            async def pieces() -> AsyncIterator[bytes]:
                for _ in range(4):
                    yield b"p" * 50_000

            uploaded = await client.post("/api/echo", content=pieces())
            assert uploaded.status_code == 200
            assert len(uploaded.json()["body"]) == 200_000  # past the 64 KiB prebuffer: streamed upstream

            streamed = await client.get("/api/stream?n=3&delay=0")
            assert streamed.status_code == 200
            assert streamed.headers.get("transfer-encoding") == "chunked"

            missing = await client.get("/nowhere")
            assert missing.status_code == 404
            assert json.loads(missing.content)["error"] == "route_not_found"
        log = gw.log()
    assert ("served through its ASGI adapter" in log) == (driver == "asgi"), log
    assert "Traceback" not in log
    assert [r["raw_path"] for r in recorder.requests] == ["/echo", "/echo", "/stream"]
