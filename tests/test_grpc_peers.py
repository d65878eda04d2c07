"""The grpcio peers of tests/grpc_peers.py, exercised directly with a grpcio client, so the gateway's gRPC tests
(once the HTTP/2 upstream lands) start from peers known to work: every call shape, metadata both ways, every status
code with its details, deadlines, cancellation seen by the server, a 16 MiB message."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import grpc
import grpc.aio
import pytest

from tests.grpc_peers import SERVICE, channel_options, grpc_peer

pytestmark = pytest.mark.anyio


async def test_unary_and_metadata_both_ways_including_bin() -> None:
    async with grpc_peer() as peer, grpc.aio.insecure_channel(peer.target) as channel:
        call = channel.unary_unary(peer.method("Unary"))(
            b"hello", metadata=(("x-echo-id", "7"), ("x-echo-raw-bin", b"\x00\x01\xff"))
        )
        assert await call == b"hello"
        initial = await call.initial_metadata()
        trailing = await call.trailing_metadata()
        assert ("x-echo-id", "7") in list(initial) and ("x-echo-raw-bin", b"\x00\x01\xff") in list(initial)
        assert ("x-echo-raw-bin", b"\x00\x01\xff") in list(trailing)
        assert await call.code() == grpc.StatusCode.OK


async def test_server_client_and_bidi_streaming() -> None:
    async with grpc_peer() as peer, grpc.aio.insecure_channel(peer.target) as channel:
        replies = [reply async for reply in channel.unary_stream(peer.method("ServerStream"))(b"3")]
        assert replies == [b"msg-0", b"msg-1", b"msg-2"]

        async def three() -> AsyncIterator[bytes]:
            for word in (b"a", b"b", b"c"):
                yield word

        assert await channel.stream_unary(peer.method("ClientStream"))(three()) == b"a|b|c"
        bidi = channel.stream_stream(peer.method("Bidi"))()
        for word in (b"one", b"two"):  # each echo comes before the next message is sent
            await bidi.write(word)
            with anyio.fail_after(10):
                assert await bidi.read() == word
        await bidi.done_writing()
        assert await bidi.read() == grpc.aio.EOF


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK])
async def test_every_status_code_with_its_details(code: grpc.StatusCode) -> None:
    async with grpc_peer() as peer, grpc.aio.insecure_channel(peer.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(peer.method("Status"))(f"{code.value[0]}:details for {code.name} ✓".encode())
    assert caught.value.code() == code
    assert caught.value.details() == f"details for {code.name} ✓"


async def test_deadline_and_the_server_sees_the_cancellation() -> None:
    async with grpc_peer() as peer, grpc.aio.insecure_channel(peer.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(peer.method("Sleep"))(b"30", timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with anyio.fail_after(10):
            await peer.cancelled.wait()


async def test_client_cancellation_reaches_the_server() -> None:
    async with grpc_peer() as peer, grpc.aio.insecure_channel(peer.target) as channel:
        call = channel.unary_unary(peer.method("Sleep"))(b"30")
        with anyio.fail_after(10):
            while "Sleep" not in peer.calls:  # noqa: ASYNC110 - the peer offers no event for a call's start
                await anyio.sleep(0.01)
        call.cancel()
        with anyio.fail_after(10):
            await peer.cancelled.wait()
        assert await call.code() == grpc.StatusCode.CANCELLED


async def test_a_16_mib_message() -> None:
    message = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    async with grpc_peer() as peer, grpc.aio.insecure_channel(peer.target, options=channel_options()) as channel:
        assert await channel.unary_unary(peer.method("Big"))(message, timeout=60) == message


async def test_health_service_answers() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc_peer() as peer, grpc.aio.insecure_channel(peer.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
