"""``proxy/buffering.prebuffer``: what is read before an upstream connection is taken, without sockets (the
downstream's ``read_body`` here reads a list of ASGI-style messages; the behaviour through a real gateway is in
test_http_forwarding.py and tests/hostile/test_slow_clients.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import pytest

from fastgate.exceptions import ClientDisconnected, RequestTooLarge
from fastgate.proxy.buffering import prebuffer

pytestmark = pytest.mark.anyio


def receiver(*messages: dict[str, Any]) -> Any:
    queue = list(messages)
    taken: list[dict[str, Any]] = []

    async def read_body() -> tuple[bytes, bool]:
        taken.append(queue.pop(0))
        if taken[-1]["type"] == "http.disconnect":
            raise ClientDisconnected("client disconnected during the request body")
        return taken[-1]["body"], taken[-1]["more_body"]

    read_body.taken = taken  # type: ignore[attr-defined]
    return read_body


def piece(body: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_a_body_that_ends_within_the_bound_is_read_whole() -> None:
    receive = receiver(piece(b"abc"), piece(b"def", more=False))
    first = await prebuffer(receive, 100)
    assert (first.complete, first.length) == (True, 6)
    assert [p async for p in first.then()] == [b"abc", b"def"]


async def test_reading_stops_once_the_bound_is_reached_and_the_rest_follows() -> None:
    receive = receiver(piece(b"a" * 60), piece(b"b" * 60), piece(b"c" * 10), piece(b"d", more=False))
    first = await prebuffer(receive, 100)
    assert (first.complete, first.length) == (False, 120)
    assert len(receive.taken) == 2  # nothing read past the bound

    async def rest() -> AsyncGenerator[bytes]:
        while True:
            body, more = await receive()
            yield body
            if not more:
                return

    assert b"".join([p async for p in first.then(rest())]) == b"a" * 60 + b"b" * 60 + b"c" * 10 + b"d"


async def test_a_bound_of_zero_reads_nothing() -> None:
    receive = receiver(piece(b"abc", more=False))
    first = await prebuffer(receive, 0)
    assert (first.complete, first.length, receive.taken) == (False, 0, [])


async def test_a_client_that_leaves_raises_client_disconnected() -> None:
    with pytest.raises(ClientDisconnected):
        await prebuffer(receiver(piece(b"abc"), {"type": "http.disconnect"}), 100)


async def test_a_body_past_max_bytes_raises_request_too_large_at_once() -> None:
    receive = receiver(piece(b"a" * 8), piece(b"b" * 8), piece(b"c", more=False))
    with pytest.raises(RequestTooLarge):
        await prebuffer(receive, 100, max_bytes=10)
    assert len(receive.taken) == 2


async def test_then_closes_the_rest_when_closed_early() -> None:
    closed = []

    async def rest() -> AsyncGenerator[bytes]:
        try:
            yield b"x"
            yield b"y"
        finally:
            closed.append(True)

    first = await prebuffer(receiver(piece(b"a" * 10)), 5)
    body = first.then(rest())
    assert [await body.__anext__(), await body.__anext__()] == [b"a" * 10, b"x"]
    await body.aclose()
    assert closed == [True]
