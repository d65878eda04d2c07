"""The leak soak: its load, its flapping upstream, the gateway's figures and the report.

Shared by tests/hostile/test_soak.py (a short run in the default suite) and bench/soak.py (minutes, for
measurement). Nothing here is collected by pytest.

How a soak runs (``run_soak``)
------------------------------
1. A normal upstream (tests/upstream_app.py under Uvicorn, in this process) and a :class:`FlappingUpstream` (a raw
   server on one fixed port that cycles up -> reset -> stall -> up -> down, resetting every connection it holds at
   each change) sit behind ``fastgate run CONFIG`` as a real subprocess.
2. Warm-up: the same load as the soak, so that the heaps, the pools' free lists and the default executor reach
   their working size before the baseline is taken.
3. Settle, then the baseline: poll until the gateway holds no client and no upstream socket and its descriptor
   count has stopped moving (bounded by a deadline; never a bare sleep).
4. The soak: ``clients`` concurrent connections, each doing 1-3 requests (small GET, streamed GET, large GET,
   upload; 3 in 10 of them through the flapping upstream), about a third of the requests aborted at a random
   moment: mid-head, mid-upload, mid-download (half of the aborts with a TCP reset). One connection in ten is a
   WebSocket session to the normal upstream's echo instead, a third of them dropped mid-session without a close
   frame. The figures are sampled every ``sample_every`` seconds meanwhile.
5. Settle again: first until each pool holds at most ``max_keepalive_connections`` upstream sockets (the idle ones
   it may keep), then until ``keepalive_expiry`` has emptied them and every figure is back within its tolerance.
6. The log must hold no ``Traceback``, ``LocalProtocolError`` or ``Exception in ASGI``.

Tasks cannot be counted from outside the process; a leaked task holds a socket, a descriptor or memory, or fails
into the log, so descriptors, sockets, RSS and the log stand in for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httptools
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.hostile.support import gateway_process
from tests.rawhttp import raw_exchange
from tests.servers import GatewayProcess, run_server
from tests.upstream_app import Recorder, UpstreamApp
from tests.ws_upstream import WebSocketRecorder, WebSocketUpstreamApp

FORBIDDEN = ("Traceback", "LocalProtocolError", "Exception in ASGI")
MIB = 1024 * 1024

# Pool limits of both upstreams: a short expiry so that "back to zero" is seen within seconds.
MAX_KEEPALIVE = 8
KEEPALIVE_EXPIRY = 1.5
FLAP_TIMEOUT = 1.0  # read, write and stream_idle towards the flapping upstream

# Tolerances of the settled figures against the baseline (see test_soak.py for why each is what it is).
FD_SLACK = 3
THREAD_SLACK = 2
RSS_SLACK = 8 * MIB

LARGE = 1 * MIB
UPLOAD = 256 * 1024
FLAP_UPLOAD = 16 * 1024

# A client aborting mid-download goes after a random number of response bytes up to this (head included): within
# the body for the large download, within the head or the first chunks for the others.
ABORT_WITHIN = {"large": LARGE, "small": 300, "stream": 150}

Stream = anyio.abc.SocketStream


# --- the flapping upstream --------------------------------------------------------------------------------------


def _fixed_port() -> int:
    """A free port below the ephemeral range: no client socket of ours can take it while the upstream is down."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randint(max(1025, low - 12000), low - 1)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _reset_on_close(stream: Stream) -> None:
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Requests:
    """httptools callbacks: counts complete requests and remembers the target of the last head."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.heads: list[bytes] = []
        self.complete = 0
        self._url = b""

    def on_message_begin(self) -> None:
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_headers_complete(self) -> None:
        self.heads.append(self._url)

    def on_message_complete(self) -> None:
        self.complete += 1


class FlappingUpstream:
    """A raw HTTP/1.1 upstream on one fixed port whose mode changes every ``period`` seconds.

    up      answers every request: ``ok`` (Content-Length), or for a target containing ``stream`` a chunked body of
            five pieces 50 ms apart; keep-alive
    reset   reads a request head, then resets the connection
    stall   reads a request head and never answers (the gateway's read timeout ends it)
    down    not listening at all: connection refused

    Every change of mode resets all connections it holds (stopping a real server would close them too).
    """

    MODES = ("up", "reset", "up", "stall", "up", "down")

    def __init__(self, period: float = 1.5) -> None:
        self.period = period
        self.port = _fixed_port()
        self.mode = "down"
        self.changes: Counter[str] = Counter()
        self.bind_failures = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        while True:
            for mode in self.MODES:
                self.mode = mode
                self.changes[mode] += 1
                listener = None if mode == "down" else await self._listen()
                if not started:
                    task_status.started()
                    started = True
                if listener is None:
                    await anyio.sleep(self.period)
                    continue
                async with listener, anyio.create_task_group() as tg:
                    tg.start_soon(listener.serve, self._serve)
                    await anyio.sleep(self.period)
                    tg.cancel_scope.cancel()

    async def _listen(self) -> anyio.abc.SocketListener | None:
        for _ in range(20):  # bounded: a port in use stays "down" for this period
            try:
                return await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
            except OSError:
                await anyio.sleep(0.05)
        self.bind_failures += 1
        return None

    async def _serve(self, stream: Stream) -> None:
        _reset_on_close(stream)  # a mode change cuts every connection with a reset
        requests = _Requests()
        answered = 0
        async with stream:
            with contextlib.suppress(
                anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, httptools.HttpParserError
            ):
                while True:
                    data = await stream.receive()
                    heads = len(requests.heads)
                    requests.parser.feed_data(data)
                    if self.mode == "reset" and len(requests.heads) > heads:
                        return
                    if self.mode == "stall" and len(requests.heads) > heads:
                        await anyio.sleep_forever()
                    while answered < requests.complete:
                        target = requests.heads[answered]
                        answered += 1
                        if b"stream" in target:
                            await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                            for i in range(5):
                                await anyio.sleep(0.05)
                                await stream.send(b"8\r\npiece %02d\r\n" % i)
                            await stream.send(b"0\r\n\r\n")
                        else:
                            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


# --- the gateway's figures --------------------------------------------------------------------------------------

_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


@dataclass(frozen=True)
class Figures:
    """What the gateway process holds at one moment, read from /proc."""

    at: float
    fds: int
    threads: int
    rss: int
    client_sockets: int  # accepted connections (local port = the gateway's), the listener not counted
    main_sockets: int  # connections to the normal upstream
    flap_sockets: int  # connections to the flapping upstream
    states: tuple[tuple[str, int], ...] = ()  # TCP states of all its non-listening sockets, for the report

    def as_row(self) -> dict[str, str]:
        return {
            "open fds": str(self.fds),
            "threads": str(self.threads),
            "RSS (MiB)": f"{self.rss / MIB:.1f}",
            "client sockets": str(self.client_sockets),
            "sockets to normal upstream": str(self.main_sockets),
            "sockets to flapping upstream": str(self.flap_sockets),
        }


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    return inodes


def _status_field(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def figures(pid: int, gateway_port: int, main_port: int, flap_port: int) -> Figures:
    inodes = _socket_inodes(pid)
    client = main = flap = 0
    states: Counter[str] = Counter()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) < 10 or cols[9] not in inodes or cols[3] == "0A":
                    continue
                local_port = int(cols[1].rsplit(":", 1)[1], 16)
                remote_port = int(cols[2].rsplit(":", 1)[1], 16)
                states[_TCP_STATES.get(cols[3], cols[3])] += 1
                if local_port == gateway_port:
                    client += 1
                elif remote_port == main_port:
                    main += 1
                elif remote_port == flap_port:
                    flap += 1
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    return Figures(
        at=time.monotonic(),
        fds=fds,
        threads=_status_field(pid, "Threads"),
        rss=_status_field(pid, "VmRSS") * 1024,
        client_sockets=client,
        main_sockets=main,
        flap_sockets=flap,
        states=tuple(sorted(states.items())),
    )


# --- the load ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    method: bytes
    target: bytes
    body: int = 0  # request body size
    flapping: bool = False
    expect_size: int | None = None  # body size of a complete 200


KINDS = [
    Kind("small", b"GET", b"/echo"),
    Kind("stream", b"GET", b"/stream?n=6&delay=0.02"),
    Kind("large", b"GET", b"/big?size=%d" % LARGE, expect_size=LARGE),
    Kind("upload", b"POST", b"/upload", body=UPLOAD),
    Kind("flap-get", b"GET", b"/flap/x", flapping=True),
    Kind("flap-stream", b"GET", b"/flap/stream", flapping=True),
    Kind("flap-post", b"POST", b"/flap/x", body=FLAP_UPLOAD, flapping=True),
]
WEIGHTS = [3, 2, 1, 1, 1, 1, 1]  # flapping kinds: 3 of 10
WEBSOCKET_SHARE = 0.1  # of the client connections, a WebSocket session instead of 1-3 HTTP requests


@dataclass
class LoadResult:
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "kind: outcome"
    failures: list[str] = field(default_factory=list)  # what a well-behaved client should never see

    @property
    def aborted(self) -> int:
        return sum(n for k, n in self.outcomes.items() if ": aborted" in k)

    def merge(self, other: LoadResult) -> None:
        self.requests += other.requests
        self.outcomes.update(other.outcomes)
        self.failures.extend(other.failures)


class _Gone(Exception):
    """The gateway closed the connection."""


class _Response:
    """Reads one response from a buffered stream; counts body bytes without keeping large bodies."""

    def __init__(self, stream: Stream, buffer: bytearray) -> None:
        self.stream = stream
        self.buffer = buffer
        self.status = 0
        self.close = False
        self.body = bytearray()  # kept only up to 64 KiB
        self.size = 0
        self.received = 0  # bytes of this response seen so far, head included

    async def _more(self) -> None:
        try:
            data = await self.stream.receive(262144)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise _Gone from exc
        self.buffer += data

    async def read(self, stop_after: int | None = None) -> bool:
        """Read the whole response (True), or stop once ``stop_after`` bytes are in (False)."""
        while b"\r\n\r\n" not in self.buffer:
            if stop_after is not None and len(self.buffer) >= stop_after:
                return False
            await self._more()
        end = self.buffer.index(b"\r\n\r\n") + 4
        lines = bytes(self.buffer[: end - 4]).split(b"\r\n")
        del self.buffer[:end]
        self.received = end
        self.status = int(lines[0].split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip().lower() for k, _, v in (line.partition(b":") for line in lines[1:])}
        self.close = headers.get(b"connection") == b"close"
        if b"content-length" in headers:
            left = int(headers[b"content-length"])
            while left > 0:
                if not self.buffer:
                    if stop_after is not None and self.received >= stop_after:
                        return False
                    await self._more()
                take = min(left, len(self.buffer))
                self._keep(self.buffer[:take])
                del self.buffer[:take]
                left -= take
            return True
        if headers.get(b"transfer-encoding") == b"chunked":
            return await self._chunked(stop_after)
        self.close = True
        while True:  # close-delimited
            if stop_after is not None and self.received >= stop_after:
                return False
            try:
                await self._more()
            except _Gone:
                self._keep(self.buffer)
                self.buffer.clear()
                return True
            self._keep(self.buffer)
            self.buffer.clear()

    async def _chunked(self, stop_after: int | None) -> bool:
        while True:
            while b"\r\n" not in self.buffer:
                if stop_after is not None and self.received + len(self.buffer) >= stop_after:
                    return False
                await self._more()
            line_end = self.buffer.index(b"\r\n")
            size = int(bytes(self.buffer[:line_end]).split(b";")[0], 16)
            del self.buffer[: line_end + 2]
            self.received += line_end + 2
            while len(self.buffer) < size + 2:
                if stop_after is not None and self.received + len(self.buffer) >= stop_after:
                    return False
                await self._more()
            if size == 0:
                del self.buffer[:2]  # no trailers from our upstreams
                return True
            self._keep(self.buffer[:size])
            del self.buffer[: size + 2]
            self.received += 2

    def _keep(self, data: bytearray | bytes) -> None:
        self.size += len(data)
        self.received += len(data)
        if len(self.body) < 65536:
            self.body += data[: 65536 - len(self.body)]


def _request_bytes(kind: Kind) -> tuple[bytes, bytes]:
    head = b"%s %s HTTP/1.1\r\nHost: soak.test\r\n" % (kind.method, kind.target)
    if kind.body:
        head += b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n" % kind.body
    return head + b"\r\n", b"b" * kind.body


async def _send_body(stream: Stream, body: bytes, upto: int) -> None:
    piece = 65536
    for start in range(0, upto, piece):
        await stream.send(body[start : min(upto, start + piece)])


async def _one_request(
    stream: Stream, buffer: bytearray, kind: Kind, abort: str | None, rng: random.Random
) -> tuple[str, bool]:
    """One exchange on an open connection; returns (outcome, connection still usable)."""
    head, body = _request_bytes(kind)
    if abort == "mid-head":
        await stream.send(head[: rng.randint(1, len(head) - 2)])
        await anyio.sleep(rng.uniform(0, 0.2))
        return "aborted mid-head", False
    response = _Response(stream, buffer)
    if abort == "mid-upload":
        await stream.send(head)
        await _send_body(stream, body, rng.randint(0, len(body) - 1))
        await anyio.sleep(rng.uniform(0, 0.2))
        return "aborted mid-upload", False
    async with anyio.create_task_group() as tg:
        # The body goes up while the answer is read: an upstream may answer (an error) before taking it all.
        async def upload() -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await _send_body(stream, body, len(body))

        await stream.send(head)
        if body:
            tg.start_soon(upload)
        hint = ABORT_WITHIN.get(kind.name, 80)
        try:
            done = await response.read(stop_after=rng.randint(1, hint) if abort == "mid-download" else None)
        except _Gone:
            gone = True
        else:
            gone = False
        tg.cancel_scope.cancel()
    if gone:
        raise _Gone
    if not done:
        if rng.random() < 0.5:
            await anyio.sleep(rng.uniform(0, 0.3))  # stop reading for a while (backpressure), then go
        return "aborted mid-download", False
    return _judge(kind, response), not response.close


def _judge(kind: Kind, response: _Response) -> str:
    if kind.flapping:
        return str(response.status)
    if response.status != 200:
        return f"unexpected {response.status}"
    if kind.expect_size is not None and response.size != kind.expect_size:
        return f"unexpected size {response.size}"
    if kind.name == "upload" and json.loads(bytes(response.body)).get("size") != kind.body:
        return "unexpected upload size"
    return "200"


async def _connection(port: int, rng: random.Random, abort_share: float, result: LoadResult) -> None:
    """One client connection: 1-3 requests, any of which may be aborted (then the connection goes with it)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        buffer = bytearray()
        for _ in range(rng.randint(1, 3)):
            kind = rng.choices(KINDS, WEIGHTS)[0]
            abort: str | None = None
            if rng.random() < abort_share:
                abort = rng.choice(["mid-head", "mid-download"] + (["mid-upload"] * 2 if kind.body else []))
                if rng.random() < 0.5:
                    _reset_on_close(stream)
            result.requests += 1
            try:
                with anyio.fail_after(15):
                    outcome, usable = await _one_request(stream, buffer, kind, abort, rng)
            except _Gone:
                outcome, usable = "closed by gateway", False
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                outcome, usable = f"send failed ({type(exc).__name__})", False
            except TimeoutError:
                outcome, usable = "no answer in 15 s", False
            result.outcomes[f"{kind.name}: {outcome}"] += 1
            if not kind.flapping and abort is None and outcome != "200":
                result.failures.append(f"{kind.name}: {outcome}")
            if not usable:
                return


async def _websocket_session(port: int, rng: random.Random, abort_share: float, result: LoadResult) -> None:
    """A WebSocket session to the normal upstream's echo: 1-6 messages (some up to 200 KB), then a clean close, or,
    for about a third, the TCP connection dropped without a close frame after a random number of them."""
    result.requests += 1
    count = rng.randint(1, 6)
    cut = rng.randrange(count) if rng.random() < abort_share else None
    outcome = "closed cleanly"
    try:
        with anyio.fail_after(15):
            async with websocket_connect(
                f"ws://127.0.0.1:{port}/ws/echo", ping_interval=None, compression=None, close_timeout=5
            ) as ws:
                for i in range(count):
                    if i == cut:
                        ws.transport.abort()
                        outcome = "aborted mid-session"
                        break
                    message = f"message {i}" if rng.random() < 0.7 else f"big:{rng.randint(1, 200_000)}"
                    await ws.send(message)
                    reply = await ws.recv()
                    size = int(message[4:]) if message.startswith("big:") else None
                    if (size is None and reply != message) or (size is not None and len(reply) != size):
                        outcome = "wrong echo"
                        break
    except ConnectionClosed as exc:
        if outcome != "aborted mid-session":
            outcome = f"closed by gateway ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
    except (InvalidHandshake, OSError) as exc:
        outcome = f"failed ({type(exc).__name__})"
    except TimeoutError:
        outcome = "no answer in 15 s"
    result.outcomes[f"websocket: {outcome}"] += 1
    if outcome not in ("closed cleanly", "aborted mid-session"):
        result.failures.append(f"websocket: {outcome}")


async def run_load(
    port: int, *, duration: float, clients: int, seed: int, abort_share: float = 1 / 3, max_requests: int = 1_000_000
) -> LoadResult:
    """``clients`` concurrent connections, each replaced when it ends, until ``duration`` or ``max_requests``."""
    result = LoadResult()
    deadline = time.monotonic() + duration

    async def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        while time.monotonic() < deadline and result.requests < max_requests:
            try:
                if rng.random() < WEBSOCKET_SHARE:
                    await _websocket_session(port, rng, abort_share, result)
                else:
                    await _connection(port, rng, abort_share, result)
            except OSError as exc:  # connect refused or reset: the gateway is in trouble
                result.failures.append(f"connect: {type(exc).__name__}: {exc}")
                await anyio.sleep(0.1)

    async with anyio.create_task_group() as tg:
        for number in range(clients):
            tg.start_soon(client, number)
    return result


# --- the whole soak ---------------------------------------------------------------------------------------------


def gateway_config(main_url: str, flap_url: str, log_level: str = "info") -> dict[str, Any]:
    limits = {"max_connections": 64, "max_keepalive_connections": MAX_KEEPALIVE, "keepalive_expiry": KEEPALIVE_EXPIRY}
    flap_timeouts = {"connect": 1, "read": FLAP_TIMEOUT, "write": FLAP_TIMEOUT, "stream_idle": FLAP_TIMEOUT, "pool": 2}
    return {
        "server": {"log_level": log_level, "header_timeout": 5, "graceful_timeout": 5},
        "upstreams": {
            "main": {"url": main_url, "limits": limits, "timeouts": {"connect": 2, "read": 10, "pool": 5}},
            "flap": {"url": flap_url, "limits": limits, "timeouts": flap_timeouts},
        },
        "routes": [
            {"prefix": "/flap", "upstream": "flap", "strip_prefix": True},
            {"prefix": "/", "upstream": "main"},
        ],
    }


@dataclass
class SoakReport:
    duration: float
    clients: int
    baseline: Figures
    peak: Figures
    after_load: Figures
    settled: Figures
    settle_seconds: float
    warmup: LoadResult
    load: LoadResult
    timeline: list[Figures]
    log_problems: list[str]
    log_lines: int
    flap_modes: Counter[str]
    limits: dict[str, str]

    def problems(self) -> list[str]:
        """Every way this soak falls short of "back at the baseline, clean log"; empty when it passed."""
        base, settled, load = self.baseline, self.settled, self.load
        found = list(self.log_problems[:20])
        found += [f"well-behaved request failed: {f}" for f in load.failures[:20]]
        if settled.client_sockets or settled.main_sockets or settled.flap_sockets:
            found.append(f"sockets left after {self.settle_seconds:.1f} s: {settled}")
        if settled.fds > base.fds + FD_SLACK:
            found.append(f"descriptors: {base.fds} at the baseline, {settled.fds} settled")
        if settled.threads > base.threads + THREAD_SLACK:
            found.append(f"threads: {base.threads} at the baseline, {settled.threads} settled")
        if settled.rss > base.rss + RSS_SLACK:
            found.append(f"RSS: {base.rss / MIB:.1f} MiB at the baseline, {settled.rss / MIB:.1f} MiB settled")
        return found

    def table(self) -> str:
        names = list(self.baseline.as_row())
        cols = [
            ("baseline", self.baseline.as_row()),
            ("peak under load", self.peak.as_row()),
            ("load stopped", self.after_load.as_row()),
            (f"settled (+{self.settle_seconds:.1f} s)", self.settled.as_row()),
        ]
        header = "| figure | " + " | ".join(c for c, _ in cols) + " | allowed when settled |"
        lines = [header, "|" + "---|" * (len(cols) + 2)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(row[name] for _, row in cols) + f" | {self.limits[name]} |")
        return "\n".join(lines)

    def markdown(self, title: str) -> str:
        load = self.load
        outcomes = "\n".join(f"| {k} | {n} |" for k, n in sorted(load.outcomes.items()))
        timeline = "\n".join(
            f"| {f.at - self.timeline[0].at:.0f} | {f.fds} | {f.threads} | {f.rss / MIB:.1f} | {f.client_sockets} "
            f"| {f.main_sockets} | {f.flap_sockets} |"
            for f in self.timeline
        )
        problems = "\n".join(f"    {p}" for p in self.log_problems) or "none"
        return f"""# {title}

Written on {time.strftime("%Y-%m-%d %H:%M:%S")}: {self.duration:.0f} s of load from {self.clients} concurrent
connections after a warm-up of {self.warmup.requests} requests; {load.requests} requests, {load.aborted} of them
aborted by the client on purpose; the flapping upstream changed mode {sum(self.flap_modes.values())} times
({dict(self.flap_modes)}). Pools: max_keepalive_connections {MAX_KEEPALIVE}, keepalive_expiry {KEEPALIVE_EXPIRY} s.

{self.table()}

TCP states of the gateway's sockets when settled: {dict(self.settled.states) or "none"}; at the end of the load:
{dict(self.after_load.states) or "none"}.

Gateway log: {self.log_lines} lines; `Traceback` / `LocalProtocolError` / `Exception in ASGI`: {problems}

Failures seen by well-behaved clients of the normal upstream: {len(load.failures)}
{chr(10).join("    " + f for f in load.failures[:20])}

| outcome | requests |
|---|---|
{outcomes}

Timeline (seconds from the start of the load):

| s | fds | threads | RSS MiB | client sockets | to normal | to flapping |
|---|---|---|---|---|---|---|
{timeline}
"""


def settled_within(baseline: Figures, now: Figures) -> bool:
    return (
        now.client_sockets == 0
        and now.main_sockets == 0
        and now.flap_sockets == 0
        and now.fds <= baseline.fds + FD_SLACK
        and now.threads <= baseline.threads + THREAD_SLACK
    )


def allowed() -> dict[str, str]:
    return {
        "open fds": f"baseline + {FD_SLACK}",
        "threads": f"baseline + {THREAD_SLACK}",
        "RSS (MiB)": f"baseline + {RSS_SLACK // MIB}",
        "client sockets": "0",
        "sockets to normal upstream": f"0 (at most {MAX_KEEPALIVE} idle before keepalive_expiry)",
        "sockets to flapping upstream": f"0 (at most {MAX_KEEPALIVE} idle before keepalive_expiry)",
    }


async def _poll(read: Any, done: Any, limit: float, interval: float = 0.1) -> tuple[Figures, bool]:
    """Read figures every ``interval`` until ``done(figures)`` or ``limit`` seconds; returns the last and whether."""
    deadline = time.monotonic() + limit
    while True:
        now = read()
        if done(now):
            return now, True
        if time.monotonic() >= deadline:
            return now, False
        await anyio.sleep(interval)


async def settle_baseline(read: Any, limit: float = 20) -> Figures:
    """No client or upstream socket, and the same descriptor count on five reads in a row (0.2 s apart)."""
    history: list[int] = []

    def quiet(now: Figures) -> bool:
        history.append(now.fds)
        idle = now.client_sockets == 0 and now.main_sockets == 0 and now.flap_sockets == 0
        return idle and len(history) >= 5 and len(set(history[-5:])) == 1

    now, ok = await _poll(read, quiet, limit, interval=0.2)
    if not ok:
        raise AssertionError(f"the gateway did not settle before the soak within {limit} s: {now}")
    return now


@contextlib.contextmanager
def soak_gateway(main_url: str, flap_url: str, tmp_path: Path) -> Iterator[GatewayProcess]:
    with gateway_process(gateway_config(main_url, flap_url), tmp_path) as gateway:
        yield gateway


class _Forgetful(list[Any]):
    def append(self, item: Any) -> None:
        pass


@contextlib.asynccontextmanager
async def soak_upstreams(period: float = 1.5) -> AsyncIterator[tuple[str, FlappingUpstream]]:
    flapping = FlappingUpstream(period)
    # A soak of minutes must not grow this process's memory: the recorders forget what they are told.
    http_app = UpstreamApp(Recorder(requests=_Forgetful()))
    ws_app = WebSocketUpstreamApp(WebSocketRecorder(handshakes=_Forgetful(), closes=_Forgetful()))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await (ws_app if scope["type"] == "websocket" else http_app)(scope, receive, send)

    async with run_server(app, backlog=4096, ws="websockets-sansio") as main, anyio.create_task_group() as tg:
        await tg.start(flapping.run)
        yield main.url, flapping
        tg.cancel_scope.cancel()


async def run_soak(
    tmp_path: Path,
    *,
    duration: float,
    warmup: float,
    clients: int,
    seed: int,
    sample_every: float = 1.0,
    settle_limit: float = 20.0,
) -> SoakReport:
    # The normal upstream's app keeps a record of every request: a fresh Recorder per soak, bounded by the run.
    async with soak_upstreams() as (main_url, flapping):
        main_port = int(main_url.rsplit(":", 1)[1])
        with soak_gateway(main_url, flapping.url, tmp_path) as gateway:
            pid = gateway.process.pid

            def read() -> Figures:
                return figures(pid, gateway.port, main_port, flapping.port)

            warm = await run_load(gateway.port, duration=warmup, clients=clients, seed=seed)
            baseline = await settle_baseline(read)
            timeline = [baseline]

            async def sample(stop: anyio.Event) -> None:
                while not stop.is_set():
                    with anyio.move_on_after(sample_every):
                        await stop.wait()
                    timeline.append(read())

            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(sample, stop)
                load = await run_load(gateway.port, duration=duration, clients=clients, seed=seed + 1)
                stop.set()
            after_load = read()
            started = time.monotonic()
            # First the pools may keep their idle connections, then keepalive_expiry closes them.
            await _poll(read, lambda f: f.main_sockets <= MAX_KEEPALIVE and f.flap_sockets <= MAX_KEEPALIVE, 10)
            settled, _ = await _poll(read, lambda f: settled_within(baseline, f), settle_limit)
            settle_seconds = time.monotonic() - started
            timeline.append(settled)
            alive = gateway.process.poll() is None
            # Still serving: one plain request once everything was measured.
            last_status = 0
            if alive:
                request = b"GET /echo HTTP/1.1\r\nHost: soak.test\r\nConnection: close\r\n\r\n"
                last_status = (await raw_exchange(gateway.port, request, limit=10)).status
        log = gateway.log()
    problems = [line for line in log.splitlines() if any(word in line for word in FORBIDDEN)]
    if not alive:
        problems.append("the gateway process had exited before the end of the soak")
    if alive and last_status != 200:
        problems.append(f"a request after the soak was answered {last_status}")
    peak = Figures(
        at=0,
        fds=max(f.fds for f in timeline),
        threads=max(f.threads for f in timeline),
        rss=max(f.rss for f in timeline),
        client_sockets=max(f.client_sockets for f in timeline),
        main_sockets=max(f.main_sockets for f in timeline),
        flap_sockets=max(f.flap_sockets for f in timeline),
    )
    return SoakReport(
        duration=duration,
        clients=clients,
        baseline=baseline,
        peak=peak,
        after_load=after_load,
        settled=settled,
        settle_seconds=settle_seconds,
        warmup=warm,
        load=load,
        timeline=timeline,
        log_problems=problems,
        log_lines=len(log.splitlines()),
        flap_modes=flapping.changes,
        limits=allowed(),
    )
