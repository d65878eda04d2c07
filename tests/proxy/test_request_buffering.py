"""Routes with ``request_buffering: true``: the body is read whole before an upstream connection is taken."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest

from fastgate import Gateway
from fastgate.config import build_config

from ..servers import RunningServer, run_gateway
from ..upstream_app import Recorder

pytestmark = pytest.mark.anyio


def buffering_gateway(upstream: str, memory_bytes: int, **route: object) -> Gateway:
    return Gateway(
        build_config(
            {
                "server": {"request_buffer_memory_bytes": memory_bytes},
                "upstreams": {"api": {"url": upstream}},
                "routes": [{"prefix": "/", "upstream": "api", "request_buffering": True, **route}],
            }
        )
    )


async def test_a_buffered_body_reaches_the_upstream_only_after_the_client_sent_it_all(
    upstream: RunningServer, recorder: Recorder
) -> None:
    sent_last_at = 0.0

    async def slow_body() -> AsyncIterator[bytes]:
        nonlocal sent_last_at
        yield b"first piece;"
        await anyio.sleep(0.5)
        sent_last_at = time.monotonic()
        yield b"last piece"

    async with run_gateway(buffering_gateway(upstream.url, 1 << 20)) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            response = await client.post("/upload", content=slow_body())
    assert response.status_code == 200
    assert response.json()["size"] == len(b"first piece;last piece")
    assert recorder.first_body_byte_at is not None
    assert recorder.first_body_byte_at >= sent_last_at
    # the length is known once the body is read: the upstream gets a Content-Length, not chunks
    assert recorder.header("content-length") == [str(len(b"first piece;last piece"))]
    assert recorder.header("transfer-encoding") == []


async def test_a_buffered_body_past_the_memory_bound_goes_through_a_file_intact(upstream: RunningServer) -> None:
    body = bytes(range(256)) * 4096 * 3  # 3 MiB against a 64 KiB memory bound

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    # A buffered route's body limit is 1 MiB unless given (issue 17 item 10): 4 MiB here, so the file is used.
    async with run_gateway(buffering_gateway(upstream.url, 65536, max_body_bytes=4 << 20)) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            response = await client.post("/upload", content=pieces())
    assert response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_a_buffered_route_without_a_limit_is_bounded_at_one_mib(
    upstream: RunningServer, recorder: Recorder
) -> None:
    """Issue 17 item 10: request_buffering spooled any body to disk; now 1 MiB (nginx's client_max_body_size)."""
    limit = 1 << 20

    async def pieces(size: int) -> AsyncIterator[bytes]:
        for start in range(0, size, 100_000):
            yield b"x" * min(100_000, size - start)

    async with run_gateway(buffering_gateway(upstream.url, 65536)) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            at_limit = await client.post("/upload", content=pieces(limit))
            chunked = await client.post("/upload", content=pieces(limit + 1))
            declared = await client.post("/upload", content=b"x" * (limit + 1))
    assert at_limit.status_code == 200 and at_limit.json()["size"] == limit
    assert (chunked.status_code, declared.status_code) == (413, 413)
    assert chunked.json()["error"] == declared.json()["error"] == "payload_too_large"
    assert len(recorder.requests) == 1  # only the body at the limit went upstream
    # null given on the route: no limit, as documented (an explicit choice)
    async with run_gateway(buffering_gateway(upstream.url, 65536, max_body_bytes=None)) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            response = await client.post("/upload", content=pieces(limit + 1))
    assert response.json()["size"] == limit + 1
