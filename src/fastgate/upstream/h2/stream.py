"""One request/response exchange on an HTTP/2 connection: what has arrived for it, and its one waiter.

The connection fills it from the codec's events (head, body pieces, trailers, end, reset) and wakes the waiter;
the transport's caller drains it. Body pieces are kept with their flow-controlled size, which the connection hands
back to the peer (``acknowledge_received_data``) only as each piece is taken: a stream nobody reads stops at its
window, and the others run on.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ...exceptions import UpstreamError


class Stream:
    __slots__ = (
        "id",
        "status",
        "headers",
        "trailers",
        "head_done",
        "ended",
        "sent_end",
        "exc",
        "retry_safe",
        "pieces",
        "unacked",
        "waiter",
        "deadline",
        "waiting_for",
        "armed_timeout",
        "send_waiter",
        "send_deadline",
        "send_waiting_for",
        "send_armed",
    )

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.head_done = False
        self.ended = False  # the peer ended its side (END_STREAM)
        self.sent_end = False  # we ended ours
        self.exc: UpstreamError | None = None
        self.retry_safe = False  # failed in a way that shows the peer never processed it (GOAWAY, REFUSED_STREAM)
        self.pieces: deque[tuple[bytes, int]] = deque()  # body pieces and their flow-controlled sizes
        self.unacked = 0  # flow-controlled bytes received and not yet handed back
        self.waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self.waiting_for = ""
        self.armed_timeout = 0.0
        # The request body's sender waits apart from the response's reader: both run at once (a gRPC stream).
        self.send_waiter: asyncio.Future[None] | None = None
        self.send_deadline = 0.0
        self.send_waiting_for = ""
        self.send_armed = 0.0

    def __repr__(self) -> str:
        state = "failed" if self.exc else ("ended" if self.ended else ("open" if self.head_done else "waiting"))
        return f"<Stream {self.id} {state} status={self.status} buffered={self.unacked}>"

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def wake_sender(self) -> None:
        waiter = self.send_waiter
        if waiter is not None:
            self.send_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def fail(self, exc: UpstreamError, *, retry_safe: bool = False) -> None:
        if self.exc is None and not self.ended:  # a response received whole stays deliverable
            self.exc = exc
            self.retry_safe = retry_safe
        self.wake()
        self.wake_sender()
