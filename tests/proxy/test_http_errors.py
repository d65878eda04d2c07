"""What the client sees when the upstream fails, and how failures are logged (issue 2)."""

from __future__ import annotations

import logging
import time

import anyio
import anyio.abc
import httpx
import pytest

from fastgate import PoolLimits
from tests.conftest import GatewayFactory
from tests.misbehaving import raw_upstream, read_head
from tests.servers import REFUSED_PORT, RunningServer, run_server
from tests.upstream_app import Recorder, UpstreamApp

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fastgate.error"]


async def test_upstream_refused_gives_502_with_json_body_and_one_log_line(
    gateway_for: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fastgate")
    async with gateway_for(f"http://127.0.0.1:{REFUSED_PORT}") as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.get("/anything")
    assert response.status_code == 502
    body = response.json()
    assert body["error"] == "upstream_connect_error"
    assert "Connect" in body["detail"] or "refused" in body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    lines = _error_lines(caplog)
    assert len(lines) == 1
    assert "502" in lines[0] and "refused" in lines[0] and body["request_id"] in lines[0]


async def test_no_response_headers_within_read_timeout_gives_504(
    upstream: RunningServer, recorder: Recorder, gateway_for: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fastgate")
    async with gateway_for(upstream.url, timeouts={"read": 0.3}) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        started = time.monotonic()
        response = await client.get("/slow?delay=3")
        elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert response.json()["error"] == "upstream_timeout"
        assert 0.25 < elapsed < 1.0
        # the abandoned upstream request is cancelled too: the upstream sees the connection close
        with anyio.fail_after(1):
            await recorder.disconnect_event.wait()
    assert len(_error_lines(caplog)) == 1


async def test_stream_is_not_cut_by_read_timeout_between_chunks(
    upstream: RunningServer, gateway_for: GatewayFactory
) -> None:
    async with gateway_for(upstream.url, timeouts={"read": 0.2}) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.get("/stream?n=3&delay=0.4")
    assert response.status_code == 200
    assert response.text == "chunk 0\nchunk 1\nchunk 2\n"


async def test_stream_idle_timeout_cuts_a_silent_stream_when_configured(
    upstream: RunningServer, gateway_for: GatewayFactory
) -> None:
    async with gateway_for(upstream.url, timeouts={"stream_idle": 0.2}) as gw, httpx.AsyncClient(base_url=gw.url) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/stream?n=3&delay=0.6")


async def test_pool_exhausted_past_its_wait_gives_503(upstream: RunningServer, gateway_for: GatewayFactory) -> None:
    async with (
        gateway_for(upstream.url, limits=PoolLimits(max_connections=1), timeouts={"pool": 0.2}) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(client.get, "/slow?delay=1")
        await anyio.sleep(0.1)
        started = time.monotonic()
        response = await client.get("/echo")
        assert response.status_code == 503
        assert response.json()["error"] == "upstream_unavailable"
        assert time.monotonic() - started >= 0.2
        assert "pool exhausted" in response.json()["detail"]


async def test_pool_waiter_gets_the_released_connection(upstream: RunningServer, gateway_for: GatewayFactory) -> None:
    async with (
        gateway_for(upstream.url, limits=PoolLimits(max_connections=1), timeouts={"pool": 3}) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
    ):
        responses = []

        async def get(path: str) -> None:
            responses.append((await client.get(path)).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(get, "/slow?delay=0.05")
        assert responses == [200] * 5
        assert gw.app.transports["default"].pool.stats().busy == 0


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_upstream_dying_mid_body_gives_an_incomplete_response(
    gateway_for: GatewayFactory, framing: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fastgate")

    async def handler(stream: anyio.abc.SocketStream, _: int) -> None:
        await read_head(stream)
        if framing == "chunked":
            await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        else:
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nhello")
        await anyio.sleep(0.1)

    async with raw_upstream(handler) as (url, _), gateway_for(url) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")
    assert any("broke off" in line for line in _error_lines(caplog))


async def test_stale_keepalive_connection_is_retried_once_for_idempotent_requests(gateway_for: GatewayFactory) -> None:
    async def handler(stream: anyio.abc.SocketStream, number: int) -> None:
        await read_head(stream)
        await stream.send(OK)
        if number == 1:
            await read_head(stream)  # a second request on a connection we "timed out": close without answering
            return
        while True:
            await read_head(stream)
            await stream.send(OK)

    async with raw_upstream(handler) as (url, connections), gateway_for(url) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            assert (await client.get("/a")).status_code == 200
            assert (await client.get("/b")).status_code == 200
            assert (await client.delete("/c")).status_code == 200
    assert connections == [1, 2]


async def test_stale_keepalive_connection_is_not_replayed_for_post(gateway_for: GatewayFactory) -> None:
    async def handler(stream: anyio.abc.SocketStream, number: int) -> None:
        await read_head(stream)
        await stream.send(OK)
        await read_head(stream)

    async with raw_upstream(handler) as (url, connections), gateway_for(url) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            assert (await client.get("/a")).status_code == 200
            assert (await client.post("/b")).status_code == 502
    assert connections == [1]


async def test_idle_connection_expires_before_the_upstream_closes_it(
    recorder: Recorder, gateway_for: GatewayFactory
) -> None:
    assert PoolLimits().keepalive_expiry < 5  # below uvicorn's default keep-alive timeout
    async with run_server(UpstreamApp(recorder), timeout_keep_alive=1) as upstream:
        async with gateway_for(upstream.url, limits={"keepalive_expiry": 0.8}) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                for _ in range(3):
                    assert (await client.get("/echo")).status_code == 200
                    await anyio.sleep(1.0)
                assert (await client.get("/echo")).status_code == 200


async def test_malformed_upstream_response_gives_502(gateway_for: GatewayFactory) -> None:
    async def handler(stream: anyio.abc.SocketStream, _: int) -> None:
        await read_head(stream)
        await stream.send(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok")

    async with raw_upstream(handler) as (url, _), gateway_for(url) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        response = await client.get("/")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_protocol_error"


@pytest.mark.parametrize("transport", ["fastgate", "httpx"])
async def test_transports_map_errors_to_the_same_statuses(gateway_for: GatewayFactory, transport: str) -> None:
    async with gateway_for(f"http://127.0.0.1:{REFUSED_PORT}", transport=transport) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            response = await client.get("/")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_connect_error"


@pytest.mark.parametrize("transport", ["fastgate", "httpx"])
async def test_upstream_failures_name_their_target_in_the_log(
    gateway_for: GatewayFactory, caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    caplog.set_level(logging.INFO, "fastgate")
    port = REFUSED_PORT
    async with gateway_for(f"http://127.0.0.1:{port}", transport=transport) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            response = await client.get("/")
    assert response.status_code == 502
    assert set(response.json()) == {"error", "detail", "request_id"}  # the body is unchanged
    (line,) = _error_lines(caplog)
    assert f"(upstream default at 127.0.0.1:{port}, request_id " in line


async def test_upstream_breaking_off_mid_body_names_its_target_in_the_log(
    gateway_for: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fastgate")

    async def handler(stream: anyio.abc.SocketStream, _: int) -> None:
        await read_head(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nhello")

    async with raw_upstream(handler) as (url, _), gateway_for(url) as gw, httpx.AsyncClient(base_url=gw.url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")
    port = url.rsplit(":", 1)[1]
    assert any(f"upstream default at 127.0.0.1:{port} broke off" in line for line in _error_lines(caplog))
