"""Our HTTP/1.1 client against upstreams that break the protocol: what the client gets, and that the pool stays clean.

Each test runs the real gateway in front of a raw upstream (tests/misbehaving.py) that misbehaves on its first
connection only and answers properly on the others, so "the next request succeeds" also proves that the broken
connection was not reused.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import anyio
import anyio.abc
import httpx
import pytest

from tests.conftest import GatewayFactory
from tests.misbehaving import raw_upstream, read_head
from tests.servers import RunningServer, wait_until

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"


def pool_of(gw: RunningServer):  # type: ignore[no-untyped-def]
    return gw.app.transports["default"].pool


async def serve_ok(stream: anyio.abc.SocketStream) -> None:
    while True:
        await read_head(stream)
        await stream.send(OK)


def requests_in(data: bytearray) -> int:
    return data.count(b" HTTP/1.1\r\n")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
    ids=["with-upgrade-headers", "bare"],
)
async def test_101_to_a_plain_request_gives_502_and_the_connection_is_never_reused(
    gateway_for: GatewayFactory, answer: bytes
) -> None:
    received: dict[int, bytearray] = {}

    async def handler(stream: anyio.abc.SocketStream, number: int) -> None:
        if number > 1:
            await serve_ok(stream)
        await read_head(stream)
        await stream.send(answer)
        # What the incident's upstream did: a complete response on the "switched" connection a moment later.
        with anyio.move_on_after(0.5):
            await read_head(stream)
        await stream.send(SMUGGLED)
        await read_head(stream)

    async with raw_upstream(handler, received) as (url, connections), gateway_for(url) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as client:
            first = await client.get("/x")
            second = await client.get("/y")
        assert first.status_code == 502
        assert first.json()["error"] == "upstream_protocol_error"
        assert "101" in first.json()["detail"]
        assert (second.status_code, second.text) == (200, "ok")
        await wait_until(lambda: pool_of(gw).stats().busy == 0)
    assert requests_in(received[1]) == 1  # nothing else was ever written onto the switched connection
    assert connections == [1, 2]


@pytest.mark.parametrize(
    ("first", "status", "body"),
    [(b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""), (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 200, b"hi")],
    ids=["after-204", "after-content-length"],
)
async def test_bytes_after_a_complete_response_are_not_merged_into_it(
    gateway_for: GatewayFactory, caplog: pytest.LogCaptureFixture, first: bytes, status: int, body: bytes
) -> None:
    caplog.set_level(logging.INFO)
    received: dict[int, bytearray] = {}

    async def handler(stream: anyio.abc.SocketStream, number: int) -> None:
        if number > 1:
            await serve_ok(stream)
        await read_head(stream)
        await stream.send(first + SMUGGLED)  # one write: both land in one read on the gateway's side
        await read_head(stream)

    async with raw_upstream(handler, received) as (url, connections), gateway_for(url) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as client:
            response = await client.get("/x")
            after = await client.get("/y")
        assert (response.status_code, response.content) == (status, body)
        assert (after.status_code, after.text) == (200, "ok")
        stats = pool_of(gw).stats()
        assert stats.busy == 0 and stats.idle == 1
    assert requests_in(received[1]) == 1
    assert connections == [1, 2]
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"
    assert any("after a complete response" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("shape", ["many-lines", "one-endless-value"])
async def test_endless_response_head_gives_502_at_the_limit(gateway_for: GatewayFactory, shape: str) -> None:
    sent = 0

    async def handler(stream: anyio.abc.SocketStream, number: int) -> None:
        nonlocal sent
        if number > 1:
            await serve_ok(stream)
        await read_head(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\n" + (b"X-Long: " if shape == "one-endless-value" else b""))
        piece = b"a" * 1000 if shape == "one-endless-value" else b"X-Filler: " + b"a" * 1000 + b"\r\n"
        for _ in range(100_000):  # ~100 MB at most: the gateway must have given up long before
            await stream.send(piece)
            sent += len(piece)

    # The read timeout is far away: the answer must come from the size limit, not from the clock.
    async with raw_upstream(handler) as (url, connections), gateway_for(url, timeouts={"read": 60}) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
            with anyio.fail_after(10):
                response = await client.get("/")
            assert response.status_code == 502
            assert "over 65536 bytes" in response.json()["detail"]
            assert (await client.get("/")).text == "ok"
        assert pool_of(gw).stats().busy == 0
    assert sent < 10 * 1024 * 1024  # socket buffers, not the 100 MB on offer
    assert connections == [1, 2]


async def test_response_head_limit_counts_the_head_only(gateway_for: GatewayFactory) -> None:
    big_body = b"b" * 100_000

    async def handler(stream: anyio.abc.SocketStream, _: int) -> None:
        while True:
            head = await read_head(stream)
            filler = b"x" * (3000 if b"/fits" in head else 5000)
            # head and a body far larger than the limit in one write: only the head counts
            await stream.send(
                b"HTTP/1.1 200 OK\r\nX-Filler: %b\r\nContent-Length: %d\r\n\r\n%b" % (filler, len(big_body), big_body)
            )

    async with raw_upstream(handler) as (url, _), gateway_for(url, max_response_header_bytes=4096) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as client:
            fits = await client.get("/fits")
            too_big = await client.get("/too-big")
    assert (fits.status_code, len(fits.content)) == (200, len(big_body))
    assert too_big.status_code == 502
    assert "over 4096 bytes" in too_big.json()["detail"]


@pytest.mark.parametrize("coding", [b"gzip", b"chunked, gzip"])
async def test_unknown_transfer_coding_is_read_until_close(gateway_for: GatewayFactory, coding: bytes) -> None:
    async def handler(stream: anyio.abc.SocketStream, number: int) -> None:
        if number > 1:
            await serve_ok(stream)
        await read_head(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %b\r\n\r\nfirst part, " % coding)
        await stream.send(b"second part")
        # RFC 9112 §6.3 (4): the close ends this body

    async with raw_upstream(handler) as (url, connections), gateway_for(url) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as client:
            response = await client.get("/")
            assert (await client.get("/")).text == "ok"
        assert pool_of(gw).stats().busy == 0
    assert response.status_code == 200
    assert response.content == b"first part, second part"
    assert connections == [1, 2]


async def test_stream_idle_does_not_cut_a_reader_slower_than_the_upstream(gateway_for: GatewayFactory) -> None:
    size = 8 * 1024 * 1024

    async def handler(stream: anyio.abc.SocketStream, _: int) -> None:
        await read_head(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        await stream.send(b"x" * size)  # as fast as the gateway takes it
        await anyio.sleep(30)

    async with raw_upstream(handler) as (url, _), gateway_for(url, timeouts={"stream_idle": 0.3}) as gw:
        # A client with a small receive buffer that reads slowly: the gateway waits on it, never on the upstream.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # before connect: it sets the window
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", gw.port))
        try:
            await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = bytearray()
            with anyio.fail_after(30):
                while len(data) < size:
                    chunk = await loop.sock_recv(sock, 64 * 1024)
                    if not chunk:
                        break
                    data += chunk
                    await anyio.sleep(0.01)  # about 6 MB/s at most: well over a second for the whole body
        finally:
            sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == size  # complete, not cut by stream_idle


async def test_kept_alive_connection_parses_each_response_afresh_after_head_204_interim_and_chunked(
    gateway_for: GatewayFactory,
) -> None:
    """One upstream connection answers HEAD (Content-Length but no body), 204, 103 then 200, chunked and plain in turn:
    the response parser, kept across exchanges, starts each response at its first byte."""
    answers = {
        b"HEAD": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        b"GET /nc": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"GET /early": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly",
        b"GET /chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /plain": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain",
    }

    async def handler(stream: anyio.abc.SocketStream, number: int) -> None:
        while True:
            head = await read_head(stream)
            await stream.send(next(answer for start, answer in answers.items() if head.startswith(start)))

    async with raw_upstream(handler) as (url, connections), gateway_for(url) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as client:
            for _ in range(2):
                head = await client.head("/h")
                assert (head.status_code, head.headers["content-length"]) == (200, "5")
                for path, status, body in [
                    ("/nc", 204, ""),
                    ("/early", 200, "early"),
                    ("/chunked", 200, "abc"),
                    ("/plain", 200, "plain"),
                ]:
                    response = await client.get(path)
                    assert (response.status_code, response.text) == (status, body), path
    assert connections == [1]
