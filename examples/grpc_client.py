"""Call the example gRPC service through fastgate: unary, server streaming, client streaming, and the health check.

    python examples/grpc_client.py --target 127.0.0.1:8080

A plain (insecure) channel: gRPC speaks h2c with prior knowledge, which fastgate serves on its plain listener.
"""

from __future__ import annotations

import argparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        say = channel.unary_unary("/demo.Echo/Say")
        reply, call = say.with_call(b"hello through fastgate", timeout=5, metadata=(("x-demo", "1"),))
        print("Say:", reply.decode(), "| initial metadata:", dict(call.initial_metadata()))
        for message in channel.unary_stream("/demo.Echo/Count")(b"3", timeout=5):
            print("Count:", message.decode())
        print("Join:", channel.stream_unary("/demo.Echo/Join")(iter([b"a", b"b", b"c"]), timeout=5).decode())
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        print("Health:", health_pb2.HealthCheckResponse.ServingStatus.Name(status.status))
        try:
            channel.unary_unary("/demo.Echo/Missing")(b"", timeout=5)
        except grpc.RpcError as exc:
            print("Missing:", exc.code().name, "-", exc.details())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:8080")
    main(parser.parse_args().target)
