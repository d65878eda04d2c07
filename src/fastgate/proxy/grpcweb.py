"""gRPC-Web for browsers: a route with ``grpc_web: true`` turns a gRPC-Web request into a gRPC one and its gRPC
response back into gRPC-Web, as Envoy's ``grpc_web`` filter does.

How this works
--------------
The gateway (``app.py``, where the route is known) wraps the request's
:class:`~fastgate.proxy.downstream.Downstream` in a :class:`GrpcWebDownstream` when the route has ``grpc_web`` and
the request's content-type is ``application/grpc-web``, ``application/grpc-web+proto`` (any ``+codec``),
``application/grpc-web-text`` or ``application/grpc-web-text+proto``. The exchange core then sees a gRPC request:

* request head: ``content-type: application/grpc`` (``+codec`` kept), ``te: trailers``; for ``-text`` the
  ``content-length`` gives way to chunked framing (the decoded body is shorter);
* request body: as sent; for ``-text``, base64-decoded as it arrives (:class:`TextDecoder`: pieces split at any
  byte, and concatenated padded segments, as the grpc-web JS client may send);
* the response can always carry trailers (``offers_trailers``): they become the body's last frame.

And the client sees gRPC-Web (PROTOCOL-WEB.md in grpc/grpc): the head with the content-type it used (no
``content-length``: the body grows by the trailer frame); the body's gRPC frames as they come (for ``-text``, each
piece base64-encoded with padding on its own, as Envoy does, so a message is never held back waiting for the next);
then the trailers (``grpc-status``, ``grpc-message``, metadata), or a Trailers-Only head's ``grpc-*`` fields, as one
frame with flag ``0x80``: ``name: value\\r\\n`` per field, names lowercase, length big-endian, exactly Envoy's
``encodeTrailers`` bytes (for ``-text``, that frame base64-encoded on its own).
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable

from ..exceptions import BadRequest
from .downstream import Downstream
from .grpc import GRPC_CONTENT_TYPE, status_of
from .grpcstream import DownstreamProxy

TRAILER_FLAG = 0x80
_GRPC_WEB = b"application/grpc-web"
_GRPC_WEB_TEXT = b"application/grpc-web-text"


def grpc_web_type(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The request's gRPC-Web media type (lowercased, parameters dropped), or None when it is not gRPC-Web.

    >>> grpc_web_type([(b"content-type", b"application/grpc-web-text+proto")])
    b'application/grpc-web-text+proto'
    """
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            base, plus, codec = media.partition(b"+")
            if base in (_GRPC_WEB, _GRPC_WEB_TEXT) and (not plus or (codec and codec.isalnum())):
                return media
            return None
    return None


def grpc_type_for(web_type: bytes) -> bytes:
    """The gRPC content-type that goes upstream for a gRPC-Web one.

    >>> grpc_type_for(b"application/grpc-web-text+proto"), grpc_type_for(b"application/grpc-web")
    (b'application/grpc+proto', b'application/grpc')
    """
    _, plus, codec = web_type.partition(b"+")
    return GRPC_CONTENT_TYPE + b"+" + codec if plus else GRPC_CONTENT_TYPE


def trailer_frame(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The gRPC-Web trailer frame: flag 0x80, the length, then ``name: value\\r\\n`` per field (names lowercase).

    >>> trailer_frame([(b"grpc-status", b"0"), (b"Grpc-Message", b"OK")])
    b'\\x80\\x00\\x00\\x00\\x1fgrpc-status: 0\\r\\ngrpc-message: OK\\r\\n'
    """
    block = b"".join(name.lower() + b": " + value + b"\r\n" for name, value in fields)
    return struct.pack(">BI", TRAILER_FLAG, len(block)) + block


class TextDecoder:
    """Incremental base64 for ``-text`` request bodies: whole 4-character groups are decoded as they arrive (a
    padded group may end one segment and another begin after it); whitespace is skipped.

    >>> decoder = TextDecoder()
    >>> decoder.feed(b"AAAAAAN"), decoder.feed(b"hYmM="), decoder.end()
    (b'\\x00\\x00\\x00', b'\\x00\\x03abc', None)
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        data = self._pending + b"".join(data.split())
        usable = len(data) - len(data) % 4
        whole, self._pending = data[:usable], data[usable:]
        try:
            if b"=" not in whole:
                return base64.b64decode(whole, validate=True)
            return b"".join(base64.b64decode(whole[i : i + 4], validate=True) for i in range(0, usable, 4))
        except binascii.Error:
            raise BadRequest("grpc-web-text: the request body is not valid base64") from None

    def end(self) -> None:
        if self._pending:
            raise BadRequest("grpc-web-text: the request body ends inside a base64 group")


class GrpcWebDownstream(DownstreamProxy):
    """A gRPC-Web request presented to the core as gRPC, its response translated back (see the module docstring).

    >>> if route.grpc_web and (web := grpc_web_type(down.headers)): down = GrpcWebDownstream(down, web)
    """

    def __init__(self, inner: Downstream, web_type: bytes) -> None:
        super().__init__(inner)
        self.web_type = web_type
        self.text = web_type.startswith(_GRPC_WEB_TEXT)
        self._decoder = TextDecoder() if self.text else None
        headers: list[tuple[bytes, bytes]] = []
        for name, value in inner.headers:
            if name == b"content-type":
                headers.append((name, grpc_type_for(web_type)))
            elif name == b"te":
                continue  # ours below: trailers only
            elif name == b"content-length" and self.text:
                headers.append((b"transfer-encoding", b"chunked"))
            else:
                headers.append((name, value))
        headers.append((b"te", b"trailers"))
        self.headers = headers
        self._trailers_due = False
        self._held: list[tuple[bytes, bytes]] = []  # a Trailers-Only head's grpc-* fields, for the trailer frame

    @property
    def offers_trailers(self) -> bool:
        return True

    async def read_body(self) -> tuple[bytes, bool]:
        data, more = await self.inner.read_body()
        if self._decoder is not None:
            data = self._decoder.feed(data)
            if not more:
                self._decoder.end()
        return data, more

    async def send_head(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], *, trailers: bool = False, defer: bool = False
    ) -> None:
        out: list[tuple[bytes, bytes]] = []
        held: list[tuple[bytes, bytes]] = []
        grpc_response = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-type":
                grpc_response = value.split(b";", 1)[0].strip().lower().startswith(GRPC_CONTENT_TYPE)
                out.append((name, self.web_type if grpc_response else value))
            elif lowered == b"content-length":
                continue
            elif lowered in (b"grpc-status", b"grpc-message", b"grpc-status-details-bin"):
                held.append((lowered, value))
            else:
                out.append((name, value))
        if status_of(held) is not None:
            self._held = held  # Trailers-Only: its status goes in the trailer frame
        else:
            out.extend(held)
        self._trailers_due = trailers
        await self.inner.send_head(status, out, trailers=False, defer=defer)

    async def send_body(self, data: bytes, more: bool) -> None:
        if self.text and data:
            data = base64.b64encode(data)
        if more or self._trailers_due:
            if data:
                await self.inner.send_body(data, True)
            return
        if self._held:
            data += self._encode(trailer_frame(self._held))
        await self.inner.send_body(data, False)

    async def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        if self._held:  # a Trailers-Only head relayed with (empty) trailers after it
            fields = [*self._held, *fields]
        await self.inner.send_body(self._encode(trailer_frame(fields)), False)

    def _encode(self, frame: bytes) -> bytes:
        return base64.b64encode(frame) if self.text else frame
