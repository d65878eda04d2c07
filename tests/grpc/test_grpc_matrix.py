"""gRPC through the gateway with real grpcio peers on both sides: a ``grpc.aio`` client speaking h2c to an in-process
gateway, which speaks h2c (``protocol: h2c``) to a ``grpc.aio`` server (tests/grpc_peers.py).

The issue's matrix: unary, server streaming, client streaming and bidirectional streaming; metadata both ways
(``-bin`` values included); deadlines; a client's cancellation reaching the server; every status code with its
details; a 16 MiB message; 1,000 concurrent streams on one client connection; and the gateway's own answers as gRPC
statuses (no route, upstream down, rate limited, unauthenticated).
"""

from __future__ import annotations

import contextlib
import time
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

CODES = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]


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


async def test_unary_with_metadata_both_ways(peer: Peer) -> None:
    async with through_gateway(peer) as (channel, _):
        call = channel.unary_unary(peer.method("Unary"))(
            b"hello",
            metadata=(("x-echo-text", "plain value"), ("x-echo-bin", b"\x00\xff\r\n binary")),
            timeout=10,
        )
        assert await call == b"hello"
        initial = dict(await call.initial_metadata())
        trailing = dict(await call.trailing_metadata())
        assert await call.code() == grpc.StatusCode.OK
    for received in (initial, trailing):
        assert received["x-echo-text"] == "plain value"
        assert received["x-echo-bin"] == b"\x00\xff\r\n binary"  # -bin: base64 on the wire, bytes again at the client
    sent = dict(peer.metadata)
    assert sent["x-echo-bin"] == b"\x00\xff\r\n binary"
    assert sent["te"] == "trailers" if "te" in sent else True  # grpcio hides te; the call working proves it passed


async def test_server_streaming(peer: Peer) -> None:
    async with through_gateway(peer) as (channel, _):
        messages = [message async for message in channel.unary_stream(peer.method("ServerStream"))(b"50", timeout=10)]
    assert messages == [b"msg-%d" % i for i in range(50)]


async def test_client_streaming(peer: Peer) -> None:
    async def requests() -> AsyncIterator[bytes]:
        for i in range(20):
            yield b"part-%d" % i

    async with through_gateway(peer) as (channel, _):
        reply = await channel.stream_unary(peer.method("ClientStream"))(requests(), timeout=10)
    assert reply == b"|".join(b"part-%d" % i for i in range(20))


async def test_bidirectional_streaming_flows_message_by_message(peer: Peer) -> None:
    # Each message is sent only after the echo of the one before came back: a gateway that buffered either
    # direction (a request prebuffer, a response read to its end) would deadlock here, not just be slow.
    async with through_gateway(peer) as (channel, _):
        call = channel.stream_stream(peer.method("Bidi"))(timeout=20)
        for i in range(10):
            await call.write(b"ping-%d" % i)
            with anyio.fail_after(10):
                assert await call.read() == b"ping-%d" % i
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("code", CODES, ids=[code.name for code in CODES])
async def test_every_status_code_and_its_details_reach_the_client(peer: Peer, code: grpc.StatusCode) -> None:
    details = f"details of {code.name}: ünïcode, 100% (and %2F)"
    async with through_gateway(peer) as (channel, _):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await channel.unary_unary(peer.method("Status"))(f"{code.name}:{details}".encode(), timeout=10)
    assert raised.value.code() == code
    assert raised.value.details() == details


async def test_a_deadline_ends_the_call_upstream_too(peer: Peer) -> None:
    async with through_gateway(peer) as (channel, _):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await channel.unary_unary(peer.method("Sleep"))(b"30", timeout=0.5)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 10  # not the 30 s the server would sleep (generous: shared machine)
        with anyio.fail_after(10):
            await peer.cancelled.wait()  # grpc-timeout reached the server, or the gateway's reset did


async def test_a_client_cancelling_reaches_the_server(peer: Peer) -> None:
    async with through_gateway(peer) as (channel, _):
        call = channel.unary_unary(peer.method("Sleep"))(b"30", timeout=60)
        with anyio.fail_after(10):
            while "Sleep" not in peer.calls:  # noqa: ASYNC110 - the peer records calls in a list
                await anyio.sleep(0.01)
        call.cancel()
        with anyio.fail_after(10):
            await peer.cancelled.wait()  # RST_STREAM from the client -> the gateway resets its upstream stream


async def test_a_16_mib_message_both_ways(peer: Peer) -> None:
    message = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    async with through_gateway(peer) as (channel, _):
        reply = await channel.unary_unary(peer.method("Big"))(message, timeout=60)
    assert reply == message


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


async def test_an_upstream_that_is_down_is_unavailable() -> None:
    async with grpc_peer() as gone:
        port = gone.port
    config = gateway_config(port)
    async with run_gateway(Gateway(config)) as gateway:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await channel.unary_unary("/test.Peer/Unary")(b"", timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
