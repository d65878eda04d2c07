"""Uvicorn's httptools protocol with the few things a proxy needs from its server.

* ``scope["extensions"]["fastgate.server"]`` gives the proxy a hook object (:class:`ServerHooks`): the raw
  request target as the client sent it (so ``/p?`` keeps its ``?``), a callback run the moment the client
  disconnects (no watcher task per request), and ``abort()`` to cut the client off when the upstream dies
  mid-body, so the client sees an incomplete response rather than a clean end.
* HTTP/1.0 clients never get ``Transfer-Encoding: chunked`` (they cannot read it): a response of unknown length
  is sent close-delimited instead (RFC 9112 §6.3, item 8).
* A leaner response writer than Uvicorn's ``send`` (see ``_Cycle``), measured as the largest single cost of a
  small proxied response, and request body pieces handed on as they arrived instead of through a growing
  bytearray (the largest cost of an upload).

Everything else is Uvicorn's. This leans on internals of ``uvicorn.protocols.http.httptools_impl``
(``RequestResponseCycle``'s fields and ``on_headers_complete`` creating ``self.cycle``), which is why
pyproject pins uvicorn to one minor release; the HTTP/1.0 and disconnect tests fail loudly if they move.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Callable
from typing import Any, Protocol

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class ServerHooks(Protocol):
    loop: asyncio.AbstractEventLoop
    raw_target: bytes
    disconnected: bool
    on_disconnect: Callable[[], object] | None

    def abort(self) -> None: ...


def _status_line(code: int) -> bytes:
    try:
        phrase = http.HTTPStatus(code).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (code, phrase)


STATUS_LINES = {code: _status_line(code) for code in range(100, 600)}


class _Cycle(RequestResponseCycle):
    """Uvicorn's request/response cycle with fastgate's response writer.

    The writer does what Uvicorn's ``send`` does (framing, keep-alive, flow control, the same RuntimeErrors for a
    misbehaving app) at a fraction of the cost: header lines are checked for CR/LF injection with one count over
    the finished head rather than two regex searches per header. A start message carrying ``"fastgate.defer":
    True`` is held back and written together with the first body message, so a small response costs one write.
    Uvicorn's own access log is not written here (fastgate writes its own).
    """

    raw_target = b""
    loop: asyncio.AbstractEventLoop
    on_disconnect: Callable[[], object] | None = None
    _close_delimited = False
    _no_body = False
    _head: bytes | None = None
    chunks: list[bytes]
    buffered = 0

    def abort(self) -> None:
        self.disconnected = True  # tells Uvicorn the response was not forgotten, just cut off
        self._head = None
        self.transport.abort()

    async def receive(self) -> Any:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        chunks = self.chunks
        body = (chunks[0] if len(chunks) == 1 else b"".join(chunks)) if chunks else b""
        chunks.clear()
        self.buffered = 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            self._start(message)
        elif self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")
        elif kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
        else:
            self._body(message.get("body", b""), message.get("more_body", False))

    def _start(self, message: Any) -> None:
        status: int = message["status"]
        headers = message.get("headers", ())
        parts = [STATUS_LINES.get(status) or _status_line(status)]
        length: int | None = None
        chunked = False
        has_close = False
        count = 0
        for name, value in (*self.default_headers, *headers):
            name = name.lower()
            if name == b"content-length":
                if length is None and not chunked:
                    length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower() == b"chunked"
            elif name == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
                self.keep_alive = False
                has_close = True
            parts += (name, b": ", value, b"\r\n")
            count += 1
        self._no_body = self.scope["method"] == "HEAD" or status in (204, 304) or status < 200
        if chunked:
            self.chunked_encoding = True
        elif length is not None or self._no_body:
            self.chunked_encoding = False
            self.expected_content_length = length or 0
        elif self.scope["http_version"] == "1.0":
            # RFC 9112 §6.3 (8): no chunked for an HTTP/1.0 client; the body ends when the connection closes.
            self._close_delimited = True
            self.chunked_encoding = False
            self.keep_alive = False
        else:
            self.chunked_encoding = True
            parts.append(b"transfer-encoding: chunked\r\n")
            count += 1
        if not self.keep_alive and not has_close:
            parts.append(b"connection: close\r\n")
            count += 1
        parts.append(b"\r\n")
        head = b"".join(parts)
        if head.count(b"\n") != count + 2 or head.count(b"\r") != count + 2 or b"\0" in head:
            raise RuntimeError("Invalid HTTP header name or value.")
        self.response_started = True
        self.waiting_for_100_continue = False
        if message.get("fastgate.defer"):
            self._head = head
        else:
            self.transport.write(head)

    def _body(self, body: bytes, more: bool) -> None:
        if self._no_body:
            data = b""
        elif self.chunked_encoding:
            data = b"".join((b"%x\r\n" % len(body), body, b"\r\n")) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            data = body
            if not self._close_delimited:
                if len(body) > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                self.expected_content_length -= len(body)
        head, self._head = self._head, None
        if head is not None:
            self.transport.writelines((head, data))
        elif data:
            self.transport.write(data)
        if not more:
            if self.expected_content_length and not self._no_body and not self._close_delimited:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()  # for a close-delimited body the close is its end
            self.on_response()


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
            cycle.loop = self.loop
            cycle.chunks = []
            self.scope["extensions"] = {"fastgate.server": cycle}  # type: ignore[dict-item]

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._decline_upgrade()

    def _decline_upgrade(self) -> None:
        """An upgrade we do not speak (h2c, say): serve the request as plain HTTP/1.1, then close.

        llhttp stops parsing at an upgrade offer: it reports the request complete without a body and leaves the rest
        of the bytes unread, so this connection can carry nothing more, and a body sent with the offer cannot be
        read. Such a request is refused with 400 rather than forwarded without the body it declared.
        """
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:
            return
        cycle.keep_alive = False
        declared = any(
            (name == b"content-length" and value.strip() not in (b"", b"0")) or name == b"transfer-encoding"
            for name, value in self.scope["headers"]
        )
        if declared and not cycle.response_started:
            cycle.disconnected = True  # the app's sends become no-ops; its disconnect callback runs on close
            self.send_400_response("A request body cannot be sent with an upgrade offer.")

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if not isinstance(cycle, _Cycle) or (self.parser.should_upgrade() and self._should_upgrade()):
            super().on_body(body)  # not ours, or a WebSocket upgrade's bytes, which Uvicorn drops
            return
        if cycle.response_complete:
            return
        # The pieces as they came, rather than Uvicorn's growing bytearray: on a 64 MiB upload that append and the
        # copy out of it were over half of the gateway's CPU time.
        cycle.chunks.append(body)
        cycle.buffered += len(body)
        if cycle.buffered > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, _Cycle) and cycle.disconnected and cycle.on_disconnect is not None:
            callback, cycle.on_disconnect = cycle.on_disconnect, None
            callback()
