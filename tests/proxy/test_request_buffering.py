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


def buffering_gateway(upstream: str, memory_bytes: int) -> Gateway:
    return Gateway(
        build_config(
            {
                "server": {"request_buffer_memory_bytes": memory_bytes},
                "upstreams": {"api": {"url": upstream}},
                "routes": [{"prefix": "/", "upstream": "api", "request_buffering": True}],
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

    async with run_gateway(buffering_gateway(upstream.url, 65536)) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            response = await client.post("/upload", content=pieces())
    assert response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
