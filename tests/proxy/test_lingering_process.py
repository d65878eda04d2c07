"""Lingering close through a real ``fastgate run`` process: the early 413 reaches httpx, and each lingering key
(``server.lingering_time``, ``lingering_timeout``, ``max_lingering_bytes``) takes effect.

Before the lingering close, ``fastgate run`` with ``server: {max_body_bytes: 1024}`` answered a 20 KB chunked body
from httpx with a reset (``httpx.ReadError``) instead of the 413.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from ..rawhttp import parse_response
from ..reload_support import fastgate_run, gateway_config, write_config
from ..servers import GatewayProcess, RunningServer, free_port
from .test_lingering import answer_then_wait, endless_upload, held_by_server, pieces

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def gateway_process(tmp_path: Path, upstream: RunningServer, **server: Any) -> Iterator[GatewayProcess]:
    port = free_port()
    config = gateway_config(
        {"api": upstream.url},
        [{"prefix": "/", "upstream": "api"}],
        port=port,
        server={"max_body_bytes": 1024, **server},
    )
    write_config(tmp_path / "fastgate.yaml", config)
    with fastgate_run(tmp_path / "fastgate.yaml", tmp_path / "gateway.log", port) as gateway:
        yield gateway


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[anyio.abc.SocketStream, int]]:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        yield stream, stream.extra(anyio.abc.SocketAttribute.local_port)


async def test_fastgate_run_answers_a_20_kb_chunked_body_over_max_body_bytes_with_413(
    upstream: RunningServer, tmp_path: Path
) -> None:
    # lingering_timeout: 1 (lingering_time: 60): a client that falls silent after the answer is let go after 1 s.
    with gateway_process(tmp_path, upstream, lingering_time=60, lingering_timeout=1) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
            statuses = [(await client.post("/upload", content=pieces(20_000))).status_code for _ in range(20)]
        assert statuses == [413] * 20
        async with connection(gateway.port) as (stream, client_port):
            with anyio.fail_after(20):
                raw = await answer_then_wait(stream, endless_upload() + b"x" * 20_000)
                silent_since = time.monotonic()
                assert parse_response(raw).status == 413
                while held_by_server(gateway.port, client_port):  # noqa: ASYNC110 - the kernel's table, no event
                    await anyio.sleep(0.05)
        assert time.monotonic() - silent_since >= 0.9


async def test_fastgate_run_cuts_off_a_trickling_client_after_lingering_time(
    upstream: RunningServer, tmp_path: Path
) -> None:
    with gateway_process(tmp_path, upstream, lingering_time=2, lingering_timeout=30) as gateway:
        async with connection(gateway.port) as (stream, _):
            with anyio.fail_after(30):
                raw = await answer_then_wait(stream, endless_upload() + b"x" * 5_000)
                answered = time.monotonic()
                assert parse_response(raw).status == 413
                with contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
                    while time.monotonic() - answered < 20:  # never silent for lingering_timeout (30 s)
                        await stream.send(b"x" * 100)
                        await anyio.sleep(0.1)
                cut = time.monotonic() - answered
    assert 1.9 <= cut < 20


async def test_fastgate_run_bounds_the_bytes_a_lingering_close_reads(upstream: RunningServer, tmp_path: Path) -> None:
    with gateway_process(tmp_path, upstream, lingering_time=60, lingering_timeout=30, max_lingering_bytes=65536) as gw:
        async with connection(gw.port) as (stream, _):
            sent = 0
            with anyio.fail_after(30), contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
                await stream.send(endless_upload())
                piece = b"x" * 65536
                while sent < 1 << 30:  # a client that never reads, never pauses, and would send 1 GiB
                    await stream.send(piece)
                    sent += len(piece)
    # Reset once 64 KiB were read and dropped (plus what the kernels' buffers held), not after lingering_time.
    assert 65536 <= sent < 64 * 1024 * 1024
