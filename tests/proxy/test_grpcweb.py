"""gRPC-Web (issue 18): a ``grpc_web: true`` route translates gRPC-Web to gRPC and back, byte for byte as Envoy's
``grpc_web`` filter frames it; the trailers become the body's last frame (flag 0x80). Checked on the wire through a
real gateway and an HTTP/1.1 gRPC upstream (tests/grpc_http1.py)."""

from __future__ import annotations

import base64
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from fastgate import Gateway
from fastgate._protocol import FastgateHttpProtocol
from fastgate.config import build_config
from fastgate.exceptions import BadRequest
from fastgate.proxy.grpcweb import TextDecoder, grpc_type_for, grpc_web_type, trailer_frame
from tests.grpc_http1 import GrpcUpstream, frame, read_response
from tests.servers import free_port, run_gateway, run_server

pytestmark = pytest.mark.anyio

# -- pure -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "media"),
    [
        (b"application/grpc-web", b"application/grpc-web"),
        (b"application/grpc-web+proto", b"application/grpc-web+proto"),
        (b"application/grpc-web-text", b"application/grpc-web-text"),
        (b"Application/gRPC-Web-Text+proto; charset=x", b"application/grpc-web-text+proto"),
        (b"application/grpc", None),
        (b"application/grpc-webx", None),
        (b"application/grpc-web+", None),
        (b"application/grpc-web+a/b", None),
    ],
)
def test_grpc_web_media_types(value: bytes, media: bytes | None) -> None:
    assert grpc_web_type([(b"content-type", value)]) == media


def test_the_upstream_gets_the_grpc_type_with_the_codec_kept() -> None:
    assert grpc_type_for(b"application/grpc-web") == b"application/grpc"
    assert grpc_type_for(b"application/grpc-web-text") == b"application/grpc"
    assert grpc_type_for(b"application/grpc-web+proto") == b"application/grpc+proto"
    assert grpc_type_for(b"application/grpc-web-text+proto") == b"application/grpc+proto"


def test_trailer_frame_is_byte_exact() -> None:
    # Envoy's encodeTrailers: 0x80, a big-endian length, "key: value\r\n" per trailer, keys lower-case.
    fields = [(b"grpc-status", b"0"), (b"Grpc-Message", b"ok%20done"), (b"x-meta-bin", b"AAE=")]
    block = b"grpc-status: 0\r\ngrpc-message: ok%20done\r\nx-meta-bin: AAE=\r\n"
    assert trailer_frame(fields) == b"\x80" + struct.pack(">I", len(block)) + block
    assert trailer_frame([]) == b"\x80\x00\x00\x00\x00"


@pytest.mark.parametrize("cut", range(1, 12))
def test_text_bodies_decode_whatever_the_split(cut: int) -> None:
    payload = frame(b"hello") + frame(b"grpc-web!")
    # two padded segments back to back, as a client that encodes each message on its own sends them
    encoded = base64.b64encode(frame(b"hello")) + base64.b64encode(frame(b"grpc-web!"))
    pieces = [encoded[i : i + cut] for i in range(0, len(encoded), cut)]
    decoder = TextDecoder()
    assert b"".join(decoder.feed(piece) for piece in pieces) == payload
    decoder.end()


def test_text_body_errors_are_bad_requests() -> None:
    with pytest.raises(BadRequest):
        TextDecoder().feed(b"AA*A")
    decoder = TextDecoder()
    decoder.feed(b"AAA")
    with pytest.raises(BadRequest):
        decoder.end()


# -- through a real gateway ---------------------------------------------------------------------------------------

CORS = {
    "use": "cors",
    "options": {
        "allow_origins": ["https://app.example"],
        "allow_methods": ["POST"],
        "allow_headers": ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"],
        "expose_headers": ["grpc-status", "grpc-message"],
    },
}


@contextlib.asynccontextmanager
async def gateway_for(
    route: dict[str, Any] | None = None, url: str | None = None
) -> AsyncIterator[tuple[int, GrpcUpstream]]:
    upstream = GrpcUpstream()
    async with run_server(upstream, http=FastgateHttpProtocol) as up:
        routes = [{"prefix": "/test.Echo/", "upstream": "main", "grpc_web": True, **(route or {})}]
        config = build_config({"upstreams": {"main": {"url": url or up.url}}, "routes": routes})
        async with run_gateway(Gateway(config)) as gw:
            yield gw.port, upstream


def web_request(path: str, body: bytes, content_type: bytes, *extra: bytes) -> bytes:
    head = [
        b"POST " + path.encode() + b" HTTP/1.1",
        b"Host: gw.test",
        b"Content-Type: " + content_type,
        b"X-Grpc-Web: 1",
        b"Content-Length: %d" % len(body),
        *extra,
        b"Connection: close",
        b"",
        b"",
    ]
    return b"\r\n".join(head) + body


async def call(port: int, data: bytes, *pieces: bytes) -> Any:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        for piece in pieces:
            await stream.send(piece)
        return await read_response(stream)


async def test_binary_unary_is_translated_both_ways() -> None:
    async with gateway_for() as (port, upstream):
        response = await call(
            port, web_request("/test.Echo/Unary", frame(b"hello"), b"application/grpc-web+proto", b"X-Echo-Id: 7")
        )
    seen = upstream.requests[0]
    assert seen[b"content-type"] == b"application/grpc+proto" and seen[b"te"] == b"trailers"
    assert response.status == 200
    assert response.headers[b"content-type"] == b"application/grpc-web+proto"
    assert b"content-length" not in response.headers and b"grpc-status" not in response.headers
    assert response.body == frame(b"hello") + trailer_frame([(b"grpc-status", b"0"), (b"x-echo-id", b"7")])
    assert response.trailers == {}  # HTTP trailers: none, they are in the body


async def test_text_unary_split_anywhere_is_decoded_and_the_answer_encoded() -> None:
    encoded = base64.b64encode(frame(b"hello text"))
    head = web_request("/test.Echo/Unary", b"", b"application/grpc-web-text").replace(
        b"Content-Length: 0", b"Transfer-Encoding: chunked"
    )
    chunks = [b"%x\r\n%s\r\n" % (len(encoded[i : i + 3]), encoded[i : i + 3]) for i in range(0, len(encoded), 3)]
    async with gateway_for() as (port, upstream):
        response = await call(port, head, *chunks, b"0\r\n\r\n")
    assert upstream.requests[0][b"content-type"] == b"application/grpc"
    assert response.headers[b"content-type"] == b"application/grpc-web-text"
    expected = base64.b64encode(frame(b"hello text")) + base64.b64encode(trailer_frame([(b"grpc-status", b"0")]))
    assert response.body == expected


async def test_a_trailers_only_answer_becomes_the_trailer_frame() -> None:
    async with gateway_for() as (port, _):
        response = await call(port, web_request("/test.Echo/Fail", frame(b"x"), b"application/grpc-web"))
    assert response.headers[b"content-type"] == b"application/grpc-web"
    assert b"grpc-status" not in response.headers
    assert response.body == trailer_frame([(b"grpc-status", b"5"), (b"grpc-message", b"no such thing %E2%9C%93")])


async def test_the_gateways_own_error_is_a_trailer_frame_too() -> None:
    async with gateway_for(url=f"http://127.0.0.1:{free_port()}") as (port, _):
        response = await call(port, web_request("/test.Echo/Unary", frame(b"x"), b"application/grpc-web-text"))
    assert response.status == 200 and response.headers[b"content-type"] == b"application/grpc-web-text"
    decoded = base64.b64decode(response.body)
    assert decoded.startswith(b"\x80") and b"grpc-status: 14\r\n" in decoded and b"grpc-message: " in decoded


async def test_grpc_timeout_on_grpc_web_ends_with_deadline_exceeded_in_the_trailer_frame() -> None:
    async with gateway_for() as (port, _):
        request = web_request("/test.Echo/Stall", frame(b"x"), b"application/grpc-web", b"Grpc-Timeout: 300m")
        response = await call(port, request)
    assert response.body.startswith(frame(b"first") + b"\x80")
    assert b"grpc-status: 4\r\n" in response.body


async def test_without_grpc_web_the_request_passes_as_it_is() -> None:
    async with gateway_for({"grpc_web": False}) as (port, upstream):
        await call(port, web_request("/test.Echo/Unary", frame(b"x"), b"application/grpc-web"))
    assert upstream.requests[0][b"content-type"] == b"application/grpc-web"


async def test_cors_preflight_and_exposed_grpc_headers() -> None:
    async with gateway_for({"plugins": [CORS]}) as (port, upstream):
        preflight = await call(
            port,
            b"OPTIONS /test.Echo/Unary HTTP/1.1\r\nHost: gw.test\r\nOrigin: https://app.example\r\n"
            b"Access-Control-Request-Method: POST\r\n"
            b"Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent,grpc-timeout\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert preflight.status == 204
        allowed = preflight.headers[b"access-control-allow-headers"].lower()
        for name in (b"x-grpc-web", b"x-user-agent", b"grpc-timeout", b"content-type"):
            assert name in allowed
        response = await call(
            port,
            web_request("/test.Echo/Unary", frame(b"x"), b"application/grpc-web+proto", b"Origin: https://app.example"),
        )
    assert response.headers[b"access-control-allow-origin"] == b"https://app.example"
    assert response.headers[b"access-control-expose-headers"] == b"grpc-status, grpc-message"
    assert response.body.endswith(trailer_frame([(b"grpc-status", b"0")]))
    assert len(upstream.requests) == 1  # the preflight never went upstream
