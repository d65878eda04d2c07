"""max_body_bytes: request bodies over the limit get 413 payload_too_large and never reach the upstream whole."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from fastgate import ConfigError, Gateway
from fastgate.config import build_config

from ..rawhttp import parse_response, read_until_closed
from ..servers import RunningServer, run_gateway
from ..upstream_app import Recorder

pytestmark = pytest.mark.anyio

LIMIT = 1000


def limited_config(upstream: str, server: dict[str, Any] | None = None, **route: Any) -> dict[str, Any]:
    return {
        "server": {"max_body_bytes": LIMIT, **(server or {})},
        "upstreams": {"api": {"url": upstream}},
        "routes": [{"prefix": "/", "upstream": "api", **route}],
    }


@contextlib.asynccontextmanager
async def gateway_client(config: dict[str, Any]) -> AsyncIterator[tuple[httpx.AsyncClient, RunningServer]]:
    async with run_gateway(Gateway(build_config(config))) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            yield client, server


async def pieces(*sizes: int) -> AsyncIterator[bytes]:
    for size in sizes:
        yield b"x" * size


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_a_declared_content_length_over_the_limit_gets_413_and_the_upstream_sees_nothing(
    upstream: RunningServer, recorder: Recorder
) -> None:
    async with gateway_client(limited_config(upstream.url)) as (client, _):
        response = await client.post("/upload", content=b"x" * (LIMIT + 1))
    assert_too_large(response)
    assert recorder.requests == []


async def test_a_body_exactly_at_the_limit_passes(upstream: RunningServer, recorder: Recorder) -> None:
    async with gateway_client(limited_config(upstream.url)) as (client, _):
        declared = await client.post("/upload", content=b"x" * LIMIT)
        chunked = await client.post("/upload", content=pieces(400, 400, 200))
    assert declared.status_code == 200
    assert declared.json()["size"] == LIMIT
    assert chunked.status_code == 200
    assert chunked.json()["size"] == LIMIT
    assert [r.get("body_size") for r in recorder.requests] == [LIMIT, LIMIT]


async def test_a_chunked_body_growing_past_the_limit_gets_413_and_the_upstream_request_is_aborted(
    upstream: RunningServer, recorder: Recorder
) -> None:
    # Streaming from the first byte (no prebuffer), so the upstream request is under way when the limit is passed.
    config = limited_config(upstream.url, {"request_prebuffer_bytes": 0})
    async with run_gateway(Gateway(build_config(config))) as gateway:
        with anyio.fail_after(20):
            async with await anyio.connect_tcp("127.0.0.1", gateway.port) as stream:
                head = b"POST /upload HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
                await stream.send(head + b"258\r\n" + b"x" * 600 + b"\r\n")
                await recorder.started.wait()  # the request (head and first piece) is upstream already
                await stream.send(b"258\r\n" + b"x" * 600 + b"\r\n")
                response = parse_response(await read_until_closed(stream))
            await recorder.disconnect_event.wait()
    assert response.status == 413
    assert b'"error":"payload_too_large"' in response.body
    assert "/upload" in recorder.disconnected  # the upstream saw its request cut off
    assert "body_size" not in recorder.last()  # and never a complete body


async def test_a_chunked_body_past_the_limit_within_the_prebuffer_gets_413_and_never_reaches_the_upstream(
    upstream: RunningServer, recorder: Recorder
) -> None:
    async with run_gateway(Gateway(build_config(limited_config(upstream.url)))) as gateway:
        with anyio.fail_after(20):
            async with await anyio.connect_tcp("127.0.0.1", gateway.port) as stream:
                head = b"POST /upload HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n"
                await stream.send(head + b"258\r\n" + b"x" * 600 + b"\r\n")
                await anyio.sleep(0.1)  # a second piece, later: the first alone is within the limit
                await stream.send(b"258\r\n" + b"x" * 600 + b"\r\n")
                response = parse_response(await read_until_closed(stream))
    assert response.status == 413
    assert b'"error":"payload_too_large"' in response.body
    assert recorder.requests == []  # read in the prebuffer: no upstream connection was taken


async def test_the_route_override_wins_over_the_server_default(upstream: RunningServer, recorder: Recorder) -> None:
    config = {
        "server": {"max_body_bytes": 100},
        "upstreams": {"api": {"url": upstream.url}},
        "routes": [
            {"prefix": "/big", "strip_prefix": True, "upstream": "api", "max_body_bytes": LIMIT},
            {"prefix": "/free", "strip_prefix": True, "upstream": "api", "max_body_bytes": None},
            {"prefix": "/", "upstream": "api"},
        ],
    }
    async with gateway_client(config) as (client, _):
        assert_too_large(await client.post("/upload", content=b"x" * 500))
        assert (await client.post("/big/upload", content=b"x" * 500)).status_code == 200
        assert_too_large(await client.post("/big/upload", content=b"x" * (LIMIT + 1)))
        assert (await client.post("/free/upload", content=b"x" * 100_000)).status_code == 200
    assert [r.get("body_size") for r in recorder.requests] == [500, 100_000]


async def test_a_request_buffering_route_refuses_bodies_over_the_limit_before_the_upstream(
    upstream: RunningServer, recorder: Recorder
) -> None:
    async with gateway_client(limited_config(upstream.url, request_buffering=True)) as (client, _):
        assert_too_large(await client.post("/upload", content=b"x" * (LIMIT + 1)))
        assert_too_large(await client.post("/upload", content=pieces(600, 600)))
        passed = await client.post("/upload", content=pieces(600, 400))
    assert passed.status_code == 200
    assert passed.json()["size"] == LIMIT
    assert [r.get("body_size") for r in recorder.requests] == [LIMIT]


async def test_without_max_body_bytes_bodies_are_not_limited(upstream: RunningServer) -> None:
    config = {"upstreams": {"api": {"url": upstream.url}}, "routes": [{"prefix": "/", "upstream": "api"}]}
    gateway = Gateway(build_config(config))
    assert gateway.snapshot.route_options[0].max_body is None  # nothing is checked or counted per request
    async with run_gateway(gateway) as server, httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        response = await client.post("/upload", content=pieces(*[65536] * 16))
    assert response.json()["size"] == 16 * 65536


def test_a_negative_max_body_bytes_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"server\.max_body_bytes"):
        build_config(limited_config("http://127.0.0.1:9", server={"max_body_bytes": -1}))
    with pytest.raises(ConfigError, match=r"routes\[0\]\.max_body_bytes"):
        build_config(limited_config("http://127.0.0.1:9", max_body_bytes=-5))
