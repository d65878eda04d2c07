"""Broken upstreams against the real gateway: one table row per way an upstream can break HTTP/1.1.

Each case runs a fresh gateway (Uvicorn with fastgate's protocol, the fastgate transport, short timeouts) in front
of a raw upstream (tests/misbehaving.py) that misbehaves on its first connection only and answers ``ok`` on every
other one. For each case:

* the client gets what the row expects: a clean 502/504, an aborted (incomplete) response, or, where the upstream
  was within its rights, the intact response; never a second response smuggled in, never a hang past the
  configured timeout (bounded at timeout + 5 s);
* the pool recovers: nothing stays busy (``stats()``), the broken connection carried no other request, and
  the next request succeeds.

The observed rows go to ``build/hostile/broken-upstreams.txt`` and to stdout (``pytest -s``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest

from tests.conftest import GatewayFactory
from tests.misbehaving import raw_upstream, read_head, reset
from tests.servers import wait_until

pytestmark = pytest.mark.anyio

TIMEOUT = 1.0  # read, write and stream_idle for every case
BOUND = TIMEOUT + 5  # no case may take longer than this, whatever it expects
TIMEOUTS = {"connect": 2, "read": TIMEOUT, "write": TIMEOUT, "stream_idle": TIMEOUT, "pool": 2}

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED"
TABLE = Path(__file__).resolve().parents[2] / "build" / "hostile" / "broken-upstreams.txt"

Stream = anyio.abc.SocketStream
Misbehaviour = Callable[[Stream], Awaitable[None]]
Client = Callable[[int], Awaitable[str]]


# --- the misbehaviours, each run on the first upstream connection -------------------------------------------


def answer(raw: bytes) -> Misbehaviour:
    async def misbehave(stream: Stream) -> None:
        await read_head(stream)
        await stream.send(raw)
        await read_head(stream)  # keep the connection open: is anything else ever sent on it?

    return misbehave


async def switch_then_smuggle(stream: Stream) -> None:
    await read_head(stream)
    await stream.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    with anyio.move_on_after(0.5):
        await read_head(stream)
    await stream.send(SMUGGLED)
    await read_head(stream)


async def endless_head(stream: Stream) -> None:
    await read_head(stream)
    await stream.send(b"HTTP/1.1 200 OK\r\n")
    for _ in range(100_000):  # ~100 MB on offer; the gateway gives up at 64 KiB
        await stream.send(b"X-Filler: " + b"a" * 1000 + b"\r\n")


async def chunked_without_end(stream: Stream) -> None:
    await read_head(stream)
    await stream.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await anyio.sleep(BOUND * 2)  # the last chunk never comes


async def reset_mid_body(stream: Stream) -> None:
    await read_head(stream)
    await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nhello")
    await anyio.sleep(0.05)
    reset(stream)  # the close that follows is a TCP RST


async def accept_never_read(stream: Stream) -> None:
    await anyio.sleep(BOUND * 2)


async def close_after_request_head(stream: Stream) -> None:
    await read_head(stream)


async def close_after_response_head(stream: Stream) -> None:
    await read_head(stream)
    await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")


async def trickle_head(stream: Stream) -> None:
    await read_head(stream)
    for byte in OK:  # one byte a second: the read timeout cuts it long before the end
        await stream.send(bytes([byte]))
        await anyio.sleep(1)


def send_then(body: bytes, misbehave: Misbehaviour) -> Misbehaviour:
    """Read the request head, send ``body``, then go on with ``misbehave`` (``nothing``: close at once)."""

    async def run(stream: Stream) -> None:
        await read_head(stream)
        await stream.send(body)
        await misbehave(stream)

    return run


async def nothing(stream: Stream) -> None:
    return None


# --- clients ----------------------------------------------------------------------------------------------------


async def get(port: int) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=BOUND * 2) as client:
        try:
            response = await client.get("/case")
        except (httpx.RemoteProtocolError, httpx.ReadError):
            return "aborted"
    if response.headers.get("content-type") == "application/json":
        return f"{response.status_code} {response.json()['error']}"
    return f"{response.status_code} body={response.content!r}"


async def post_large_body(port: int) -> str:
    """Upload far more than socket buffers hold while reading the answer, as a browser would."""
    size = 64 * 1024 * 1024
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(b"POST /case HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)

        async def upload() -> None:
            piece = b"x" * 65536
            try:
                for _ in range(size // len(piece)):
                    await stream.send(piece)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

        data = b""
        async with anyio.create_task_group() as tg:
            tg.start_soon(upload)
            try:
                while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
            tg.cancel_scope.cancel()
    if not data.startswith(b"HTTP/1.1 "):
        return "aborted"
    status = data.split(b" ", 2)[1].decode()
    body = data.partition(b"\r\n\r\n")[2]
    code = body.split(b'"error":"', 1)[1].split(b'"', 1)[0].decode() if b'"error":"' in body else "?"
    return f"{status} {code}"


@dataclass(frozen=True)
class Case:
    name: str
    misbehave: Misbehaviour
    expected: tuple[str, ...]  # any of these observations passes
    client: Client = get
    reusable: bool = False  # the upstream kept to HTTP: its first connection may serve the next request

    def __str__(self) -> str:
        return self.name


P502 = "502 upstream_protocol_error"
T504 = "504 upstream_timeout"

CASES = [
    Case("malformed status line", answer(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok"), (P502,)),
    Case(
        "Content-Length and Transfer-Encoding together",
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        (P502,),
    ),
    Case(
        "body shorter than Content-Length, then close",
        send_then(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", nothing),
        ("aborted",),
    ),
    Case(
        "body longer than Content-Length",
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA BYTES THAT ARE NOT A RESPONSE"),
        ("200 body=b'ok'",),
    ),
    Case(
        "bare CR injected in a header value", answer(b"HTTP/1.1 200 OK\r\nX-A: 1\rSet-Cookie: evil=1\r\n\r\n"), (P502,)
    ),
    Case(
        "bare LF injected in a header value", answer(b"HTTP/1.1 200 OK\r\nX-A: 1\nSet-Cookie: evil=1\r\n\r\n"), (P502,)
    ),
    Case(
        "100 and 103 before the final response",
        send_then(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
            nothing,
        ),
        ("200 body=b'final'",),
        reusable=True,
    ),
    Case("101 to a plain request, then a response", switch_then_smuggle, (P502,)),
    Case("endless header stream", endless_head, (P502,)),
    Case("chunked body that never ends (stalls)", chunked_without_end, ("aborted",)),
    Case("reset mid-body", reset_mid_body, ("aborted",)),
    Case("accept, never read (large upload)", accept_never_read, (T504,), client=post_large_body),
    Case("accept, never answer (GET)", accept_never_read, (T504,)),
    Case("close after the request head", close_after_request_head, (P502,)),
    Case("close after the response head", close_after_response_head, ("aborted",)),
    Case("response head at 1 byte/s", trickle_head, (T504,)),
    Case(
        "unknown transfer coding, body to close",
        send_then(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nuntil close", nothing),
        ("200 body=b'until close'",),
    ),
]

_rows: list[tuple[str, str, str, float]] = []


@pytest.fixture(scope="module", autouse=True)
def _table() -> Iterator[None]:
    yield
    if not _rows:
        return
    width = max(len(name) for name, *_ in _rows)
    lines = [f"{'case':<{width}}  {'expected':<30}  {'observed':<30}  seconds"]
    lines += [f"{name:<{width}}  {exp:<30}  {obs:<30}  {took:.2f}" for name, exp, obs, took in _rows]
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_broken_upstream(gateway_for: GatewayFactory, case: Case) -> None:
    received: dict[int, bytearray] = {}

    async def handler(stream: Stream, number: int) -> None:
        if number == 1:
            await case.misbehave(stream)
            if not case.reusable:
                return
        while True:
            await read_head(stream)
            await stream.send(OK)

    async with raw_upstream(handler, received) as (url, connections), gateway_for(url, timeouts=TIMEOUTS) as gw:
        pool = gw.app.transports["default"].pool
        started = time.monotonic()
        with anyio.fail_after(BOUND):
            observed = await case.client(gw.port)
        took = time.monotonic() - started
        _rows.append((case.name, " or ".join(case.expected), observed, took))
        assert observed in case.expected

        await wait_until(lambda: pool.stats().busy == 0)  # the pool recovers
        async with httpx.AsyncClient(base_url=gw.url, timeout=BOUND) as client:
            after = await client.get("/next")
        assert (after.status_code, after.text) == (200, "ok")  # never a smuggled or stale answer
        assert pool.stats().busy == 0
    if not case.reusable:
        first = bytes(received.get(1, b""))
        assert first.count(b" HTTP/1.1\r\n") <= 1, "the broken connection carried another request"
        assert len(connections) >= 2
