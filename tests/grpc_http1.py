"""gRPC framing over HTTP/1.1, for tests that run before the HTTP/2 upstream client exists: an ASGI upstream that
answers ``application/grpc`` with a chunked body and trailers (served by fastgate's own HTTP/1.1 protocol, which
sends ASGI ``http.response.trailers``), and a raw-socket client that sends framed messages and reads trailers.

Upstream methods (the request path):

* ``/test.Echo/Unary``: the whole request body back, then ``grpc-status: 0`` and the request's ``x-echo-*``
  metadata as trailers;
* ``/test.Echo/Stream``: client streaming; each message is recorded in ``seen`` as it arrives (the client may wait
  for that before sending the next), then all of them back and ``grpc-status: 0``. (Bidi over an HTTP/1.1
  upstream cannot be: fastgate's HTTP/1.1 client sends the whole body before it reads the response, as nginx does;
  it takes the HTTP/2 upstream client, ``tests/grpc_peers.py``);
* ``/test.Echo/Fail``: a Trailers-Only answer, ``grpc-status: 5`` and a percent-encoded ``grpc-message``;
* ``/test.Echo/Hang``: never answers (``cancelled`` is set when the gateway drops the request);
* ``/test.Echo/Stall``: one message, then nothing until the gateway drops it (``cancelled``): the deadline must
  end it after the head went out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import anyio
import anyio.abc

from fastgate._types import Receive, Scope, Send


def frame(message: bytes, flags: int = 0) -> bytes:
    """One gRPC length-prefixed message."""
    return struct.pack(">BI", flags, len(message)) + message


def messages(data: bytes) -> list[bytes]:
    """The messages of a body of whole frames."""
    out = []
    while data:
        _, length = struct.unpack(">BI", data[:5])
        out.append(data[5 : 5 + length])
        data = data[5 + length :]
    return out


@dataclass
class GrpcUpstream:
    """The ASGI app; records each request's headers and whether a hanging request was dropped."""

    requests: list[dict[bytes, bytes]] = field(default_factory=list)
    cancelled: anyio.Event = field(default_factory=anyio.Event)
    seen: list[bytes] = field(default_factory=list)  # /test.Echo/Stream's messages, as each arrived

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {name: value for name, value in scope["headers"]}
        self.requests.append(headers)
        path = scope["path"]
        start = {"type": "http.response.start", "status": 200, "trailers": True}
        grpc_headers = [(b"content-type", b"application/grpc")]
        if path == "/test.Echo/Fail":
            await _drain(receive)
            fail = [*grpc_headers, (b"grpc-status", b"5"), (b"grpc-message", b"no such thing %E2%9C%93")]
            await send({"type": "http.response.start", "status": 200, "headers": fail})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/test.Echo/Hang":
            await _drain(receive)
            await _until_disconnect(receive)
            self.cancelled.set()
            return
        # The head goes out once the request body is read: fastgate's HTTP/1.1 client stops sending a body the
        # upstream answered early (a 413, say), as a unary gRPC server never does.
        body = b"" if path == "/test.Echo/Stream" else await _drain(receive)
        if path != "/test.Echo/Stream":
            await send({**start, "headers": grpc_headers})
        if path == "/test.Echo/Stream":
            buffer = b""
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                buffer += message.get("body", b"")
                while len(buffer) >= 5 and len(buffer) >= 5 + struct.unpack(">I", buffer[1:5])[0]:
                    size = 5 + struct.unpack(">I", buffer[1:5])[0]
                    self.seen.append(buffer[5:size])
                    body += buffer[:size]
                    buffer = buffer[size:]
                if not message.get("more_body", False):
                    break
            await send({**start, "headers": grpc_headers})
            await send({"type": "http.response.body", "body": body, "more_body": True})
        elif path == "/test.Echo/Stall":
            await send({"type": "http.response.body", "body": frame(b"first"), "more_body": True})
            await _until_disconnect(receive)
            self.cancelled.set()
            return
        else:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        trailers = [(b"grpc-status", b"0"), *((k, v) for k, v in headers.items() if k.startswith(b"x-echo-"))]
        await send({"type": "http.response.trailers", "headers": trailers, "more_trailers": False})


async def _until_disconnect(receive: Receive) -> None:
    """ASGI tells an app its client went through ``receive``: wait for that."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _drain(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


def grpc_request(path: str, body: bytes | None = None, *extra: bytes, te: bool = True) -> bytes:
    """A gRPC request over HTTP/1.1: chunked, ``TE: trailers``, ``Connection: close``; ``body`` None: the head and
    the chunked framing only (the caller sends chunks)."""
    head = [
        b"POST " + path.encode() + b" HTTP/1.1",
        b"Host: gw.test",
        b"Content-Type: application/grpc",
        b"Transfer-Encoding: chunked",
        *([b"TE: trailers"] if te else []),
        *extra,
        b"Connection: close",
        b"",
        b"",
    ]
    data = b"\r\n".join(head)
    if body is not None:
        data += (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return data


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclass
class GrpcResponse:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    trailers: dict[bytes, bytes]


def parse_grpc_response(raw: bytes) -> GrpcResponse:
    """A whole HTTP/1.1 response (read to the connection's close): head, de-chunked body, trailers."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    trailers: dict[bytes, bytes] = {}
    if headers.get(b"transfer-encoding") == b"chunked":
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                section, _, _ = rest.partition(b"\r\n\r\n") if not rest.startswith(b"\r\n") else (b"", b"", b"")
                for line in section.split(b"\r\n"):
                    if line:
                        name, _, value = line.partition(b":")
                        trailers[name.strip().lower()] = value.strip()
                break
            body += rest[:size]
            rest = rest[size + 2 :]
    else:
        body = rest[: int(headers.get(b"content-length", b"0"))]
    return GrpcResponse(status, headers, body, trailers)


async def read_response(stream: anyio.abc.ByteStream, limit: float = 10) -> GrpcResponse:
    data = b""
    with anyio.fail_after(limit):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return parse_grpc_response(data)
