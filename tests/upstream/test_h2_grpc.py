"""A real grpcio server as an h2c upstream: an HTTP/1.1 client posting one gRPC frame with ``TE: trailers`` through
an in-process gateway gets the message, and ``grpc-status`` (with the server's trailing metadata) as trailers in the
last chunk; a "Trailers-Only" error answer arrives with its status in the head, as gRPC sent it."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from fastgate import Gateway, GatewayConfig
from tests.rawhttp import raw_exchange
from tests.servers import run_gateway

pytestmark = pytest.mark.anyio


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-request-bytes", str(len(request))),))
    return b"echo:" + request


async def _missing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise AssertionError("abort raises")


@contextlib.asynccontextmanager
async def grpc_server() -> AsyncIterator[int]:
    """``test.Echo/Unary`` and ``test.Echo/Missing`` on raw bytes (no protobuf: no (de)serializers)."""
    server = grpc.aio.server()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Missing": grpc.unary_unary_rpc_method_handler(_missing),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(grace=None)
        # grpc.aio delivers late completion events to the loop a call ran on: wait for them on this test's loop,
        # or one lands on a closed loop during the next test (tests/grpc_peers.py says the same).
        await server.wait_for_termination(10)


def grpc_post(path: bytes, message: bytes) -> bytes:
    frame = b"\x00" + struct.pack(">I", len(message)) + message  # uncompressed, length-prefixed (gRPC over HTTP/2)
    head = [
        b"POST " + path + b" HTTP/1.1",
        b"Host: gw.test",
        b"Content-Type: application/grpc",
        b"TE: trailers",
        b"Content-Length: %d" % len(frame),
        b"Connection: close",
    ]
    return b"\r\n".join([*head, b"", b""]) + frame


def split_chunked(body: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The data of a chunked body and the fields of its trailer section."""
    data = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        data, body = data + body[:size], body[size + 2 :]
    section = body.partition(b"\r\n\r\n")[0]
    fields = dict(tuple(line.split(b":", 1)) for line in section.split(b"\r\n") if line)  # type: ignore[misc]
    return data, {k.strip().lower(): v.strip() for k, v in fields.items()}


@contextlib.asynccontextmanager
async def gateway_to_grpc(**upstream: Any) -> AsyncIterator[tuple[int, Gateway]]:
    async with grpc_server() as port:
        config = GatewayConfig.single(f"http://127.0.0.1:{port}", protocol="h2c", **upstream)
        gateway = Gateway(config)
        async with run_gateway(gateway) as server:
            yield server.port, gateway


async def test_grpc_unary_through_the_gateway_delivers_grpc_status_as_trailers() -> None:
    async with gateway_to_grpc() as (port, _):
        response = await raw_exchange(port, grpc_post(b"/test.Echo/Unary", b"hello"), limit=15)
    assert response.status == 200
    assert response.header(b"content-type") == [b"application/grpc"]
    assert response.header(b"transfer-encoding") == [b"chunked"]
    assert not response.header(b"grpc-status")  # not in the head: it came as a trailer
    data, trailers = split_chunked(response.body)
    assert data == b"\x00" + struct.pack(">I", 10) + b"echo:hello"
    assert trailers[b"grpc-status"] == b"0"
    assert trailers[b"x-request-bytes"] == b"5"


async def test_grpc_trailers_only_error_keeps_its_status_in_the_head() -> None:
    async with gateway_to_grpc() as (port, _):
        response = await raw_exchange(port, grpc_post(b"/test.Echo/Missing", b"x"), limit=15)
    assert response.status == 200
    assert response.header(b"grpc-status") == [b"5"]  # NOT_FOUND, in the HEADERS that ended the stream
    assert response.header(b"grpc-message") == [b"no such thing"]


async def test_grpc_calls_share_one_upstream_connection() -> None:
    async with gateway_to_grpc(http2={"max_concurrent_streams": 8, "keepalive_interval": 5}) as (port, gateway):
        for index in range(5):
            response = await raw_exchange(port, grpc_post(b"/test.Echo/Unary", b"m%d" % index), limit=15)
            assert split_chunked(response.body)[1][b"grpc-status"] == b"0"
        stats = gateway.transports["default"].stats()[0].pool  # type: ignore[attr-defined]
    assert stats.connects == 1 and stats.reuses == 4
