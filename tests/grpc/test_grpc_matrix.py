"""gRPC through the gateway with real grpcio peers on both sides, beside tests/test_grpc_gateway.py (the issue's
matrix): 1,000 streams truly concurrent on one client connection (``server.http2.max_concurrent_streams: 1000``, so
the client queues none of them and the upstream pool opens connections as it fills), and the gateway's own answers
as a grpcio client sees them, an auth plugin's refusal included.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from fastgate import Gateway, GatewayConfig
from tests.grpc_peers import Peer, channel_options, grpc_peer
from tests.servers import RunningServer, run_gateway

pytestmark = pytest.mark.anyio


def gateway_config(peer_port: int, **extra: Any) -> GatewayConfig:
    routes = extra.pop("routes", None) or [{"prefix": "/test.Peer/", "upstream": "peer"}]
    server = extra.pop("server", {})
    return GatewayConfig.model_validate(
        {
            "server": {"access_log": False, **server},
            "upstreams": {"peer": {"url": f"http://127.0.0.1:{peer_port}", "protocol": "h2c", **extra}},
            "routes": routes,
        }
    )


@contextlib.asynccontextmanager
async def through_gateway(peer: Peer, **extra: Any) -> AsyncIterator[tuple[grpc.aio.Channel, RunningServer]]:
    async with run_gateway(Gateway(gateway_config(peer.port, **extra))) as gateway:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}", options=channel_options()) as channel:
            yield channel, gateway


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    async with grpc_peer() as running:
        yield running


async def test_a_thousand_concurrent_streams_on_one_connection(peer: Peer) -> None:
    async with through_gateway(peer, server={"http2": {"max_concurrent_streams": 1000}}) as (channel, _):
        unary = channel.unary_unary(peer.method("Unary"))
        replies: list[bytes] = []

        async def one(i: int) -> None:
            replies.append(await unary(b"call-%d" % i, timeout=60))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(1000):
                    tg.start_soon(one, i)
    assert sorted(replies) == sorted(b"call-%d" % i for i in range(1000))


async def test_the_gateways_own_answers_are_grpc_statuses(peer: Peer, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("k1\n")
    routes = [
        {"prefix": "/test.Peer/Unary", "upstream": "peer", "rate_limit": {"rate": 1, "per": "60s", "burst": 1}},
        {
            "prefix": "/test.Peer/ServerStream",
            "upstream": "peer",
            "plugins": [{"use": "api_key", "options": {"header": "x-api-key", "keys_file": str(keys)}}],
        },
        {"prefix": "/test.Peer/", "upstream": "peer"},
    ]
    async with through_gateway(peer, routes=routes) as (channel, _):
        with pytest.raises(grpc.aio.AioRpcError) as no_route:
            await channel.unary_unary("/other.Service/Call")(b"", timeout=10)
        assert no_route.value.code() == grpc.StatusCode.UNIMPLEMENTED

        assert await channel.unary_unary(peer.method("Unary"))(b"first", timeout=10) == b"first"
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await channel.unary_unary(peer.method("Unary"))(b"second", timeout=10)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
            await channel.unary_stream(peer.method("ServerStream"))(b"1", timeout=10).read()
        assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
        streamed = channel.unary_stream(peer.method("ServerStream"))(b"2", timeout=10, metadata=(("x-api-key", "k1"),))
        assert [message async for message in streamed] == [b"msg-0", b"msg-1"]
