"""Responses come back as the upstream sent them, streamed, with only hop-by-hop headers removed (issue 2)."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest

from tests.rawhttp import dechunk, raw_exchange
from tests.servers import RunningServer
from tests.upstream_app import GZIP_BODY

pytestmark = pytest.mark.anyio


async def test_response_streams_chunk_by_chunk(client: httpx.AsyncClient) -> None:
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    async with client.stream("GET", "/stream?n=3&delay=0.4") as response:
        async for chunk in response.aiter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    assert b"".join(c for _, c in arrivals) == b"chunk 0\nchunk 1\nchunk 2\n"
    # chunks arrive as the upstream produces them (0.4 s apart), not all at once when it has finished: no absolute
    # bound, which a loaded machine cannot keep, only the spacing that buffering would erase
    assert arrivals[-1][0] - arrivals[0][0] > 0.5


async def test_sse_events_reach_the_client_as_they_are_produced(client: httpx.AsyncClient) -> None:
    times: list[float] = []
    started = time.monotonic()
    async with client.stream("GET", "/sse") as response:
        assert response.headers["content-type"] == "text/event-stream"
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                times.append(time.monotonic() - started)
    assert len(times) == 3
    # each event arrives when it is produced (0.2 s apart), not when the stream ends: buffering would erase the gaps
    assert times[1] - times[0] > 0.1
    assert times[2] - times[1] > 0.1


async def test_bytes_are_relayed_raw_without_decompression(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/gzip") as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers["content-length"] == str(len(GZIP_BODY))
    assert raw == GZIP_BODY


async def test_content_length_is_kept(client: httpx.AsyncClient) -> None:
    response = await client.get("/big?size=300000")
    assert response.headers["content-length"] == "300000"
    assert "transfer-encoding" not in response.headers
    assert len(response.content) == 300000


async def test_head_carries_no_body(gateway: RunningServer) -> None:
    response = await raw_exchange(gateway.port, b"HEAD /big?size=1000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.status == 200
    assert response.header(b"content-length") == [b"1000"]
    assert response.body == b""


@pytest.mark.parametrize("status", [204, 304])
async def test_204_and_304_carry_no_body(gateway: RunningServer, status: int) -> None:
    response = await raw_exchange(
        gateway.port, b"GET /status/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % status
    )
    assert response.status == status
    assert response.body == b""
    assert response.header(b"transfer-encoding") == []


async def test_head_and_204_keep_the_pooled_connection_usable(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await client.head("/big?size=1000")).status_code == 200
        assert (await client.get("/status/204")).status_code == 204
        assert (await client.get("/echo")).status_code == 200


async def test_several_set_cookie_headers_stay_several(client: httpx.AsyncClient) -> None:
    response = await client.get("/cookies")
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]


async def test_http10_clients_never_get_chunked(gateway: RunningServer) -> None:
    response = await raw_exchange(gateway.port, b"GET /stream?n=3&delay=0.01 HTTP/1.0\r\n\r\n")
    assert response.status == 200
    assert response.header(b"transfer-encoding") == []
    assert response.body == b"chunk 0\nchunk 1\nchunk 2\n"
    response = await raw_exchange(gateway.port, b"GET /big?size=5000 HTTP/1.0\r\n\r\n")
    assert response.header(b"content-length") == [b"5000"]
    assert len(response.body) == 5000


async def test_http11_clients_get_chunked_for_unknown_length(gateway: RunningServer) -> None:
    response = await raw_exchange(
        gateway.port, b"GET /stream?n=2&delay=0.01 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert response.header(b"transfer-encoding") == [b"chunked"]
    assert dechunk(response.body) == b"chunk 0\nchunk 1\n"


async def test_hop_by_hop_response_headers_are_removed(client: httpx.AsyncClient) -> None:
    response = await client.get("/hop")
    for gone in ("x-upstream-secret", "keep-alive", "proxy-connection", "trailer"):
        assert gone not in response.headers
    assert response.headers["x-kept"] == "yes"
    assert response.headers["via"] == "1.1 fastgate"
    assert response.text == "hop"


@pytest.mark.parametrize("status", [400, 401, 404, 418, 429, 500, 502, 503])
async def test_upstream_errors_pass_through_unchanged(client: httpx.AsyncClient, status: int) -> None:
    response = await client.get(f"/status/{status}")
    assert response.status_code == status
    assert response.text == f"status {status}"


async def test_slow_reader_gets_the_whole_body(client: httpx.AsyncClient) -> None:
    size = 8 * 1024 * 1024
    received = 0
    async with client.stream("GET", f"/big?size={size}") as response:
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received < 2 * 1024 * 1024:
                await anyio.sleep(0.01)
    assert received == size
