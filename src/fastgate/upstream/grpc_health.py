"""One gRPC health check (``grpc.health.v1.Health/Check``) over a connection of its own: h2c, or h2 over TLS.

How this works
--------------
``health_check: {type: grpc, service: ""}`` probes each target as gRPC's health protocol asks
(https://github.com/grpc/grpc/blob/master/doc/health-checking.md): a unary call to
``/grpc.health.v1.Health/Check`` with a ``HealthCheckRequest{service}``, answered by a
``HealthCheckResponse{status}``. ``SERVING`` (1) is healthy; any other status, a ``grpc-status`` other than 0
(``NOT_FOUND`` for an unknown service), an HTTP status other than 200, a reset, no answer within the check's
``timeout`` or a refused connection is not.

The exchange is driven by hand with the codec (``http2/codec.py``, ``client_connection``) on asyncio streams: the
connection preface and SETTINGS, one HEADERS and one DATA frame (END_STREAM), then frames read until the stream
ends; our SETTINGS ack and WINDOW_UPDATEs go out as the codec asks. The two protobuf messages are a single field
each, encoded and decoded here (:func:`encode_request`, :func:`decode_status`), so no generated code is needed.
Like the HTTP probe (``health.py``), each check opens and closes its own connection, never one of the pool's.
"""

from __future__ import annotations

import asyncio
import ssl
import struct

import anyio

from ..http2.codec import (
    ConnectionTerminated,
    DataReceived,
    ProtocolError,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    client_connection,
)

CHECK_PATH = b"/grpc.health.v1.Health/Check"
SERVING = 1
USER_AGENT = b"fastgate-health-check"
_MAX_RESPONSE = 64 * 1024  # a HealthCheckResponse is a few bytes; anything past this is not one


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_request(service: str) -> bytes:
    """A ``HealthCheckRequest{service}`` as one gRPC message (5-byte prefix, uncompressed).

    >>> encode_request(""), encode_request("api")
    (b'\\x00\\x00\\x00\\x00\\x00', b'\\x00\\x00\\x00\\x00\\x05\\n\\x03api')
    """
    name = service.encode("utf-8")
    message = b"\x0a" + _varint(len(name)) + name if name else b""  # field 1, wire type 2; proto3 omits ""
    return struct.pack(">BI", 0, len(message)) + message


def _read_varint(data: bytes, index: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if index >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[index]
        index += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index
        shift += 7


def decode_status(body: bytes) -> int | None:
    """The ``status`` of the ``HealthCheckResponse`` in a gRPC response body (0, ``UNKNOWN``, when the field is
    absent), or None when the body is not one uncompressed message.

    >>> decode_status(b"\\x00\\x00\\x00\\x00\\x02\\x08\\x01"), decode_status(b"\\x00\\x00\\x00\\x00\\x00")
    (1, 0)
    """
    if len(body) < 5 or body[0] != 0:
        return None
    (length,) = struct.unpack(">I", body[1:5])
    if len(body) != 5 + length:
        return None
    message = body[5:]
    status = 0
    index = 0
    try:
        while index < len(message):
            tag, index = _read_varint(message, index)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                value, index = _read_varint(message, index)
                if field == 1:
                    status = value
            elif wire == 2:
                size, index = _read_varint(message, index)
                index += size
            elif wire == 1:
                index += 8
            elif wire == 5:
                index += 4
            else:
                return None
    except ValueError:
        return None
    return status if index == len(message) else None


async def grpc_check(
    host: str,
    port: int,
    authority: bytes,
    service: str,
    limit: float,
    context: ssl.SSLContext | None = None,
) -> bool:
    """Run one check against ``host:port`` within ``limit`` seconds; True when the target answers ``SERVING``.

    ``context``: TLS (its ALPN must offer ``h2``); None: h2c with prior knowledge.
    """
    with anyio.move_on_after(limit):
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context else None
            )
        except OSError:
            return False
        try:
            return await _exchange(reader, writer, authority, service, context is not None)
        except (OSError, ProtocolError):
            return False
        finally:
            writer.close()
    return False


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: bytes, service: str, tls: bool
) -> bool:
    conn = client_connection(initial_window=_MAX_RESPONSE)
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https" if tls else b"http"),
        (b":path", CHECK_PATH),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"user-agent", USER_AGENT),
    ]
    conn.send_headers(stream, headers)
    conn.send_data(stream, encode_request(service), end_stream=True)
    writer.write(conn.data_to_send())
    body = b""
    http_status = b""
    grpc_status: bytes | None = None
    while True:
        data = await reader.read(65536)
        if not data:
            return False
        for event in conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                fields = dict(event.headers)
                http_status = fields.get(b":status", b"")
                grpc_status = fields.get(b"grpc-status", grpc_status)  # Trailers-Only
            elif isinstance(event, DataReceived) and event.stream_id == stream:
                body += event.data
                if len(body) > _MAX_RESPONSE:
                    return False
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, TrailersReceived):
                grpc_status = dict(event.headers).get(b"grpc-status", grpc_status)
            elif isinstance(event, StreamEnded) and event.stream_id == stream:
                writer.write(conn.data_to_send())
                return http_status == b"200" and grpc_status == b"0" and decode_status(body) == SERVING
            elif isinstance(event, (StreamReset, ConnectionTerminated)):
                return False
        pending = conn.data_to_send()
        if pending:
            writer.write(pending)
