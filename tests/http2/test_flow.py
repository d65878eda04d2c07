"""HTTP/2 flow control and cancellation through the gateway (issue 18: "Flow control is real"; RST_STREAM and a
client going cancel the upstream request as on HTTP/1.1).

A stream's window is opened only as its bytes are written upstream: with an upstream that stops reading, the raw
client (tests/http2/client.py) can send the stream's initial window, plus what the upstream took, plus what the
sockets between hold, and then no more — while other streams of the same connection go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from fastgate import Gateway, GatewayConfig
from fastgate.config import ServerConfig
from tests.http2.client import H2Client, h2_connect
from tests.servers import RunningServer, answer_lifespan, run_gateway, run_server, wait_until
from tests.upstream_app import Recorder

pytestmark = pytest.mark.anyio

# What the processes on the way may hold beyond the stream's window, what the upstream consumed and what the kernel
# queues on the upstream connection hold: Uvicorn's 64 KiB read buffer, fastgate's 64 KiB request prebuffer, the
# upstream transport's write buffer. Measured: 131 KiB with a 64 KiB window, none with 1 MiB (the window held it).
USERLAND_SLACK = 512 * 1024
BLOCKED_AFTER = 2.0  # seconds without a window update: the client is blocked (the only way to observe "no more")


@dataclass
class SlowReader:
    """``/drip`` reads the first body piece, then nothing until ``resume`` is set, then the rest (answering size and
    sha256); anything else reads the whole body and answers its size."""

    consumed: int = 0
    first: anyio.Event = field(default_factory=anyio.Event)
    resume: anyio.Event = field(default_factory=anyio.Event)
    disconnected: anyio.Event = field(default_factory=anyio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        digest = hashlib.sha256()
        size = 0
        more = True
        drip = scope["path"] == "/drip"
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                return
            body = message.get("body", b"")
            digest.update(body)
            size += len(body)
            more = message.get("more_body", False)
            if drip:
                self.consumed = size
                if not self.first.is_set():
                    self.first.set()
                    await self.resume.wait()
        body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


def kernel_queues(port: int) -> int:
    """Bytes the kernel holds on the established loopback connections to or from ``port`` (/proc/net/tcp's
    tx_queue and rx_queue): what the gateway wrote upstream that the upstream has not read yet."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        if state == "01" and port in (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)):
            tx, rx = queues.split(":")
            total += int(tx, 16) + int(rx, 16)
    return total


@contextlib.asynccontextmanager
async def gateway_before(app: Any, **http2: Any) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    async with run_server(app) as upstream:
        server = ServerConfig(http2=http2) if http2 else ServerConfig()
        async with run_gateway(Gateway(GatewayConfig.single(upstream.url, server=server))) as gw:
            yield gw, upstream


async def send_until_blocked(h2: H2Client, stream_id: int, limit: int) -> int:
    """Send on ``stream_id`` whatever the windows allow until no window update comes for ``BLOCKED_AFTER`` seconds
    (or ``limit`` bytes went): the count sent."""
    piece = b"f" * (256 * 1024)
    sent = 0
    with anyio.fail_after(120):
        while sent < limit:
            sent += await h2.send_available(stream_id, piece[: min(len(piece), limit - sent)])
            if h2.window(stream_id) > 0:
                continue
            with anyio.move_on_after(BLOCKED_AFTER):
                await h2.wait(lambda: h2.window(stream_id) > 0 or h2.closed, BLOCKED_AFTER * 2)
            if h2.window(stream_id) <= 0:
                break
    return sent


@pytest.mark.parametrize("window", [65535, 1048576])
async def test_a_slow_upstream_reader_slows_its_stream_not_the_connection(window: int) -> None:
    upstream = SlowReader()
    total = 48 * 1024 * 1024
    async with gateway_before(upstream, initial_stream_window_bytes=window) as (gw, up), h2_connect(gw.port) as h2:
        assert h2.server_settings[4] == window  # SETTINGS_INITIAL_WINDOW_SIZE
        drip = await h2.request("POST", "/drip", end=False)
        sent = await send_until_blocked(h2, drip, total)
        assert upstream.first.is_set()
        consumed = upstream.consumed
        queued = kernel_queues(up.port)
        # Not opened beyond what was written upstream: the window, what the upstream read, what the sockets hold
        # (measured: 5.5 MiB sent with a 1 MiB window, 125 KiB consumed, 4.4 MiB in the kernel's queues).
        assert sent < total
        assert sent <= window + consumed + queued + USERLAND_SLACK, (sent, window, consumed, queued)
        # The same connection serves other streams meanwhile, uploads included (the connection window is open).
        assert (await h2.get("/other")).status == 200
        other = bytes(range(256)) * 8192  # 2 MiB
        state = await h2.response(await h2.request("POST", "/other", body=other))
        assert json.loads(state.body)["size"] == len(other)
        # The upstream reads again: the stream goes on to its end, every byte delivered in order.
        upstream.resume.set()
        await h2.send_body(drip, b"f" * (total - sent))
        done = await h2.response(drip, 60)
        assert done.status == 200
        assert json.loads(done.body) == {"size": total, "sha256": hashlib.sha256(b"f" * total).hexdigest()}


# -- cancellation -----------------------------------------------------------------------------------------------------


async def test_rst_stream_mid_response_cancels_the_upstream_request(gateway: RunningServer, recorder: Recorder) -> None:
    async with h2_connect(gateway.port) as h2:
        stream_id = await h2.request("GET", "/stream?n=200&delay=0.05")
        state = h2.state(stream_id)
        await h2.wait(lambda: b"chunk 1\n" in state.body)
        await h2.reset(stream_id)
        with anyio.fail_after(10):
            await recorder.disconnect_event.wait()
        assert "/stream" in recorder.disconnected
        assert (await h2.get("/echo")).status == 200  # the connection serves on


async def test_rst_stream_mid_request_body_cancels_the_upstream_request(
    gateway: RunningServer, recorder: Recorder
) -> None:
    async with h2_connect(gateway.port) as h2:
        stream_id = await h2.request("POST", "/upload", end=False)
        await h2.send_available(stream_id, b"u" * 200_000)  # past the 64 KiB prebuffer: the upstream is reading
        await wait_until(lambda: recorder.first_body_byte_at is not None, 10)
        await h2.reset(stream_id)
        with anyio.fail_after(10):
            await recorder.disconnect_event.wait()
        assert "/upload" in recorder.disconnected
        assert (await h2.get("/echo")).status == 200


@pytest.mark.parametrize("path", ["/slow?delay=30", "/stream?n=600&delay=0.05"])
async def test_closing_the_connection_cancels_the_upstream_request(
    gateway: RunningServer, recorder: Recorder, path: str
) -> None:
    async with h2_connect(gateway.port) as h2:
        await h2.request("GET", path)
        with anyio.fail_after(10):
            await recorder.started.wait()
    with anyio.fail_after(10):
        await recorder.disconnect_event.wait()
    assert path.partition("?")[0] in recorder.disconnected


async def test_reset_of_a_slow_reader_stream_cancels_its_upstream_and_frees_the_connection_window() -> None:
    # The stalled stream's unacknowledged bytes go back to the connection window when it is reset.
    upstream = SlowReader()
    async with gateway_before(upstream, initial_connection_window_bytes=65535) as (gw, _), h2_connect(gw.port) as h2:
        drip = await h2.request("POST", "/drip", end=False)
        await send_until_blocked(h2, drip, 8 * 1024 * 1024)
        await h2.reset(drip)
        upstream.resume.set()  # it reads again, and finds its request gone
        with anyio.fail_after(10):
            await upstream.disconnected.wait()
        body = b"o" * 200_000  # more than the whole connection window: it must have reopened
        state = await h2.response(await h2.request("POST", "/other", body=body))
        assert json.loads(state.body)["size"] == len(body)
