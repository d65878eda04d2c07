"""``max_body_bytes``: request bodies over the limit are answered 413 and never reach the upstream whole.

A declared Content-Length over the limit is refused before anything else happens (no plugin runs, no upstream
connection is taken). A body of unknown length (chunked) is counted as it streams, never buffered: the piece that
passes the limit raises :class:`RequestTooLarge` inside the transport's send, which aborts the upstream request
(its connection is dropped, so the upstream sees the request cut), and the client gets 413. A Content-Length body
within the limit needs no count: the server's framing holds it to its declared length.

The response cannot have started while the body is still being read, since a body is read only until the upstream
answers (the transport stops sending when the response head arrives, and the connection is not kept alive).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

from ..exceptions import ClientDisconnected, RequestTooLarge


class _Scope(Protocol):
    disconnected: bool

    def watch(self) -> None: ...


def declared_too_large(length: int | None, limit: int) -> RequestTooLarge | None:
    """The 413 for a Content-Length over ``limit`` (None for no body, a chunked one, or one within the limit)."""
    if length is not None and length > limit:
        return RequestTooLarge(f"request body of {length} bytes is over the limit of {limit} bytes")
    return None


async def request_body(
    read: Callable[[], Awaitable[tuple[bytes, bool]]], scope: _Scope, limit: int | None = None
) -> AsyncGenerator[bytes]:
    """The request body from ``read`` (a downstream's ``read_body``); with ``limit``, :class:`RequestTooLarge` once
    more than that came.

    ``scope.watch()`` is called with the last piece (the body is read: a disconnect watcher may take ``receive``).
    """
    seen = 0
    more = True
    while more:
        try:
            chunk, more = await read()
        except ClientDisconnected:
            scope.disconnected = True
            raise
        if limit is not None:
            seen += len(chunk)
            if seen > limit:
                raise RequestTooLarge(f"request body grew past the limit of {limit} bytes")
        if not more:
            scope.watch()
        yield chunk
