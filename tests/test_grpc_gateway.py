"""gRPC through the gateway end to end: a grpcio client speaking h2c to fastgate, fastgate speaking h2c
(``protocol: h2c``) to a grpcio server (tests/grpc_peers.py). Unary, server, client and bidi streaming, metadata both
ways, every status code with its details, deadlines, cancellation reaching the server, a 16 MiB message, and the
gateway's own gRPC answers (no route, upstream down) as a grpcio client sees them."""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpc
import grpc.aio
import pytest

from fastgate import Gateway
from fastgate.config import build_config
from fastgate.proxy.grpcweb import trailer_frame
from tests.grpc_http1 import frame, read_response
from tests.grpc_peers import Peer, channel_options, grpc_peer
from tests.http2.client import h2_connect
from tests.servers import captured_logs, free_port, run_gateway

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def through_gateway(url: str | None = None, **route: Any) -> AsyncIterator[tuple[grpc.aio.Channel, Peer]]:
    async with grpc_peer() as peer:
        upstream = {"url": url or f"http://{peer.target}", "protocol": "h2c", "timeouts": {"read": 60}}
        config = build_config(
            {"upstreams": {"peer": upstream}, "routes": [{"prefix": "/test.Peer/", "upstream": "peer", **route}]}
        )
        async with run_gateway(Gateway(config)) as gw:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}", options=channel_options()) as channel:
                yield channel, peer


async def test_unary_with_metadata_both_ways() -> None:
    async with through_gateway() as (channel, peer):
        call = channel.unary_unary(peer.method("Unary"))(
            b"hello", metadata=(("x-echo-id", "7"), ("x-echo-raw-bin", b"\x00\x01\xff")), timeout=10
        )
        assert await call == b"hello"
        assert ("x-echo-id", "7") in list(await call.initial_metadata())
        assert ("x-echo-raw-bin", b"\x00\x01\xff") in list(await call.trailing_metadata())
        assert ("x-echo-raw-bin", b"\x00\x01\xff") in peer.metadata


async def test_streaming_shapes() -> None:
    async with through_gateway() as (channel, peer):
        replies = [r async for r in channel.unary_stream(peer.method("ServerStream"))(b"5", timeout=10)]
        assert replies == [b"msg-%d" % i for i in range(5)]

        async def three() -> AsyncIterator[bytes]:
            for word in (b"a", b"b", b"c"):
                yield word

        assert await channel.stream_unary(peer.method("ClientStream"))(three(), timeout=10) == b"a|b|c"
        bidi = channel.stream_stream(peer.method("Bidi"))(timeout=20)
        for word in (b"one", b"two", b"three"):  # the next message only after the echo of the last
            await bidi.write(word)
            with anyio.fail_after(10):
                assert await bidi.read() == word
        await bidi.done_writing()
        assert await bidi.read() == grpc.aio.EOF


async def test_every_status_code_and_its_details_pass_through() -> None:
    seen = {}
    async with through_gateway() as (channel, peer):
        for code in grpc.StatusCode:
            if code is grpc.StatusCode.OK:
                continue
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(peer.method("Status"))(
                    f"{code.value[0]}:why ✓ {code.name}".encode(), timeout=10
                )
            seen[code] = (caught.value.code(), caught.value.details())
    assert seen == {code: (code, f"why ✓ {code.name}") for code in grpc.StatusCode if code is not grpc.StatusCode.OK}


async def test_the_client_deadline_reaches_the_server_and_ends_the_call() -> None:
    async with through_gateway() as (channel, peer):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(peer.method("Sleep"))(b"30", timeout=0.5)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with anyio.fail_after(15):
            await peer.cancelled.wait()


async def test_client_cancellation_reaches_the_server() -> None:
    async with through_gateway() as (channel, peer):
        call = channel.unary_unary(peer.method("Sleep"))(b"30")
        with anyio.fail_after(10):
            while "Sleep" not in peer.calls:  # noqa: ASYNC110 - the peer offers no event for a call's start
                await anyio.sleep(0.01)
        call.cancel()
        with anyio.fail_after(15):
            await peer.cancelled.wait()


async def test_a_16_mib_message_both_ways() -> None:
    message = bytes(range(256)) * (16 * 1024 * 1024 // 256)
    async with through_gateway() as (channel, peer):
        assert await channel.unary_unary(peer.method("Big"))(message, timeout=60) == message


async def test_no_route_is_unimplemented() -> None:
    async with through_gateway() as (channel, _):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary("/other.Service/Call")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details().startswith("no route for /other.Service/Call")


async def test_upstream_down_is_unavailable() -> None:
    async with through_gateway(url=f"http://127.0.0.1:{free_port()}") as (channel, peer):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(peer.method("Unary"))(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_rate_limited_is_resource_exhausted() -> None:
    async with through_gateway(rate_limit={"rate": 1, "per": "1m", "burst": 1}) as (channel, peer):
        assert await channel.unary_unary(peer.method("Unary"))(b"x", timeout=10) == b"x"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await channel.unary_unary(peer.method("Unary"))(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_grpc_web_text_from_a_browser_to_a_grpcio_server() -> None:
    body = base64.b64encode(frame(b"from a browser"))
    async with grpc_peer() as peer:
        upstream = {"url": f"http://{peer.target}", "protocol": "h2c"}
        routes = [{"prefix": "/test.Peer/", "upstream": "peer", "grpc_web": True}]
        async with run_gateway(Gateway(build_config({"upstreams": {"peer": upstream}, "routes": routes}))) as gw:
            async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
                await stream.send(
                    b"POST /test.Peer/Unary HTTP/1.1\r\nHost: gw\r\nContent-Type: application/grpc-web-text\r\n"
                    b"X-Grpc-Web: 1\r\nX-Echo-Id: 9\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )
                response = await read_response(stream)
    assert response.headers[b"content-type"] == b"application/grpc-web-text"
    decoded = b"".join(base64.b64decode(piece) for piece in _segments(response.body))
    assert decoded.startswith(frame(b"from a browser"))
    trailer = decoded[len(frame(b"from a browser")) :]
    assert trailer[:1] == b"\x80" and b"grpc-status: 0\r\n" in trailer and b"x-echo-id: 9\r\n" in trailer


def _segments(text: bytes) -> list[bytes]:
    """Concatenated padded base64 segments, split after each padding run (a segment without padding runs on)."""
    out, start, index = [], 0, 0
    while index < len(text):
        if text[index : index + 1] == b"=":
            while text[index : index + 1] == b"=":
                index += 1
            out.append(text[start:index])
            start = index
        else:
            index += 1
    if start < len(text):
        out.append(text[start:])
    return out


async def test_a_thousand_concurrent_calls_on_one_client_connection() -> None:
    """1,000 unary calls started at once on one grpcio channel (one HTTP/2 connection to the gateway; past the
    gateway's max_concurrent_streams of 100 the client queues them), every one answered with its own message."""
    replies: dict[int, bytes] = {}
    async with through_gateway() as (channel, peer):
        method = channel.unary_unary(peer.method("Unary"))

        async def one(index: int) -> None:
            replies[index] = await method(b"call-%d" % index, timeout=120)

        with anyio.fail_after(150):
            async with anyio.create_task_group() as group:
                for index in range(1000):
                    group.start_soon(one, index)
    assert replies == {index: b"call-%d" % index for index in range(1000)}


async def test_the_access_line_and_the_metric_carry_the_upstreams_grpc_status() -> None:
    logger = logging.getLogger("fastgate.access")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with grpc_peer() as peer:
            upstream = {"url": f"http://{peer.target}", "protocol": "h2c"}
            config = build_config(
                {
                    "upstreams": {"peer": upstream},
                    "routes": [{"name": "peer", "prefix": "/test.Peer/", "upstream": "peer"}],
                    "metrics": {"enabled": True},
                }
            )
            gateway = Gateway(config)
            async with run_gateway(gateway) as gw, grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
                with captured_logs("fastgate.access", logging.INFO) as lines:
                    assert await channel.unary_unary(peer.method("Unary"))(b"x", timeout=10) == b"x"
                    with pytest.raises(grpc.aio.AioRpcError):
                        await channel.unary_unary(peer.method("Status"))(b"5:gone", timeout=10)
                assert gateway.metrics is not None
                metrics = gateway.metrics.render()[0].decode()
    finally:
        logger.setLevel(level)
    ok, missing = [record.getMessage() for record in lines.records]
    assert '"POST /test.Peer/Unary HTTP/2' in ok and ok.split(" request_id=")[1].endswith("grpc_status=0")
    assert " 200 " in missing and missing.endswith("grpc_status=5")
    for code in ("0", "5"):
        assert f'fastgate_grpc_responses_total{{grpc_status="{code}",route="peer",upstream="peer"}} 1.0' in metrics


@contextlib.asynccontextmanager
async def h2_gateway(peer: Peer, **route: Any) -> AsyncIterator[int]:
    upstream = {"url": f"http://{peer.target}", "protocol": "h2c"}
    routes = [{"prefix": "/test.Peer/", "upstream": "peer", **route}]
    async with run_gateway(Gateway(build_config({"upstreams": {"peer": upstream}, "routes": routes}))) as gw:
        yield gw.port


async def test_grpc_web_over_http2_from_the_client() -> None:
    async with grpc_peer() as peer, h2_gateway(peer, grpc_web=True) as port, h2_connect(port) as client:
        headers = [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1"), ("x-echo-id", "3")]
        stream = await client.request("POST", "/test.Peer/Unary", headers, frame(b"h2 browser"))
        state = await client.response(stream)
    assert state.status == 200 and state.header(b"content-type") == [b"application/grpc-web+proto"]
    assert state.trailers is None  # no HTTP/2 trailers: they are the body's last frame
    # grpcio's trailers, in its order (an empty grpc-message included), framed as Envoy frames them
    trailers = trailer_frame([(b"grpc-status", b"0"), (b"grpc-message", b""), (b"x-echo-id", b"3")])
    assert bytes(state.body) == frame(b"h2 browser") + trailers


async def test_the_gateways_deadline_over_http2_is_one_trailers_only_headers_frame() -> None:
    """A raw h2 client sends grpc-timeout: 300m to a call that sleeps 30 s; the gateway answers DEADLINE_EXCEEDED
    as a Trailers-Only response (its status in the HEADERS that end the stream), and the server sees the call go."""
    async with grpc_peer() as peer, h2_gateway(peer) as port, h2_connect(port) as client:
        headers = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "300m")]
        stream = await client.request("POST", "/test.Peer/Sleep", headers, frame(b"30"))
        state = await client.response(stream)
        with anyio.fail_after(15):
            await peer.cancelled.wait()
    assert state.status == 200 and state.header(b"grpc-status") == [b"4"]
    assert state.header(b"content-type") == [b"application/grpc"] and bytes(state.body) == b""
    assert state.trailers is None
