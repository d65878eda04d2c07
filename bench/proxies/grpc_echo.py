"""The gRPC upstream of bench/h2.py: a grpcio server (grpc.aio) whose one method, ``/bench.Echo/Unary``, answers each
request message with the same bytes. A generic handler with no (de)serializers: messages stay raw bytes, so no
protobuf code is generated or needed.

    python bench/proxies/grpc_echo.py --port 50051
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

METHOD = "/bench.Echo/Unary"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


class _Echo(grpc.GenericRpcHandler):
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method == METHOD:  # type: ignore[attr-defined]
            return grpc.unary_unary_rpc_method_handler(_echo)
        return None


async def _serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((_Echo(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    asyncio.run(_serve(p.parse_args().port))


if __name__ == "__main__":
    main()
