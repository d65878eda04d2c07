"""Request buffering: read a whole request body before an upstream connection is taken (a route's choice).

Streaming is the default: a body goes upstream as it arrives, so a slow client holds an upstream connection for as
long as it takes to send (bounded by the server's minimum body rate). A route with ``request_buffering: true``
reads the body first, as nginx does by default (``proxy_request_buffering on``): up to ``memory_bytes`` in memory,
the rest in an anonymous temporary file, so neither a slow client nor a large body costs an upstream connection or
unbounded memory. The body then goes upstream with a Content-Length, at the upstream's speed.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncGenerator
from typing import IO

import anyio.to_thread

from .._types import Receive
from ..exceptions import ClientDisconnected, RequestTooLarge

_PIECE = 256 * 1024


class BufferedBody:
    """A request body held in memory and, past ``memory_bytes``, in a temporary file.

    >>> body = await BufferedBody.read(receive, memory_bytes=1 << 20)
    >>> body.length, [piece async for piece in body.pieces()]
    """

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        self.length = 0
        self._memory: list[bytes] = []
        self._file: IO[bytes] | None = None

    @classmethod
    async def read(cls, receive: Receive, *, memory_bytes: int, max_bytes: int | None = None) -> BufferedBody:
        """Read every body message from ``receive``; raises ClientDisconnected if the client leaves first.

        ``max_bytes``: raise :class:`RequestTooLarge` as soon as the body passes it (nothing more is kept).
        """
        body = cls(memory_bytes)
        try:
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected("client disconnected during the request body")
                more = message.get("more_body", False)
                chunk: bytes = message.get("body", b"")
                if chunk:
                    if max_bytes is not None and body.length + len(chunk) > max_bytes:
                        raise RequestTooLarge(f"request body grew past the limit of {max_bytes} bytes")
                    await body._add(chunk)
        except BaseException:
            body.close()
            raise
        return body

    async def _add(self, chunk: bytes) -> None:
        self.length += len(chunk)
        if self._file is None and self.length <= self.memory_bytes:
            self._memory.append(chunk)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile()
        await anyio.to_thread.run_sync(self._file.write, chunk)

    async def pieces(self) -> AsyncGenerator[bytes]:
        """The body again, from the start: memory first, then the file in 256 KiB pieces."""
        try:
            for piece in self._memory:
                yield piece
            file = self._file
            if file is not None:
                await anyio.to_thread.run_sync(file.seek, 0)
                while piece := await anyio.to_thread.run_sync(file.read, _PIECE):
                    yield piece
        finally:
            self.close()

    def close(self) -> None:
        self._memory = []
        if self._file is not None:
            self._file.close()
            self._file = None
