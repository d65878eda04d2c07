"""Real grpcio peers on 127.0.0.1 for gRPC tests: a ``grpc.aio`` server (an h2c server) with raw-bytes methods, so
no protobuf code generation is needed, plus the standard health service (grpcio-health-checking).

Service ``test.Peer`` (every message is bytes as sent):

* ``Unary``: the request back; the request's ``x-echo-*`` metadata back as initial and trailing metadata (``-bin``
  keys included: grpcio hands them over decoded and encodes them again);
* ``ServerStream``: the request is a count ``b"N"``; answers ``b"msg-0"`` ... ``b"msg-{N-1}"``;
* ``ClientStream``: every request message, joined with ``b"|"``;
* ``Bidi``: each message back as it arrives (a client may wait for the echo before it sends the next);
* ``Status``: the request is ``b"<code>:<details>"``; ends the call with that status code and details;
* ``Sleep``: the request is seconds as text; sleeps that long, then answers ``b"awake"``. A call ended early (a
  deadline, a client cancelling) sets ``peer.cancelled``;
* ``Big``: the request's length, then the request back (16 MiB messages pass: the limits are raised to 32 MiB).

>>> async with grpc_peer() as peer:
...     async with grpc.aio.insecure_channel(peer.target) as channel:
...         reply = await channel.unary_unary("/test.Peer/Unary")(b"hi")
>>> peer.health.set("", SERVING)   # or NOT_SERVING: the gRPC health check sees it
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MAX_MESSAGE = 32 * 1024 * 1024
SERVICE = "test.Peer"


@dataclass
class Peer:
    port: int
    health: Any  # grpc_health.v1.health.aio.HealthServicer
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)  # method names, in the order called
    metadata: list[tuple[str, Any]] = field(default_factory=list)  # the last call's invocation metadata

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def method(self, name: str) -> str:
        return f"/{SERVICE}/{name}"


def _echoed(context: grpc.aio.ServicerContext[Any, Any]) -> list[tuple[str, Any]]:
    return [(key, value) for key, value in context.invocation_metadata() or () if key.startswith("x-echo-")]


def _handlers(peer: Peer) -> grpc.GenericRpcHandler:
    def seen(name: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        peer.calls.append(name)
        peer.metadata = list(context.invocation_metadata() or ())

    async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen("Unary", context)
        echoed = _echoed(context)
        if echoed:
            await context.send_initial_metadata(echoed)
            context.set_trailing_metadata(echoed)
        return request

    async def server_stream(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        seen("ServerStream", context)
        for index in range(int(request)):
            yield b"msg-%d" % index

    async def client_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen("ClientStream", context)
        return b"|".join([message async for message in requests])

    async def bidi(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        seen("Bidi", context)
        async for message in requests:
            yield message

    async def status(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen("Status", context)
        code, _, details = request.decode().partition(":")
        await context.abort(grpc.StatusCode[code] if not code.isdigit() else _code(int(code)), details)
        raise AssertionError("abort returns only by raising")

    async def sleep(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen("Sleep", context)
        try:
            await asyncio.sleep(float(request))
        except asyncio.CancelledError:
            peer.cancelled.set()
            raise
        return b"awake"

    async def big(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        seen("Big", context)
        return request

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Status": grpc.unary_unary_rpc_method_handler(status),
            "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
            "Big": grpc.unary_unary_rpc_method_handler(big),
        },
    )


def _code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    raise ValueError(f"no gRPC status {number}")


@contextlib.asynccontextmanager
async def grpc_peer(port: int = 0) -> AsyncIterator[Peer]:
    """A ``test.Peer`` server with the health service (``""`` and ``test.Peer`` SERVING) on 127.0.0.1."""
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    server = grpc.aio.server(options=options)
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    peer = Peer(bound, servicer)
    server.add_generic_rpc_handlers((_handlers(peer),))
    await servicer.set("", SERVING)
    await servicer.set(SERVICE, SERVING)
    await server.start()
    try:
        yield peer
    finally:
        await server.stop(None)


def channel_options() -> list[tuple[str, int]]:
    """Client channel options matching the peer's 32 MiB message limits."""
    return [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
