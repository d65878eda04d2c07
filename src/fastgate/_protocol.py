"""Uvicorn's httptools protocol with the few things a proxy needs from its server.

* ``scope["extensions"]["fastgate.server"]`` gives the proxy a hook object (:class:`ServerHooks`): the raw
  request target as the client sent it (so ``/p?`` keeps its ``?``), a callback run the moment the client
  disconnects (no watcher task per request), and ``abort()`` to cut the client off when the upstream dies
  mid-body, so the client sees an incomplete response rather than a clean end.
* HTTP/1.0 clients never get ``Transfer-Encoding: chunked`` (they cannot read it): a response of unknown length
  is sent close-delimited instead (RFC 9112 §6.3, item 8).

Everything else is Uvicorn's. This leans on two internals of ``uvicorn.protocols.http.httptools_impl``
(``RequestResponseCycle``'s fields and ``on_headers_complete`` creating ``self.cycle``), which is why
pyproject pins uvicorn to one minor release; the HTTP/1.0 and disconnect tests fail loudly if they move.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class ServerHooks(Protocol):
    raw_target: bytes
    disconnected: bool
    on_disconnect: Callable[[], object] | None

    def abort(self) -> None: ...


class _Cycle(RequestResponseCycle):
    raw_target = b""
    on_disconnect: Callable[[], object] | None = None
    _close_delimited = False

    def abort(self) -> None:
        self.disconnected = True  # tells Uvicorn the response was not forgotten, just cut off
        self.transport.abort()

    async def send(self, message: Any) -> None:
        if not self.response_started:
            if (
                message["type"] == "http.response.start"
                and self.scope["http_version"] == "1.0"
                and self.scope["method"] != "HEAD"
                and message["status"] not in (204, 304)
                and not any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in message["headers"])
            ):
                self._close_delimited = True
                self.chunked_encoding = False
        elif self._close_delimited and message["type"] == "http.response.body" and not self.response_complete:
            if self.flow.write_paused and not self.disconnected:
                await self.flow.drain()
            if self.disconnected:
                return
            body = message.get("body", b"")
            if body:
                self.transport.write(body)
            if not message.get("more_body", False):
                self.response_complete = True
                self.message_event.set()
                self.transport.close()  # the close is the end of the body
                self.on_response()
            return
        await super().send(message)


class FastgateHttpProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        target = self.url
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # a new request (not an upgrade)
            # The task that runs the app was created but has not started: it sees the subclass's methods.
            cycle.__class__ = _Cycle
            assert isinstance(cycle, _Cycle)
            cycle.raw_target = target
            self.scope["extensions"] = {"fastgate.server": cycle}  # type: ignore[dict-item]

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, _Cycle) and cycle.disconnected and cycle.on_disconnect is not None:
            callback, cycle.on_disconnect = cycle.on_disconnect, None
            callback()
