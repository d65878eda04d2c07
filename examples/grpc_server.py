"""An example gRPC service to put fastgate in front of (grpcio, no code generation needed).

    python examples/grpc_server.py --port 50051

Services:
* ``grpc.health.v1.Health`` (grpcio-health-checking): ``Check`` answers SERVING; fastgate's
  ``health_check: {type: grpc}`` uses it.
* ``demo.Echo`` with raw-bytes messages: ``Say`` (unary: the request back, upper-cased), ``Count`` (server
  streaming: the request's number of messages, one a line), ``Join`` (client streaming: the requests joined).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


async def say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.send_initial_metadata((("x-served-by", "grpc_server.py"),))
    return request.upper()


async def count(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(int(request or b"3")):
        yield b"message %d" % (i + 1)


async def join(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return b" ".join([piece async for piece in requests])


def echo_service() -> grpc.GenericRpcHandler:
    raw = {"request_deserializer": None, "response_serializer": None}
    return grpc.method_handlers_generic_handler(
        "demo.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say, **raw),
            "Count": grpc.unary_stream_rpc_method_handler(count, **raw),
            "Join": grpc.stream_unary_rpc_method_handler(join, **raw),
        },
    )


async def serve(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((echo_service(),))
    checker = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    result = checker.set("", health_pb2.HealthCheckResponse.SERVING)
    if asyncio.iscoroutine(result):
        await result
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"example gRPC service on 127.0.0.1:{port} (h2c)", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=50051)
    asyncio.run(serve(parser.parse_args().port))
