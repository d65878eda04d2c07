"""Request buffering: read a request body, or its beginning, before an upstream connection is taken.

By default a body is *prebuffered* (:func:`prebuffer`, ``server.request_prebuffer_bytes``, 64 KiB): its first bytes
are read before an upstream connection is taken. A body that ends within the bound (almost every API request) goes
upstream in one piece (framed as the client framed it: chunked stays chunked, so request trailers keep a place to
go), and a client that trickles it in holds no upstream connection meanwhile. A longer body is streamed once the
bound's worth has arrived: the prebuffered bytes first, then the rest as it comes (a slow client then holds a
connection, bounded by the server's minimum body rate). nginx reads the whole body by default (up to
``client_max_body_size``, 1 MiB); Envoy streams from the first byte; the bound keeps streaming for large uploads and
costs a small body nothing.

A route with ``request_buffering: true`` reads the whole body first (:class:`BufferedBody`), as nginx does by
default (``proxy_request_buffering on``): up to ``memory_bytes`` in memory, the rest in an anonymous temporary
file, so neither a slow client nor a large body costs an upstream connection or unbounded memory. The body then
goes upstream with a Content-Length, at the upstream's speed.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO

import anyio.to_thread

from ..exceptions import RequestTooLarge

_PIECE = 256 * 1024

# A downstream's ``read_body``: the next body piece and whether more follows; raises ClientDisconnected.
ReadBody = Callable[[], Awaitable[tuple[bytes, bool]]]


def _check_limit(length: int, max_bytes: int | None) -> None:
    """Raise :class:`RequestTooLarge` when a body of ``length`` bytes is past ``max_bytes`` (None: no limit)."""
    if max_bytes is not None and length > max_bytes:
        raise RequestTooLarge(f"request body grew past the limit of {max_bytes} bytes")


class BufferedBody:
    """A request body held in memory and, past ``memory_bytes``, in a temporary file.

    >>> body = await BufferedBody.read(downstream.read_body, memory_bytes=1 << 20)
    >>> body.length, [piece async for piece in body.pieces()]
    """

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        self.length = 0
        self._memory: list[bytes] = []
        self._file: IO[bytes] | None = None

    @classmethod
    async def read(cls, read: ReadBody, *, memory_bytes: int, max_bytes: int | None = None) -> BufferedBody:
        """Read every body piece from ``read``; raises ClientDisconnected if the client leaves first.

        ``max_bytes``: raise :class:`RequestTooLarge` as soon as the body passes it (nothing more is kept).
        """
        body = cls(memory_bytes)
        try:
            more = True
            while more:
                chunk, more = await read()
                if chunk:
                    _check_limit(body.length + len(chunk), max_bytes)
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


@dataclass(slots=True)
class Prebuffered:
    """The first bytes of a request body: ``pieces`` as they came, ``length`` in all, ``complete`` when that is the
    whole body."""

    pieces: list[bytes] = field(default_factory=list)
    length: int = 0
    complete: bool = False

    async def then(self, rest: AsyncIterator[bytes] | None = None) -> AsyncGenerator[bytes]:
        """The prebuffered pieces, then ``rest`` (the body still to come), if any."""
        pieces, self.pieces = self.pieces, []
        for piece in pieces:
            yield piece
        if rest is not None:
            try:
                async for piece in rest:
                    yield piece
            finally:
                aclose = getattr(rest, "aclose", None)
                if aclose is not None:
                    await aclose()


async def prebuffer(read: ReadBody, bound: int, max_bytes: int | None = None) -> Prebuffered:
    """Read body pieces from ``read`` until the body ends or at least ``bound`` bytes have come.

    Raises :class:`ClientDisconnected` if the client leaves first, and :class:`RequestTooLarge` once the body
    passes ``max_bytes`` (counted here for a body whose length the server's framing does not hold).
    """
    body = Prebuffered()
    more = True
    while more and body.length < bound:
        chunk, more = await read()
        if chunk:
            body.length += len(chunk)
            _check_limit(body.length, max_bytes)
            body.pieces.append(chunk)
    body.complete = not more
    return body
