"""Slow, idle and non-reading clients against a real gateway process: they are cut off, everyone else is served.

The gateway runs as a subprocess (``fastgate run``) with small deadlines, in front of a real upstream (uvicorn in
this process). Each scenario is bounded in connections and in time: waits are on events or on polled state with a
deadline, and every deadline is the configured timeout plus ``SLACK`` for a loaded two-core machine, so a pass
means the behaviour, not the machine's speed. Figures (close times, RSS per idle connection) go to
build/slow-clients.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import resource
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from tests.hostile.support import gateway_process, raise_fd_limit, split_responses
from tests.rawhttp import dechunk
from tests.servers import RunningServer, free_port, run_server, wait_until
from tests.upstream_app import Recorder, UpstreamApp

pytestmark = pytest.mark.anyio

REPORT = Path(__file__).resolve().parents[2] / "build" / "slow-clients.md"
SLACK = 4.0  # seconds added to every deadline, for a loaded machine
# The slowloris close deadline is the issue's figure, header_timeout + 1 s, per connection and counted from its
# connect on the client (the server's clock starts at its accept, no earlier), plus this much for the loaded 2-core
# machine: the test's own event loop runs 1,000 trickling clients and sees each close late. Measured: see FIGURES.
CLOSE_ALLOWANCE = 2.0
HEADER_TIMEOUT = 2.0
GRACE_PERIOD = 1.0
SEND_TIMEOUT = 2.0
FIGURES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def fd_limit() -> Iterator[int]:
    """Room for 2,000 client sockets here, and as many in the gateway (it inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = raise_fd_limit(8192)
    if limit < 5000:
        pytest.skip(f"RLIMIT_NOFILE hard limit is {hard}; these scenarios need about 5,000 descriptors")
    FIGURES.clear()
    yield limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    REPORT.parent.mkdir(exist_ok=True)
    text = [
        "# Slow and idle clients",
        "",
        f"Written by tests/hostile/test_slow_clients.py on {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
    ]
    REPORT.write_text("\n".join(text + [f"- {line}" for line in FIGURES]) + "\n")


def figure(line: str) -> None:
    print(line)
    FIGURES.append(line)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def upstream(recorder: Recorder) -> AsyncIterator[RunningServer]:
    async with run_server(UpstreamApp(recorder), backlog=4096) as server:
        yield server


def upstream_connections(upstream: RunningServer) -> int:
    return len(upstream.server.server_state.connections)


def config(upstream: RunningServer, server: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
    return {
        "server": {"log_level": "warning", "header_timeout": HEADER_TIMEOUT, **(server or {})},
        "upstreams": {"default": {"url": upstream.url, **options}},
        "routes": [{"prefix": "/", "upstream": "default"}],
    }


@dataclass
class Client:
    """One hostile connection: when it connected and was closed, what it read."""

    connected_at: float = 0.0
    closed_at: float | None = None
    received: bytes = b""

    @property
    def status(self) -> int | None:
        responses, _ = split_responses(self.received)
        return responses[0].status if responses else None


@dataclass
class Crowd:
    size: int
    clients: list[Client] = field(default_factory=list)
    open: int = 0
    all_connected: anyio.Event = field(default_factory=anyio.Event)
    all_closed: anyio.Event = field(default_factory=anyio.Event)

    def closed(self, client: Client) -> None:
        client.closed_at = time.monotonic()
        self.open -= 1
        if self.open == 0 and self.all_connected.is_set():
            self.all_closed.set()

    def still_open(self) -> list[Client]:
        return [c for c in self.clients if c.closed_at is None]

    def slowest_close(self) -> float:
        return max((c.closed_at - c.connected_at for c in self.clients if c.closed_at is not None), default=0.0)


async def trickle(
    port: int, crowd: Crowd, connecting: anyio.CapacityLimiter, first: bytes, byte: bytes, interval: tuple[float, float]
) -> None:
    """Connect, send ``first``, then ``byte`` every ``interval`` seconds (uniform), until the server closes."""
    client = Client()
    crowd.clients.append(client)
    crowd.open += 1
    async with connecting:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    client.connected_at = time.monotonic()
    if len(crowd.clients) == crowd.size and all(c.connected_at for c in crowd.clients):
        crowd.all_connected.set()
    async with stream, anyio.create_task_group() as tg:

        async def drip() -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await stream.send(first)
                while True:
                    await anyio.sleep(random.uniform(*interval))
                    await stream.send(byte)

        tg.start_soon(drip)
        try:
            while True:
                client.received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            crowd.closed(client)
        tg.cancel_scope.cancel()


async def start_crowd(
    tg: anyio.abc.TaskGroup, port: int, size: int, first: bytes, byte: bytes, interval: tuple[float, float]
) -> Crowd:
    """Open ``size`` trickling connections (100 connecting at a time); returns once all are connected."""
    crowd = Crowd(size)
    connecting = anyio.CapacityLimiter(100)
    for _ in range(size):
        tg.start_soon(trickle, port, crowd, connecting, first, byte, interval)
    with anyio.fail_after(30):
        await crowd.all_connected.wait()
    if crowd.open == 0:
        crowd.all_closed.set()
    return crowd


async def normal_requests(
    url: str, count: int, limit: float, *, upload: bool = False, latencies: list[float] | None = None
) -> list[str]:
    """``count`` requests from well-behaved clients, 10 at a time, each on a new connection; returns the failures
    (and appends each answered request's seconds, connect included, to ``latencies``)."""
    failures: list[str] = []
    limiter = anyio.CapacityLimiter(10)
    no_reuse = httpx.Limits(max_keepalive_connections=0)

    async def one(i: int) -> None:
        async with limiter, httpx.AsyncClient(base_url=url, timeout=limit, limits=no_reuse) as client:
            started = time.monotonic()
            try:
                response = await client.post("/upload", content=b"n" * 1000) if upload else await client.get("/echo")
            except httpx.HTTPError as exc:
                failures.append(f"request {i}: {type(exc).__name__}")
                return
            if latencies is not None:
                latencies.append(time.monotonic() - started)
            if response.status_code != 200:
                failures.append(f"request {i}: {response.status_code}")

    with anyio.move_on_after(limit + SLACK) as scope:
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
    if scope.cancelled_caught:
        failures.append(f"not all {count} requests were answered within {limit + SLACK} s")
    return failures


async def test_slowloris_connections_get_408_within_header_timeout_while_normal_clients_are_served(
    upstream: RunningServer, tmp_path: Path
) -> None:
    with gateway_process(config(upstream), tmp_path) as gw:
        async with anyio.create_task_group() as tg:
            started = time.monotonic()
            crowd = await start_crowd(
                tg, gw.port, 1000, b"GET /echo HTTP/1.1\r\nHost: example.test\r\nX-Slow: ", b"s", (0.8, 1.2)
            )
            connected = time.monotonic() - started
            latencies: list[float] = []
            failures = await normal_requests(gw.url, 20, limit=5, latencies=latencies)
            with anyio.move_on_after(HEADER_TIMEOUT + 1 + SLACK):
                await crowd.all_closed.wait()
            tg.cancel_scope.cancel()
    still_open = crowd.still_open()
    statuses = [c.status for c in crowd.clients]
    got_408 = statuses.count(408)
    other = sorted({s for s in statuses if s not in (None, 408)})
    closes = sorted(c.closed_at - c.connected_at for c in crowd.clients if c.closed_at is not None) or [0.0]
    latencies.sort()
    figure(
        f"slowloris: 1000 connections opened in {connected:.1f} s; {len(still_open)} still open after the deadline; "
        f"{got_408} read a 408; closed after connecting (header_timeout {HEADER_TIMEOUT} s): "
        f"median {closes[len(closes) // 2]:.2f} s, p99 {closes[int(len(closes) * 0.99)]:.2f} s, "
        f"slowest {crowd.slowest_close():.2f} s; normal requests meanwhile failed: {len(failures)} of 20, "
        f"slowest answered in {latencies[-1] if latencies else 0:.2f} s"
    )
    assert not failures, failures
    assert len(still_open) == 0, (
        f"{len(still_open)} of 1000 slow connections still open {HEADER_TIMEOUT + 1 + SLACK} s on"
    )
    assert crowd.slowest_close() <= HEADER_TIMEOUT + 1 + CLOSE_ALLOWANCE, (
        f"a slow connection was closed {crowd.slowest_close():.2f} s after connecting"
    )
    assert not other, f"slow clients read statuses {other}, expected only 408"
    assert got_408 >= 500, f"only {got_408} of 1000 slow clients read a 408"


async def test_connection_that_sends_nothing_is_closed_after_header_timeout(
    upstream: RunningServer, tmp_path: Path
) -> None:
    # nginx closes such a connection without a word (its 408 is only logged); a 408 is accepted too.
    with gateway_process(config(upstream), tmp_path) as gw:
        async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
            received = b""
            with anyio.move_on_after(HEADER_TIMEOUT + 1 + SLACK) as scope:
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    while True:
                        received += await stream.receive()
    assert not scope.cancelled_caught, "a silent connection was still open after the header timeout"
    assert received == b"" or received.startswith(b"HTTP/1.1 408 ")


async def test_slow_request_bodies_get_408_after_the_grace_period_and_free_the_upstream_pool(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    rate = {"bytes_per_second": 240, "grace_period": GRACE_PERIOD}
    pool = {"max_connections": 50, "max_keepalive_connections": 10}
    settings = config(upstream, {"min_request_body_rate": rate}, limits=pool, timeouts={"pool": 30})
    with gateway_process(settings, tmp_path) as gw:
        async with anyio.create_task_group() as tg:
            head = b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 1000000\r\n\r\n"
            crowd = await start_crowd(tg, gw.port, 530, head, b"b", (1.0, 5.0))
            # Once the grace period has passed, the pool is no longer held by the slow bodies. The rate is that of
            # the bytes arriving from the client, whether or not the request has an upstream connection yet: one
            # queued for the pool must not keep its place until the pool timeout (Kestrel pauses its timer while the
            # app is not reading; fastgate must not).
            await anyio.sleep(GRACE_PERIOD)
            failures: list[str] = []

            async def normal() -> None:
                failures.extend(await normal_requests(gw.url, 20, limit=10, upload=True))

            async with anyio.create_task_group() as normal_group:
                normal_group.start_soon(normal)
                with anyio.move_on_after(GRACE_PERIOD + 2 + SLACK):
                    await crowd.all_closed.wait()
                with contextlib.suppress(TimeoutError):  # measured while any slow upload is still connected
                    await wait_until(lambda: upstream_connections(upstream) <= 10, limit=SLACK)
                left_upstream = upstream_connections(upstream)
                still_open = crowd.still_open()
            tg.cancel_scope.cancel()
    statuses = [c.status for c in crowd.clients]
    got_408 = statuses.count(408)
    other = sorted({s for s in statuses if s not in (None, 408)})
    figure(
        f"slow bodies: 530 uploads at ~1 byte per 1-5 s, pool of 50; {len(still_open)} still open after the deadline; "
        f"{got_408} read a 408, others {other}; slowest close {crowd.slowest_close():.1f} s; "
        f"upstream connections left {left_upstream}; normal uploads failed: {len(failures)} of 20"
    )
    assert not failures, failures
    assert len(still_open) == 0, f"{len(still_open)} of 530 slow uploads still open"
    assert not other, f"slow uploads read statuses {other}, expected only 408"
    assert got_408 >= 265, f"only {got_408} of 530 slow uploads read a 408"
    assert left_upstream <= 10, f"{left_upstream} upstream connections still open (pool keeps at most 10 idle)"


async def test_expect_100_continue_without_a_body_does_not_hold_an_upstream_connection(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    rate = {"bytes_per_second": 240, "grace_period": GRACE_PERIOD}
    with gateway_process(config(upstream, {"min_request_body_rate": rate}), tmp_path) as gw:
        async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
            await stream.send(
                b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
            )
            received = b""
            with anyio.move_on_after(GRACE_PERIOD + 2 + SLACK) as scope:
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    while True:
                        received += await stream.receive()
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: upstream_connections(upstream) == 0, limit=SLACK)
        left_upstream = upstream_connections(upstream)
    final = received.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert not scope.cancelled_caught, f"still open {GRACE_PERIOD + 2 + SLACK} s on; read {received[:80]!r}"
    assert final.startswith(b"HTTP/1.1 408 "), final[:80]
    assert left_upstream == 0, "the upstream connection carrying the unfinished body is still open"


async def test_idle_keepalive_connections_cost_little_and_do_not_stop_normal_clients(
    upstream: RunningServer, tmp_path: Path
) -> None:
    count = 2000
    with gateway_process(config(upstream, {"keepalive_timeout": 60}), tmp_path) as gw:
        await normal_requests(gw.url, 10, limit=5)  # warm up: the pool and the code paths are in place
        rss_before = gw.rss_bytes()
        streams: list[anyio.abc.SocketStream] = []
        try:
            limiter = anyio.CapacityLimiter(100)

            async def idle_client() -> None:
                async with limiter:
                    stream = await anyio.connect_tcp("127.0.0.1", gw.port)
                    streams.append(stream)
                    await stream.send(b"GET /status/204 HTTP/1.1\r\nHost: example.test\r\n\r\n")
                    answer = b""
                    while b"\r\n\r\n" not in answer:
                        answer += await stream.receive()
                    assert answer.startswith(b"HTTP/1.1 204 "), answer[:60]

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for _ in range(count):
                        tg.start_soon(idle_client)
            rss_after = gw.rss_bytes()
            failures = await normal_requests(gw.url, 20, limit=5)
            closed_early = await _count_closed(streams)
        finally:
            for stream in streams:
                await stream.aclose()
    per_connection = (rss_after - rss_before) / count
    figure(
        f"idle keep-alive: {count} connections after one request each: gateway RSS "
        f"{rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB, {per_connection / 1024:.1f} KiB per connection"
    )
    assert not failures, failures
    assert per_connection < 64 * 1024, "an idle connection should not hold buffers of its own"
    assert closed_early == 0, f"{closed_early} idle connections were closed before keepalive_timeout"


async def _count_closed(streams: list[anyio.abc.SocketStream]) -> int:
    """How many of ``streams`` the server has closed (each gets 10 ms to show an EOF)."""
    closed = 0
    for stream in streams[:200]:
        with anyio.move_on_after(0.01):
            try:
                await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                closed += 1
    return closed


async def test_client_that_never_reads_a_large_response_is_cut_after_send_timeout(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    size = 256 << 20
    with gateway_process(config(upstream, {"send_timeout": SEND_TIMEOUT}), tmp_path) as gw:
        async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
            await stream.send(b"GET /big?size=%d HTTP/1.1\r\nHost: example.test\r\n\r\n" % size)
            with anyio.fail_after(5):
                await recorder.started.wait()
            stalled_at = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: upstream_connections(upstream) == 0, limit=SEND_TIMEOUT + 1 + SLACK)
            freed_after = time.monotonic() - stalled_at
            left_upstream = upstream_connections(upstream)
            read = 0
            if left_upstream == 0:  # cut off: what is left to read ends early, in an EOF or a reset
                with (
                    anyio.move_on_after(10),
                    contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError),
                ):
                    while True:
                        read += len(await stream.receive())
    outcome = f"freed after {freed_after:.1f} s" if left_upstream == 0 else f"still open after {freed_after:.1f} s"
    figure(f"send_timeout {SEND_TIMEOUT} s: the non-reading client's upstream connection {outcome}")
    assert left_upstream == 0, f"the upstream connection is still open {freed_after:.1f} s after the client stalled"
    assert read < size, "the client could still read the whole response: it was never cut off"


async def test_connections_above_max_connections_get_503_and_close(upstream: RunningServer, tmp_path: Path) -> None:
    with gateway_process(config(upstream, {"max_connections": 20}), tmp_path) as gw:
        held = [await anyio.connect_tcp("127.0.0.1", gw.port) for _ in range(20)]
        try:
            for stream in held:  # each has been accepted and served, and stays open
                await stream.send(b"GET /status/204 HTTP/1.1\r\nHost: example.test\r\n\r\n")
                with anyio.fail_after(5):
                    assert (await stream.receive()).startswith(b"HTTP/1.1 204 ")
            async with await anyio.connect_tcp("127.0.0.1", gw.port) as extra:
                await extra.send(b"GET /echo HTTP/1.1\r\nHost: example.test\r\n\r\n")
                answer = b""
                with anyio.move_on_after(5), contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        answer += await extra.receive()
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:80]
        finally:
            for stream in held:
                await stream.aclose()
        # Below the limit again (once the gateway has seen the closes): served.
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as client:
            with anyio.fail_after(5):
                while (await client.get("/echo")).status_code != 200:  # noqa: ASYNC110 - polling the server
                    await anyio.sleep(0.05)


def refused_in_log(log: str) -> list[int]:
    """The sizes of the bursts the gateway reported refusing (one ``refused N connection(s)`` line each)."""
    return [int(n) for n in re.findall(r"refused (\d+) connection\(s\) over max_connections=5", log)]


async def test_refused_connections_are_logged_once_per_burst(upstream: RunningServer, tmp_path: Path) -> None:
    """Above max_connections each refusal is a 503, but the log gets one line when refusing starts and one with
    the count when the burst is over, not a line per connection (a flood would otherwise flood the log too)."""
    burst = 30
    with gateway_process(config(upstream, {"max_connections": 5}), tmp_path) as gw:
        held = [await anyio.connect_tcp("127.0.0.1", gw.port) for _ in range(5)]
        try:
            for stream in held:  # accepted and served: the worker is at its limit
                await stream.send(b"GET /status/204 HTTP/1.1\r\nHost: example.test\r\n\r\n")
                with anyio.fail_after(5):
                    assert (await stream.receive()).startswith(b"HTTP/1.1 204 ")
            statuses: list[bytes] = []

            async def refused() -> None:
                async with await anyio.connect_tcp("127.0.0.1", gw.port) as extra:
                    answer = b""
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        while True:
                            answer += await extra.receive()
                    statuses.append(answer[:12])

            for round_ in (1, 2):
                with anyio.fail_after(10 + SLACK):
                    async with anyio.create_task_group() as tg:
                        for _ in range(burst):
                            tg.start_soon(refused)
                # The burst is reported once the next sweep sees no new refusal.
                await wait_until(lambda r=round_: sum(refused_in_log(gw.log())) == r * burst, limit=5 + SLACK)
        finally:
            for stream in held:
                await stream.aclose()
        log = gw.log()
    assert statuses == [b"HTTP/1.1 503"] * (2 * burst)
    sizes = refused_in_log(log)
    starts = log.count("refusing connections: this worker has 5 client connections (max_connections)")
    figure(f"max_connections: 2 bursts of {burst} refusals logged as {starts} start line(s) and bursts of {sizes}")
    assert starts == len(sizes), "each burst is one start line and one line with its size"
    assert 2 <= len(sizes) <= 4, f"{2 * burst} refusals in two bursts were logged as {len(sizes)} bursts"


async def test_last_request_allowed_on_a_connection_says_connection_close(
    upstream: RunningServer, tmp_path: Path
) -> None:
    with gateway_process(config(upstream, {"max_requests_per_connection": 3}), tmp_path) as gw:
        async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
            raw = b""
            for n in range(1, 4):
                await stream.send(b"GET /status/200 HTTP/1.1\r\nHost: example.test\r\n\r\n")
                with anyio.fail_after(5):
                    while len(split_responses(raw)[0]) < n:
                        raw += await stream.receive()
            closed = False
            with anyio.move_on_after(2 + SLACK):
                try:
                    while True:
                        raw += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    closed = True
    responses, _ = split_responses(raw)
    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.header(b"connection") for r in responses] == [[], [], [b"close"]]
    assert closed


async def test_idle_connection_is_closed_quietly_after_keepalive_timeout(
    upstream: RunningServer, tmp_path: Path
) -> None:
    keepalive = 1.0  # well under Uvicorn's fixed 5 s, so the deadline below tells the two apart
    with gateway_process(config(upstream, {"keepalive_timeout": keepalive}), tmp_path) as gw:
        async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
            await stream.send(b"GET /status/204 HTTP/1.1\r\nHost: example.test\r\n\r\n")
            with anyio.fail_after(5):
                first = await stream.receive()
            idle_since = time.monotonic()
            after = b""
            with anyio.move_on_after(keepalive + 1 + 2) as scope:
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    while True:
                        after += await stream.receive()
    assert first.startswith(b"HTTP/1.1 204 ")
    assert not scope.cancelled_caught, f"still open {time.monotonic() - idle_since:.1f} s after the last response"
    assert after == b"", "an idle keep-alive connection is closed without a response"


# -- issue 17 item 14: slow clients hold no upstream connection ---------------------------------------------------

CROWD = 530  # more than the pool's 512 connections (the adversarial run's figure)
GET_BOUND = 1.0  # the issue's bound for a normal GET under either load...
GET_ALLOWANCE = 1.0  # ...plus this much for the loaded two-core machine (measured figures: build/slow-clients.md)


async def _sample_upstream(upstream: RunningServer, peak: list[int], stop: anyio.Event) -> None:
    """Keep ``peak[0]`` at the most upstream connections seen, every 20 ms, until ``stop``."""
    while not stop.is_set():
        peak[0] = max(peak[0], upstream_connections(upstream))
        with anyio.move_on_after(0.02):
            await stop.wait()


async def test_issue17_14_530_slow_request_bodies_take_no_upstream_connection_and_normal_gets_answered_within_1s(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    # No minimum body rate: the trickling clients are never cut, so only the prebuffer can keep the pool free.
    settings = config(upstream, {"min_request_body_rate": None, "request_prebuffer_bytes": 65536})
    with gateway_process(settings, tmp_path) as gw:
        await normal_requests(gw.url, 10, limit=5)  # warm up: the pool and the code paths are in place
        rss_before = gw.rss_bytes()
        peak = [0]
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            head = b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 2000\r\n\r\nfirst bytes"
            crowd = await start_crowd(tg, gw.port, CROWD, head, b"b", (0.5, 1.0))
            tg.start_soon(_sample_upstream, upstream, peak, stop)
            latencies: list[float] = []
            failures = await normal_requests(gw.url, 40, limit=5, latencies=latencies)
            rss_after = gw.rss_bytes()
            still_open = len(crowd.still_open())
            stop.set()
            tg.cancel_scope.cancel()
    latencies.sort()
    per_client = (rss_after - rss_before) / CROWD
    figure(
        f"slow bodies without a rate limit: {CROWD} uploads trickling 1 byte per 0.5-1 s, {still_open} still sending; "
        f"upstream connections at most {peak[0]}; 40 normal GETs: median {latencies[len(latencies) // 2]:.3f} s, "
        f"max {latencies[-1]:.3f} s; gateway RSS {per_client / 1024:.1f} KiB per slow upload"
    )
    assert not failures, failures
    assert still_open == CROWD, "the slow uploads were cut: this test is about them holding nothing while they last"
    assert peak[0] <= 20, f"{peak[0]} upstream connections while {CROWD} bodies trickled in (normal GETs use 10)"
    assert latencies[-1] < GET_BOUND + GET_ALLOWANCE, f"a normal GET took {latencies[-1]:.2f} s"
    assert "/upload" not in {r["raw_path"] for r in recorder.requests}


async def _never_read(port: int, target: bytes, sockets: list[socket.socket]) -> None:
    """Connect with a small receive buffer, send one GET, and never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window it offers stays small
    sock.setblocking(False)
    sockets.append(sock)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, b"GET %s HTTP/1.1\r\nHost: example.test\r\n\r\n" % target)


async def test_issue17_14_530_clients_that_never_read_hold_no_upstream_connection_and_normal_gets_within_1s(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    size = 4 << 20  # past what the kernel's buffers take for a client offering a 4 KiB window (2 MiB is not)
    pool = {"max_keepalive_connections": 10}
    settings = config(
        upstream, {"response_buffer_memory_bytes": 65536, "response_buffer_file_bytes": 4 << 20}, limits=pool
    )
    sockets: list[socket.socket] = []
    with gateway_process(settings, tmp_path) as gw:
        await normal_requests(gw.url, 10, limit=5)
        rss_before = gw.rss_bytes()
        try:
            limiter = anyio.CapacityLimiter(100)

            async def one() -> None:
                async with limiter:
                    await _never_read(gw.port, b"/big?size=%d" % size, sockets)

            started = time.monotonic()
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for _ in range(CROWD):
                        tg.start_soon(one)
            # Every response is read from the upstream and its connection back in the pool (which keeps 10 idle):
            # the clients still hold theirs (send_timeout is 60 s), the upstream does not wait for them.
            await wait_until(lambda: recorder.requests and len(recorder.requests) >= CROWD + 10, limit=30)
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: upstream_connections(upstream) <= 10, limit=10 + SLACK)
            released_after = time.monotonic() - started
            left_upstream = upstream_connections(upstream)
            rss_after = gw.rss_bytes()
            latencies: list[float] = []
            failures = await normal_requests(gw.url, 40, limit=5, latencies=latencies)
            unread = sum(_unread_bytes(sock) for sock in sockets)
        finally:
            for sock in sockets:
                sock.close()
    latencies.sort()
    per_client = (rss_after - rss_before) / CROWD
    figure(
        f"clients that never read: {CROWD} GETs of {size >> 20} MiB offering a 4 KiB window; upstream connections "
        f"down to {left_upstream} after {released_after:.1f} s; 40 normal GETs: median "
        f"{latencies[len(latencies) // 2]:.3f} s, max {latencies[-1]:.3f} s; gateway RSS "
        f"{per_client / 1024:.1f} KiB per non-reading client; {unread / CROWD / 1024:.0f} KiB each waiting in the "
        "client's socket"
    )
    assert not failures, failures
    assert left_upstream <= 10, f"{left_upstream} upstream connections still open: the non-readers hold them"
    assert latencies[-1] < GET_BOUND + GET_ALLOWANCE, f"a normal GET took {latencies[-1]:.2f} s"


def _unread_bytes(sock: socket.socket) -> int:
    """What is waiting in ``sock``'s receive queue (FIONREAD)."""
    import fcntl
    import termios

    buffer = bytearray(4)
    with contextlib.suppress(OSError):
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buffer)
    return int.from_bytes(buffer, "little")


def _pattern(size: int) -> bytes:
    """``size`` bytes in which every 8-byte word is its own index: any piece out of order or lost shows."""
    return b"".join(b"%08x" % i for i in range(size // 8 + 1))[:size]


async def test_a_slow_reader_gets_the_whole_body_in_order_after_the_upstream_connection_went_back_to_the_pool(
    tmp_path: Path,
) -> None:
    """Read ahead through memory and the temporary file: the upstream finishes and its connection is reused while
    the client has read almost nothing; the client then reads every byte, in order, and the upstream's trailers
    after them (kept when the connection went back to the pool)."""
    size = 6 << 20
    body = _pattern(size)
    connections: list[int] = []
    finished = anyio.Event()

    async def serve(stream: anyio.abc.SocketStream) -> None:
        connections.append(1)
        received = b""
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                while True:
                    while b"\r\n\r\n" not in received:
                        received += await stream.receive()
                    head, _, received = received.partition(b"\r\n\r\n")
                    if head.startswith(b"GET /big "):
                        await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        for at in range(0, size, 65536):
                            await stream.send(b"%x\r\n%s\r\n" % (len(body[at : at + 65536]), body[at : at + 65536]))
                        await stream.send(b"0\r\nGrpc-Status: 0\r\n\r\n")
                        finished.set()
                    else:
                        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        admin = f"127.0.0.1:{free_port()}"
        settings = {
            "server": {"log_level": "warning", "response_buffer_memory_bytes": 65536},
            "upstreams": {"default": {"url": f"http://127.0.0.1:{port}"}},
            "routes": [{"prefix": "/", "upstream": "default"}],
            "admin": {"listen": admin},
        }
        with gateway_process(settings, tmp_path) as gw:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            try:
                await loop.sock_connect(sock, ("127.0.0.1", gw.port))
                await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: example.test\r\nTE: trailers\r\n\r\n")
                with anyio.fail_after(10 + SLACK):
                    await finished.wait()  # the upstream sent it all while the client read nothing
                async with httpx.AsyncClient(timeout=5) as client:
                    # The gateway has read it all and the connection is idle in the pool (GET /upstreams)...
                    deadline = time.monotonic() + 10 + SLACK
                    while (pool := await _pool_state(client, admin)) != (0, 1):
                        assert time.monotonic() < deadline, f"pool (active, idle) stayed {pool}"
                        await anyio.sleep(0.05)
                    # ...and serves the next request.
                    assert (await client.get(f"{gw.url}/other")).status_code == 200
                reused = len(connections) == 1  # the pool handed the /big connection to /other
                received = b""
                with anyio.fail_after(30 + SLACK):
                    while not received.endswith(b"\r\n0\r\ngrpc-status: 0\r\n\r\n"):
                        data = await loop.sock_recv(sock, 1 << 20)
                        assert data, "the gateway closed before the whole body"
                        received += data
            finally:
                sock.close()
            log = gw.log()
        tg.cancel_scope.cancel()
    head, _, chunked = received.partition(b"\r\n\r\n")
    got = dechunk(chunked)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert len(got) == size
    assert got == body, "the body came back out of order or changed"
    assert reused, f"the upstream opened {len(connections)} connections: /big's was not back in the pool"
    assert "Traceback" not in log


async def _pool_state(client: httpx.AsyncClient, admin: str) -> tuple[int, int]:
    """(active, idle) connections of the one upstream target, from the admin API."""
    target = (await client.get(f"http://{admin}/upstreams")).json()["upstreams"][0]["targets"][0]
    return target["active"], target["idle"]


async def test_a_client_that_leaves_during_read_ahead_frees_everything(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    """A client behind on a response that does not fit the read-ahead leaves: the upstream request is aborted and
    the gateway logs no error; the next request is served."""
    with gateway_process(config(upstream, {"response_buffer_file_bytes": 1 << 20}), tmp_path) as gw:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, ("127.0.0.1", gw.port))
            await loop.sock_sendall(sock, b"GET /big?size=%d HTTP/1.1\r\nHost: example.test\r\n\r\n" % (64 << 20))
            with anyio.fail_after(5):
                await recorder.started.wait()
            # Let the spool fill (memory, then the 1 MiB file; backpressure holds the rest). What is asserted holds
            # whenever the client leaves; this only makes the read-ahead path the likely one.
            await anyio.sleep(0.5)
        finally:
            sock.close()
        await wait_until(lambda: upstream_connections(upstream) == 0, limit=5 + SLACK)
        async with httpx.AsyncClient(base_url=gw.url, timeout=5) as client:
            assert (await client.get("/echo")).status_code == 200
        log = gw.log()
    assert "Traceback" not in log
    assert "ERROR" not in log


async def test_request_prebuffer_bytes_0_streams_a_body_from_its_first_byte(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    """The key through ``fastgate run``: with 0, the upstream gets the first bytes of a body still arriving (the
    default holds them back: test_issue17_14_530_slow_request_bodies_take_no_upstream_connection...)."""
    with gateway_process(config(upstream, {"request_prebuffer_bytes": 0}), tmp_path) as gw:
        async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
            await stream.send(b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 20\r\n\r\nfirst")
            await wait_until(lambda: recorder.first_body_byte_at is not None, limit=5 + SLACK)
            await stream.send(b"-and-the-rest-15")
            received = b""
            with anyio.fail_after(5 + SLACK):
                while b"\r\n\r\n" not in received:
                    received += await stream.receive()
    assert received.startswith(b"HTTP/1.1 200 ")
    assert recorder.last()["body_size"] == 20
