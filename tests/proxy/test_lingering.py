"""Lingering close over real sockets: an early 413 or 401 reaches a client that reads only after sending.

Before the lingering close, the gateway closed the socket right after answering a request whose body was still
arriving; the unread input made the kernel send RST, which destroyed the answer: httpx (which reads only after
sending) and a raw client writing its whole body first got a reset on every try with chunked bodies of 4 KB to
1 MB against a 1,024-byte limit. Now the answer is followed by FIN and the rest of the body is read and dropped.
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from fastgate import Gateway
from fastgate.config import build_config

from ..rawhttp import parse_response, read_until_closed
from ..servers import RunningServer, run_gateway

pytestmark = pytest.mark.anyio

LIMIT = 1024
RUNS = 20
SIZES = [4_096, 20_000, 100_000, 1_000_000]
API_KEY = "k-linger-0a9c"


def lingering_config(upstream: str, keys_file: Path, **server: Any) -> dict[str, Any]:
    return {
        "server": {"max_body_bytes": LIMIT, **server},
        "upstreams": {"api": {"url": upstream}},
        "routes": [
            {
                "prefix": "/admin",
                "upstream": "api",
                "plugins": [{"use": "api_key", "options": {"keys_file": str(keys_file)}}],
                "max_body_bytes": None,  # so that a declared body gets the 401, not the 413 checked before plugins
            },
            {"prefix": "/", "upstream": "api"},
        ],
    }


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(f"partner:{API_KEY}\n")
    return path


@contextlib.asynccontextmanager
async def lingering_gateway(upstream: RunningServer, keys_file: Path, **server: Any) -> AsyncIterator[RunningServer]:
    async with run_gateway(Gateway(build_config(lingering_config(upstream.url, keys_file, **server)))) as gateway:
        yield gateway


async def pieces(size: int, piece: int = 1000) -> AsyncIterator[bytes]:
    """A body without a length, in 1,000-byte pieces: httpx sends it chunked."""
    for start in range(0, size, piece):
        yield b"x" * min(piece, size - start)


def request_bytes(path: str, size: int, *, chunked: bool, piece: int = 1000) -> bytes:
    """The whole request: head and body, declared or chunked in ``piece``-byte chunks."""
    framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % size
    head = b"POST %s HTTP/1.1\r\nhost: gw\r\n%s\r\n\r\n" % (path.encode(), framing)
    if not chunked:
        return head + b"x" * size
    chunk = b"%x\r\n%s\r\n" % (piece, b"x" * piece)
    whole, rest = divmod(size, piece)
    tail = b"%x\r\n%s\r\n" % (rest, b"x" * rest) if rest else b""
    return head + chunk * whole + tail + b"0\r\n\r\n"


async def send_all_then_read(port: int, request: bytes) -> bytes:
    """A client that writes its whole request before reading a byte (as httpx and requests do), then reads one
    response by its Content-Length (a body read whole before the answer leaves the connection kept alive)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        with anyio.fail_after(20):
            await stream.send(request)
            received = b""
            while True:
                head, found, body = received.partition(b"\r\n\r\n")
                if found and len(body) >= int(parse_response(received).header(b"content-length")[0]):
                    return received
                received += await stream.receive()  # a reset or an early end raises: the answer was lost


def endless_upload(path: str = "/upload") -> bytes:
    """The head of an upload far over the limit: the gateway answers 413 at once, the client may send on."""
    return b"POST %s HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000000000\r\n\r\n" % path.encode()


def held_by_server(server_port: int, client_port: int) -> bool:
    """Whether the server still has its end of this connection open (an orphaned socket has inode 0)."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return fields[9] != "0"
    return False


async def answer_then_wait(stream: anyio.abc.SocketStream, request: bytes) -> bytes:
    """Send ``request`` (a body that will not be read), then read the early answer up to the server's FIN."""
    await stream.send(request)
    return await read_until_closed(stream)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "declared"])
@pytest.mark.parametrize(("path", "status"), [("/upload", 413), ("/admin/upload", 401)], ids=["413", "401"])
async def test_httpx_reads_the_early_answer_intact(
    upstream: RunningServer, keys_file: Path, chunked: bool, path: str, status: int
) -> None:
    answers = []
    async with lingering_gateway(upstream, keys_file) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
            for run in range(RUNS):
                size = SIZES[run % len(SIZES)]
                response = await client.post(path, content=pieces(size) if chunked else b"x" * size)
                answers.append((size, response.status_code, response.json()["error"]))
    error = "payload_too_large" if status == 413 else "unauthorized"
    assert answers == [(SIZES[run % len(SIZES)], status, error) for run in range(RUNS)]


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "declared"])
@pytest.mark.parametrize(("path", "status"), [("/upload", 413), ("/admin/upload", 401)], ids=["413", "401"])
async def test_a_client_writing_its_whole_body_first_reads_the_early_answer_intact(
    upstream: RunningServer, keys_file: Path, chunked: bool, path: str, status: int
) -> None:
    statuses = []
    async with lingering_gateway(upstream, keys_file) as gateway:
        for run in range(RUNS):
            raw = await send_all_then_read(gateway.port, request_bytes(path, SIZES[run % len(SIZES)], chunked=chunked))
            response = parse_response(raw)
            statuses.append(response.status)
    assert statuses == [status] * RUNS


async def test_the_socket_closes_once_the_client_stops_sending(upstream: RunningServer, keys_file: Path) -> None:
    async with lingering_gateway(upstream, keys_file, lingering_timeout=1) as gateway:
        async with await anyio.connect_tcp("127.0.0.1", gateway.port) as stream:
            client_port = stream.extra(anyio.abc.SocketAttribute.local_port)
            with anyio.fail_after(20):
                raw = await answer_then_wait(stream, request_bytes("/upload", 100_000, chunked=False)[:50_000])
                silent_since = time.monotonic()
                assert parse_response(raw).status == 413  # and FIN: the server's sending side is closed
                assert held_by_server(gateway.port, client_port)  # its reading side is not
                while held_by_server(gateway.port, client_port):  # noqa: ASYNC110 - the kernel's table, no event
                    await anyio.sleep(0.05)
    assert time.monotonic() - silent_since >= 0.9  # lingering_timeout after the last byte, not at once


async def test_a_client_that_keeps_sending_is_cut_off_after_lingering_time(
    upstream: RunningServer, keys_file: Path
) -> None:
    async with lingering_gateway(upstream, keys_file, lingering_time=2, lingering_timeout=1) as gateway:
        async with await anyio.connect_tcp("127.0.0.1", gateway.port) as stream:
            with anyio.fail_after(20):
                raw = await answer_then_wait(stream, endless_upload() + b"x" * 5_000)
                answered = time.monotonic()
                assert parse_response(raw).status == 413
                trickles = 0
                with contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
                    while time.monotonic() - answered < 15:  # a client trickling forever, each byte within 1 s
                        await stream.send(b"x" * 100)
                        trickles += 1
                        await anyio.sleep(0.1)
                cut = time.monotonic() - answered
    assert 1.9 <= cut < 15  # lingering_time, although the client never fell silent for lingering_timeout
    assert trickles >= 10


async def test_discarded_bytes_are_bounded_in_count_and_never_kept(upstream: RunningServer, keys_file: Path) -> None:
    bound = 8 * 1024 * 1024
    piece = b"x" * 65536
    sent = 0
    async with lingering_gateway(upstream, keys_file, max_lingering_bytes=bound) as gateway:
        async with await anyio.connect_tcp("127.0.0.1", gateway.port) as stream:
            await stream.send(endless_upload())
            tracemalloc.start()
            try:
                before, _ = tracemalloc.get_traced_memory()
                with anyio.fail_after(30), contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
                    while sent < 64 * bound:  # a client that never reads and never stops
                        await stream.send(piece)
                        sent += len(piece)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    # Cut off once the bound was read (what the client sent also counts what the kernels' buffers held), not after
    # the 512 MiB it would have sent.
    assert bound <= sent < 4 * bound
    assert peak - before < 2 * 1024 * 1024  # 8 MiB and more dropped: each read freed before the next


async def test_a_finished_request_with_connection_close_is_not_held(upstream: RunningServer, keys_file: Path) -> None:
    # The normal path is unchanged: nothing unread, so the socket is closed with the answer, with no linger.
    async with lingering_gateway(upstream, keys_file) as gateway:
        async with await anyio.connect_tcp("127.0.0.1", gateway.port) as stream:
            client_port = stream.extra(anyio.abc.SocketAttribute.local_port)
            with anyio.fail_after(20):
                await stream.send(b"GET /x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
                assert parse_response(await read_until_closed(stream)).status == 200
            # The server closed its socket before its FIN left (a linger sends FIN and keeps the socket 5 s).
            assert not held_by_server(gateway.port, client_port)
