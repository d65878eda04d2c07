"""Response read-ahead: a client that falls behind does not hold its upstream connection.

How this works
--------------
The relay (``proxy/http.py``) sends each body piece as the upstream gives it; as long as the client keeps up, that
is all it does (no copy, no task, no buffer: one attribute test per piece). Once the client's transport holds more
than its high-water mark (``Downstream.write_paused``), the relay hands the rest of the response to
:func:`relay_ahead`: the upstream is then read as fast as it gives, into a :class:`ResponseSpool`, while one pump
task sends the spool to the client at the client's pace. When the upstream's body ends, the upstream response is
released (its connection goes back to the pool) and only the pump is left, draining the spool. nginx's
``proxy_buffering`` does the same, always; here it engages only for a client that is behind.

Where a piece goes is :func:`placement`'s decision (pure, tested without sockets):

* **memory** while the spool's file is empty and its memory holds under ``memory_bytes`` (an empty spool takes one
  piece whatever its size, so the relay never stalls on a piece bigger than the bound);
* **the temporary file** once memory is full and the client has taken nothing for ``SPILL_AFTER`` seconds (a fast
  client that is only momentarily behind never costs a file write), and for every piece after one went there, so
  the order holds, while the file stays under ``file_bytes``;
* otherwise **wait**: backpressure, as without read-ahead: the upstream waits for the client.

Memory per client that falls behind is therefore at most ``memory_bytes`` plus one upstream piece (at most 256 KiB,
one socket read) in the spool, on top of the client transport's buffer; disk at most ``file_bytes``. The file is
anonymous (``tempfile.TemporaryFile``), written and read with ``os.pwrite`` / ``os.pread`` on the event loop (as
nginx without ``aio``: the page cache takes 256 KiB in tens of µs, and no thread can outlive a cancelled exchange
while it holds the descriptor), and rewound whenever the pump has read all of it. A client that disconnects, or is
cut by ``send_timeout``, cancels the exchange as before; the spool is closed with it.

Only under fastgate's own server protocol: another ASGI server's ``send`` does not say whether it would wait, so
there the relay streams as before (the upstream waits for the client).
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import monotonic
from typing import IO, Any

import anyio

from ..upstream.transport import UpstreamResponse
from .downstream import Downstream

MEMORY, FILE, WAIT = "memory", "file", "wait"
SPILL_AFTER = 0.05  # seconds the client has taken nothing before pieces go to the file
_PIECE = 64 * 1024  # what the pump reads from the file at a time (the client transport takes one at a time)


@dataclass(frozen=True, slots=True)
class ReadAheadLimits:
    """``server.response_buffer_memory_bytes`` and ``server.response_buffer_file_bytes``."""

    memory_bytes: int
    file_bytes: int


def placement(
    size: int,
    limits: ReadAheadLimits,
    *,
    memory_used: int,
    file_held: int,
    file_end: int,
    stalled_for: float,
) -> str:
    """Where a piece of ``size`` bytes goes: ``MEMORY``, ``FILE`` or ``WAIT``.

    ``memory_used``: bytes in memory; ``file_held``: bytes in the file not yet sent; ``file_end``: how far the file
    has been written since it was last rewound (its size on disk); ``stalled_for``: seconds the client has been
    sent nothing while a piece was waiting for it (0 when nothing waits).
    """
    if file_held == 0:
        if memory_used == 0 or memory_used + size <= limits.memory_bytes:
            return MEMORY
        if stalled_for < SPILL_AFTER:
            return WAIT
    if file_end + size <= limits.file_bytes:
        return FILE
    return WAIT


class ResponseSpool:
    """The part of a response read from the upstream and not yet sent: memory first, then a temporary file.

    One producer (``put``, ``end``) and one consumer (``take``); ``put`` waits while :func:`placement` says so.
    Only ``put`` moves the file's end (and rewinds it), only ``take`` its start, and neither suspends in between.
    """

    def __init__(self, limits: ReadAheadLimits, clock: Callable[[], float] = monotonic) -> None:
        self.limits = limits
        self.received = 0  # bytes put, in all
        self.peak_memory = 0
        self.peak_file = 0
        self._clock = clock
        self._memory: deque[bytes] = deque()
        self._memory_used = 0
        self._file: IO[bytes] | None = None
        self._file_start = 0  # the next byte the consumer reads; only the consumer moves it
        self._file_end = 0  # where the producer writes next; only the producer moves it (and rewinds the file)
        self._ended = False
        self._waiting_since = 0.0  # when the consumer began waiting on the client (0: it is not)
        self._changed = anyio.Event()

    @property
    def empty(self) -> bool:
        return not self._memory and self._file_start == self._file_end

    @property
    def idle(self) -> bool:
        """Empty, and the consumer is not waiting for the client: everything put has been sent."""
        return not self._waiting_since and not self._memory and self._file_start == self._file_end

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def sending(self, busy: bool) -> None:
        """The consumer is (``busy``) or is no longer waiting for the client to take a piece."""
        self._waiting_since = self._clock() if busy else 0.0
        if not busy:
            self._notify()

    async def put(self, data: bytes) -> None:
        """Keep ``data``, waiting while the spool is full (backpressure)."""
        self.received += len(data)
        while True:
            if self._file_start == self._file_end:
                self._file_start = self._file_end = 0  # the pump read it all: rewind
            since = self._waiting_since
            where = placement(
                len(data),
                self.limits,
                memory_used=self._memory_used,
                file_held=self._file_end - self._file_start,
                file_end=self._file_end,
                stalled_for=self._clock() - since if since else 0.0,
            )
            if where == MEMORY:
                self._memory.append(data)
                self._memory_used += len(data)
                self.peak_memory = max(self.peak_memory, self._memory_used)
                self._notify()
                return
            if where == FILE:
                if self._file is None:
                    self._file = tempfile.TemporaryFile()
                os.pwrite(self._file.fileno(), data, self._file_end)
                self._file_end += len(data)
                self.peak_file = max(self.peak_file, self._file_end)
                self._notify()
                return
            changed = self._changed
            stalled_for = self._clock() - since if since else -1.0
            if 0.0 <= stalled_for < SPILL_AFTER and self._file_start == self._file_end and self._fits_file(len(data)):
                # Memory is full and the client behind, not yet for long: look again when it takes something, or
                # when it has been stalled long enough for the file.
                with anyio.move_on_after(SPILL_AFTER - stalled_for + 0.001):
                    await changed.wait()
            else:
                await changed.wait()  # only the client taking something can make room

    def _fits_file(self, size: int) -> bool:
        return size <= self.limits.file_bytes

    def end(self) -> None:
        """The upstream's body is complete: ``take`` returns ``b""`` once the spool is empty."""
        self._ended = True
        self._notify()

    async def take(self) -> bytes:
        """The next piece to send, waiting for one; ``b""`` at the end."""
        while True:
            if self._memory:
                data = self._memory.popleft()
                self._memory_used -= len(data)
                self._notify()
                return data
            start, end = self._file_start, self._file_end
            if start < end and self._file is not None:
                data = os.pread(self._file.fileno(), min(end - start, _PIECE), start)
                self._file_start = start + len(data)
                self._notify()
                return data
            if self._ended:
                return b""
            await self._changed.wait()

    def close(self) -> None:
        self._memory.clear()
        self._memory_used = 0
        if self._file is not None:
            self._file.close()
            self._file = None


async def relay_ahead(
    response: UpstreamResponse,
    client: Downstream,
    first: bytes,
    spool: ResponseSpool,
    release: Callable[[], Awaitable[Any]] | None,
) -> None:
    """Relay the rest of ``response``'s body (``first`` is its next piece) to a client that is behind.

    Every body piece is sent with ``more_body: True``; the end-of-body message is the caller's, as on the fast path.
    Whenever the client has caught up (the spool is idle and ``client.write_paused`` is false) a piece is sent
    directly, as on the fast path (that send does not wait), so a client only momentarily behind costs little.
    ``release`` (if any) is awaited as soon as the upstream body is complete: the connection goes back to the pool
    while the client is still taking the spool. ``spool.received`` counts the bytes relayed. An upstream error is
    raised as it comes (the pump stops); so is an ``OSError`` from ``client.send_body`` (an ASGI 2.4 server after a
    disconnect). The spool is closed on the way out.
    """
    failed: list[BaseException] = []

    async def pump() -> None:
        try:
            while data := await spool.take():
                spool.sending(True)
                await client.send_body(data, True)
                spool.sending(False)
        except OSError as exc:
            failed.append(exc)
            tg.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            try:
                await spool.put(first)
                while chunk := await response.read():
                    if spool.idle and not client.write_paused:
                        spool.received += len(chunk)
                        await client.send_body(chunk, True)
                    else:
                        await spool.put(chunk)
                if release is not None:
                    await release()
                spool.end()
            except Exception as exc:  # an upstream failure: stop the pump, raise it below (not as a group)
                failed.append(exc)
                tg.cancel_scope.cancel()
    finally:
        spool.close()
    if failed:
        raise failed[0]
