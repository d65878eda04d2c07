"""The example plugins (examples/plugin_*.py), in-process with fastgate.testing and through a real gateway."""

from __future__ import annotations

import logging

import httpx
import pytest

from fastgate import Gateway, Plugin
from fastgate.config import build_config
from fastgate.testing import PluginError, PluginRunner
from tests.integrations.conftest import EXAMPLES, load_example
from tests.servers import RunningServer, run_gateway
from tests.upstream_app import Recorder

pytestmark = pytest.mark.anyio


async def test_token_check_in_process() -> None:
    token_check = load_example("plugin_token_check")
    runner = PluginRunner(token_check.TokenCheck(tokens={"s3cret": "alice"}, realm="billing"))
    refused = await runner.request("GET", "/api/x", headers={"authorization": "Bearer nope"})
    assert refused.answer is not None and refused.answer.status == 401
    assert dict(refused.answer.raw_headers(b"id"))[b"www-authenticate"] == b'Bearer realm="billing"'
    allowed = await runner.request("GET", "/api/x", headers={"Authorization": "Bearer s3cret"})
    assert allowed.answer is None and allowed.request.identity == "alice"
    assert allowed.request.headers.get("x-user") == "alice" and "authorization" not in allowed.request.headers


async def test_timing_in_process() -> None:
    timing = load_example("plugin_timing")
    plugin = timing.Timing()
    runner = PluginRunner(plugin)
    result = await runner.request("GET", "/x")
    response = await runner.response(result.request, 200, {"server": "upstream/1.0", "content-type": "text/plain"})
    assert (response.headers.get("server-timing") or "").startswith("gateway;dur=")
    assert "server" not in response.headers
    await runner.finish(result.request, status=503, bytes_sent=10)
    assert plugin.counts == {"5xx": 1} and plugin.bytes_sent == 10


async def test_the_runner_reports_hook_failures_and_runs_the_lifespan(caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []

    class Faulty(Plugin):
        async def startup(self) -> None:
            events.append("up")

        async def shutdown(self) -> None:
            events.append("down")

        async def on_request(self, request: object) -> None:
            raise ValueError("bad")

        async def on_finish(self, request: object, exchange: object) -> None:
            raise ValueError("finish failed")

    runner = PluginRunner(Faulty())
    async with runner.lifespan():
        assert events == ["up"]
        with pytest.raises(PluginError) as info:
            await runner.request()
        assert (info.value.plugin, info.value.phase, str(info.value.error)) == ("Faulty", "on_request", "bad")
        caplog.set_level(logging.ERROR, logger="fastgate.error")
        await runner.finish(runner.make_request())  # logged, not raised
        assert "finish failed" in caplog.records[-1].getMessage()
    assert events == ["up", "down"]


async def test_token_check_through_a_gateway(
    upstream: RunningServer, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    config = build_config(
        {
            "upstreams": {"api": {"url": upstream.url}},
            "routes": [
                {
                    "upstream": "api",
                    "plugins": [
                        {"use": "plugin_token_check:TokenCheck", "options": {"tokens": {"s3cret": "alice"}}},
                        {"use": "plugin_timing:Timing"},
                    ],
                }
            ],
        }
    )
    async with run_gateway(Gateway(config)) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
        refused = await client.get("/echo")
        assert refused.status_code == 401 and refused.json() == {"error": "unauthorized"}
        assert not recorder.requests
        allowed = await client.get("/echo", headers={"authorization": "Bearer s3cret"})
        assert allowed.status_code == 200 and "server-timing" in allowed.headers
        assert recorder.header("x-user") == ["alice"] and recorder.header("authorization") == []
