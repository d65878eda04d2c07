"""Lingering close on a fake transport: after an answer that leaves request bytes unread, FIN, then read and drop.

Closing a socket with unread input makes the kernel send RST, which can destroy an early answer (413, 401) before a
client that reads only after sending has read it. The same behaviour over real sockets, with httpx and a raw client,
is in tests/proxy/test_lingering.py; here the protocol's own rules, with deadlines driven by ``check(now)``.
"""

from __future__ import annotations

import asyncio

import pytest

from fastgate._types import Receive, Scope, Send
from fastgate.serving.limits import ServerLimits

from .fake import Echo, connect, settle, status_of

pytestmark = pytest.mark.anyio

LIMITS = ServerLimits(lingering_time=30.0, lingering_timeout=5.0, max_lingering_bytes=1024 * 1024)
UPLOAD = b"POST /up HTTP/1.1\r\nHost: x\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000
CHUNKED = b"POST /up HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 1000 + b"\r\n"


class EarlyAnswer:
    """Answers 413 without reading the body, as the gateway does for a body over its limit or a missing key."""

    def __init__(self, status: int = 413) -> None:
        self.status = status
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.requests += 1
        body = b'{"error":"payload_too_large"}'
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Held(EarlyAnswer):
    """An EarlyAnswer that answers only once ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.release.wait()
        await super().__call__(scope, receive, send)


async def test_an_answer_before_the_body_ends_is_followed_by_fin_and_the_rest_is_read_and_dropped() -> None:
    app = EarlyAnswer()
    protocol, transport = connect(app, LIMITS)
    protocol.data_received(UPLOAD)
    await settle()
    assert status_of(transport.written) == 413
    assert transport.eof and not transport.ended  # FIN after the answer; the socket stays open
    assert transport.reading
    answered = len(transport.written)
    # What follows is dropped unparsed: a body that is not HTTP at all, then what would be a new request.
    for _ in range(50):
        protocol.data_received(b"\xff" * 1000)
    protocol.data_received(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    assert len(transport.written) == answered and app.requests == 1
    assert not transport.ended


async def test_a_chunked_body_cut_short_by_the_answer_lingers_too() -> None:
    protocol, transport = connect(EarlyAnswer(401), LIMITS)
    protocol.data_received(CHUNKED)
    await settle()
    assert status_of(transport.written) == 401
    assert transport.eof and not transport.ended
    protocol.data_received(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
    assert not transport.ended


async def test_the_socket_closes_after_lingering_timeout_without_a_byte() -> None:
    protocol, transport = connect(EarlyAnswer(), LIMITS)
    protocol.data_received(UPLOAD)
    await settle()
    start = protocol.loop.time()
    protocol.check(start + 4.5)
    assert not transport.ended
    protocol.check(start + 5.5)
    assert transport.ended and not transport.aborted  # close(): an answer still buffered would go out first


async def test_a_client_that_keeps_sending_is_closed_after_lingering_time() -> None:
    protocol, transport = connect(EarlyAnswer(), LIMITS)
    protocol.data_received(UPLOAD)
    await settle()
    start = protocol.loop.time()
    protocol.data_received(b"x" * 10)  # a trickle: every byte restarts the silence deadline ...
    assert protocol._linger_idle >= start + LIMITS.lingering_timeout
    protocol.check(start + 4.0)
    assert not transport.ended
    protocol._linger_idle = start + 60  # (as if the trickle had gone on for a minute)
    protocol.check(start + 29.5)
    assert not transport.ended
    protocol.check(start + 30.5)  # ... but not the whole linger's
    assert transport.ended


async def test_after_max_lingering_bytes_the_socket_is_closed_at_once() -> None:
    limits = ServerLimits(max_lingering_bytes=64 * 1024)
    protocol, transport = connect(EarlyAnswer(), limits)
    protocol.data_received(UPLOAD)
    await settle()
    sent = 0
    while not transport.ended and sent < 1 << 20:
        protocol.data_received(b"x" * 4096)
        sent += 4096
    assert transport.ended
    assert 64 * 1024 < sent <= 64 * 1024 + 4096


async def test_nothing_is_kept_while_lingering() -> None:
    # Discarded bytes go nowhere: not to the request's body pieces, not to the parser (whose callbacks would keep them).
    protocol, transport = connect(EarlyAnswer(), LIMITS)
    protocol.data_received(UPLOAD)
    await settle()
    cycle = protocol._parsing
    assert cycle is not None
    before = (cycle.body_bytes, cycle.buffered, len(cycle.chunks))
    for _ in range(200):
        protocol.data_received(b"x" * 4096)
    assert (cycle.body_bytes, cycle.buffered, len(cycle.chunks)) == before
    assert not transport.ended


async def test_lingering_time_zero_closes_at_once() -> None:
    protocol, transport = connect(EarlyAnswer(), ServerLimits(lingering_time=0))
    protocol.data_received(UPLOAD)
    await settle()
    assert status_of(transport.written) == 413
    assert transport.ended and not transport.eof


async def test_a_finished_request_answered_with_connection_close_is_closed_at_once() -> None:
    # The normal path: nothing unread, so no linger (the close is immediate, as before).
    protocol, transport = connect(Echo(), LIMITS)
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\nab")
    await settle()
    assert status_of(transport.written) == 200
    assert transport.ended and not transport.eof


async def test_a_kept_alive_connection_does_not_linger() -> None:
    protocol, transport = connect(Echo(), LIMITS)
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\n\r\nab")
    await settle()
    assert status_of(transport.written) == 200
    assert not transport.closed and protocol._linger_until == 0.0


async def test_a_graceful_shutdown_bounds_the_linger_by_lingering_timeout() -> None:
    # Uvicorn waits for every connection to close before the process exits: a linger that starts after the
    # shutdown began is bounded by lingering_timeout in all, not lingering_time.
    app = Held()
    protocol, transport = connect(app, LIMITS)
    protocol.data_received(UPLOAD)
    await settle()
    protocol.shutdown()  # the request is being answered: it ends first, then the connection
    assert not transport.closed
    app.release.set()
    await settle()
    assert status_of(transport.written) == 413 and transport.eof
    assert protocol._linger_until <= protocol.loop.time() + LIMITS.lingering_timeout
    protocol._linger_idle = protocol._linger_until + 60  # (as if the client kept sending)
    protocol.check(protocol.loop.time() + LIMITS.lingering_timeout + 0.5)
    assert transport.ended


async def test_shutdown_ends_a_linger_at_once() -> None:
    protocol, transport = connect(EarlyAnswer(), LIMITS)
    protocol.data_received(UPLOAD)
    await settle()
    assert not transport.ended
    protocol.shutdown()
    assert transport.ended


async def test_a_body_too_slow_is_answered_408_and_the_rest_of_it_read_and_dropped() -> None:
    # The server's own answer to a request whose body was arriving lingers by reading, like the app's early answers.
    limits = ServerLimits(min_body_rate=1000, body_grace_period=1, lingering_timeout=5)
    protocol, transport = connect(Echo(), limits)
    protocol.data_received(b"POST /up HTTP/1.1\r\nHost: x\r\ncontent-length: 100000\r\n\r\n" + b"x" * 10)
    await settle()
    now = protocol.loop.time()
    protocol.check(now + 10)
    assert status_of(transport.written) == 408
    assert transport.eof and transport.reading and not transport.ended
    protocol.data_received(b"x" * 4096)  # dropped (the linger's clock started when the 408 went, about `now`)
    protocol.check(now + 4)
    assert not transport.ended
    protocol.check(protocol.loop.time() + 5.5)
    assert transport.ended and not transport.aborted


async def test_an_error_in_a_head_reads_nothing_more() -> None:
    # A hostile head costs no further reads: FIN, reading stays paused, the socket is cut a moment later.
    protocol, transport = connect(Echo(), ServerLimits(max_header_bytes=4096))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 1000)
    assert status_of(transport.written) == 431
    assert transport.eof and not transport.reading and not transport.ended
    protocol.check(protocol.loop.time() + 1.5)
    assert transport.aborted
