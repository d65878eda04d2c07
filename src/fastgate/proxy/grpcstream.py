"""A gRPC request's client side as the exchange core sees it: its status observed, its deadline enforced.

How this works
--------------
``exchange()`` (``proxy/http.py``) wraps the :class:`~fastgate.proxy.downstream.Downstream` of a gRPC request
(``proxy/grpc.py`` ``is_grpc``) in a :class:`GrpcDownstream`. The wrapper passes every call through and watches
the response go by: the ``grpc-status`` of a Trailers-Only head (the upstream's, or the gateway's own answer) or
of the trailers, for the access line and the metrics (``ExchangeRecord.grpc_status``).

With a ``grpc-timeout`` the request has a deadline, from when the wrapper was made. ``disconnect_scope`` then
gives the exchange a :class:`DeadlineScope`: the driver's disconnect scope with an anyio cancel scope inside it
whose deadline is the request's. The route's and upstream's timeouts still apply to each phase, so the smaller
bound wins. When the deadline passes, the cancel scope cancels the exchange wherever it waits (connecting,
sending the body, waiting for the head, relaying the body; the upstream response is closed by the core's
``finally``, so the upstream sees its stream end), and on its way out the scope answers ``DEADLINE_EXCEEDED``:

* nothing sent yet: a Trailers-Only answer;
* the response started with trailers announced: the body ends and ``grpc-status: 4`` goes as the trailers;
* the response started without trailers (a client that did not send ``TE: trailers``): the client is cut off,
  so that it sees the response incomplete rather than a success.

Cancellation is an anyio cancel scope (never ``Task.cancel``); a client disconnect (the driver's scope, outside
ours) wins over the deadline and nothing is sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import anyio

from . import grpc
from .downstream import DisconnectScope, Downstream


class DownstreamProxy:
    """A :class:`Downstream` that passes everything to ``inner``; subclasses change what they need."""

    def __init__(self, inner: Downstream) -> None:
        self.inner = inner
        self.method = inner.method
        self.target = inner.target
        self.headers = inner.headers
        self.http_version = inner.http_version
        self.scheme = inner.scheme
        self.client = inner.client

    @property
    def matched_path(self) -> bytes | None:
        return self.inner.matched_path

    @matched_path.setter
    def matched_path(self, value: bytes | None) -> None:
        self.inner.matched_path = value

    @property
    def path(self) -> str:
        return self.inner.path

    @property
    def scope(self) -> Any:
        return self.inner.scope

    @property
    def offers_trailers(self) -> bool:
        return self.inner.offers_trailers

    @property
    def disconnected(self) -> bool:
        return self.inner.disconnected

    @property
    def write_paused(self) -> bool:
        return self.inner.write_paused

    def disconnect_scope(self, exchanges: set[Any]) -> DisconnectScope:
        return self.inner.disconnect_scope(exchanges)

    async def read_body(self) -> tuple[bytes, bool]:
        return await self.inner.read_body()

    async def send_head(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], *, trailers: bool = False, defer: bool = False
    ) -> None:
        await self.inner.send_head(status, headers, trailers=trailers, defer=defer)

    async def send_body(self, data: bytes, more: bool) -> None:
        await self.inner.send_body(data, more)

    async def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        await self.inner.send_trailers(fields)

    def abort(self) -> None:
        self.inner.abort()


class GrpcDownstream(DownstreamProxy):
    """A gRPC request's downstream: ``grpc_status`` as the response carried it (None: none seen), ``status``
    the HTTP status sent (0: none), and the deadline from ``grpc-timeout`` (``timeout``, seconds; None: none).

    >>> down = GrpcDownstream(driver_downstream)   # in exchange(), for a request that is_grpc()
    >>> record.grpc_status = down.grpc_status      # when it is over
    """

    def __init__(self, inner: Downstream) -> None:
        super().__init__(inner)
        value = grpc.header(inner.headers, b"grpc-timeout")
        self.timeout = grpc.parse_timeout(value) if value is not None else None
        self.deadline = anyio.current_time() + self.timeout if self.timeout is not None else math.inf
        self.grpc_status: int | None = None
        self.status = 0
        self.head_sent = False
        self.trailers_due = False
        self.body_ended = False
        self.ended = False  # the response is complete
        self.deadline_exceeded = False
        self.request_id = b"-"  # set by the exchange once the header rules gave it one

    def disconnect_scope(self, exchanges: set[Any]) -> DisconnectScope:
        scope = self.inner.disconnect_scope(exchanges)
        return DeadlineScope(scope, self) if self.timeout is not None else scope

    async def send_head(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], *, trailers: bool = False, defer: bool = False
    ) -> None:
        headers = list(headers)
        self.status = status
        self.head_sent = True
        self.trailers_due = trailers
        found = grpc.status_of(headers)
        if found is not None:
            self.grpc_status = found
        await self.inner.send_head(status, headers, trailers=trailers, defer=defer)

    async def send_body(self, data: bytes, more: bool) -> None:
        if not more:
            self.body_ended = True
            self.ended = not self.trailers_due
        await self.inner.send_body(data, more)

    async def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        found = grpc.status_of(fields)
        if found is not None:
            self.grpc_status = found
        self.ended = True
        await self.inner.send_trailers(fields)

    async def answer_deadline(self, request_id: bytes = b"-") -> None:
        """Tell the client its deadline passed (see the module docstring for the three cases)."""
        self.deadline_exceeded = True
        if self.ended or self.inner.disconnected:
            return
        message = f"deadline exceeded (grpc-timeout {self.timeout:g}s)"
        if not self.head_sent:
            await self.send_head(200, grpc.trailers_only(grpc.DEADLINE_EXCEEDED, message, request_id), defer=True)
            await self.send_body(b"", False)
        elif self.trailers_due:
            if not self.body_ended:
                await self.send_body(b"", False)
            fields = [(b"grpc-status", b"%d" % grpc.DEADLINE_EXCEEDED), (b"grpc-message", grpc.encode_message(message))]
            await self.send_trailers(fields)
        else:
            self.grpc_status = grpc.DEADLINE_EXCEEDED
            self.inner.abort()


class DeadlineScope:
    """The driver's :class:`DisconnectScope` with the request's deadline inside it (see the module docstring)."""

    __slots__ = ("inner", "_down", "_cancel", "_finished")

    def __init__(self, inner: DisconnectScope, down: GrpcDownstream) -> None:
        self.inner = inner
        self._down = down
        self._cancel = anyio.CancelScope(deadline=down.deadline)
        self._finished = False

    @property
    def disconnected(self) -> bool:
        return self.inner.disconnected

    @disconnected.setter
    def disconnected(self, value: bool) -> None:
        self.inner.disconnected = value

    @property
    def expired(self) -> bool:
        return self.inner.expired

    @expired.setter
    def expired(self, value: bool) -> None:
        self.inner.expired = value

    async def __aenter__(self) -> DeadlineScope:
        await self.inner.__aenter__()
        self._cancel.__enter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            swallowed = self._cancel.__exit__(exc_type, exc, tb)
        except BaseException as raised:
            return bool(await self.inner.__aexit__(type(raised), raised, raised.__traceback__))
        if swallowed:
            exc_type = exc = tb = None
            if self._cancel.cancelled_caught and not self._finished and not self.inner.disconnected:
                try:
                    await self._down.answer_deadline(self._down.request_id)
                except OSError:
                    self.inner.disconnected = True
        suppressed = await self.inner.__aexit__(exc_type, exc, tb)
        return swallowed or bool(suppressed)

    def watch(self) -> None:
        self.inner.watch()

    def finish(self) -> None:
        self._finished = True
        self._cancel.deadline = math.inf  # the response is complete or being closed: the deadline no longer applies
        self.inner.finish()

    def expire(self) -> None:
        self.inner.expire()
