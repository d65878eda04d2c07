"""The gateway as a real process under load: aborting clients, big downloads (issue 2)."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import pytest

from tests.rawhttp import dechunk, parse_response, read_until_closed
from tests.servers import RunningServer, fastgate_process

pytestmark = pytest.mark.anyio

FORBIDDEN_IN_LOG = ("Traceback", "LocalProtocolError", "Exception in ASGI", "ERROR", "can't handle event")


async def test_no_protocol_error_or_traceback_when_a_third_of_200_concurrent_clients_abort(
    upstream: RunningServer, tmp_path: Path
) -> None:
    rng = random.Random(20261121)
    completed: list[bytes] = []
    aborted = 0

    async def one(i: int) -> None:
        nonlocal aborted
        target = b"/stream?n=5&delay=0.05" if i % 2 else b"/slow?delay=0.2"
        abort_after = rng.uniform(0.0, 0.3) if rng.random() < 1 / 3 else None
        async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
            await stream.send(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if abort_after is not None:
                await anyio.sleep(abort_after)
                aborted += 1
                return  # closing the socket mid-request
            response = parse_response(await read_until_closed(stream, 20))
            assert response.status == 200
            completed.append(dechunk(response.body) if i % 2 else response.body)

    with fastgate_process(["--to", upstream.url, "--log-level", "debug"], tmp_path / "log") as gw:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(one, i)
        await anyio.sleep(0.5)
        log = gw.log()
    assert 40 < aborted < 100
    assert len(completed) == 200 - aborted
    assert all(body in (b"slow done", b"chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n") for body in completed)
    for needle in FORBIDDEN_IN_LOG:
        assert needle not in log, f"{needle!r} in gateway log:\n{log[-3000:]}"


async def test_256mb_download_keeps_rss_growth_under_50mb(upstream: RunningServer, tmp_path: Path) -> None:
    size = 256 * 1024 * 1024
    with fastgate_process(["--to", upstream.url, "--no-access-log"], tmp_path / "log") as gw:
        baseline = gw.rss_bytes()
        peak = baseline
        received = 0
        done = anyio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, gw.rss_bytes())
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            with anyio.fail_after(120):
                async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
                    await stream.send(b"GET /big?size=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
                    while True:
                        try:
                            received += len(await stream.receive(1 << 20))
                        except anyio.EndOfStream:
                            break
            done.set()
    growth = peak - baseline
    mib = 2**20
    print(f"256 MiB download: RSS baseline {baseline / mib:.1f} MiB, peak {peak / mib:.1f}, growth {growth / mib:.1f}")
    assert received > size
    assert growth < 50 * 1024 * 1024
