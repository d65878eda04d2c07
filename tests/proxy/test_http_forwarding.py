"""Requests reach the upstream as the client sent them, less what a proxy must change (issue 2)."""

from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest

from tests.conftest import GatewayFactory
from tests.rawhttp import parse_response, raw_exchange, read_until_closed
from tests.servers import RunningServer
from tests.upstream_app import Recorder

pytestmark = pytest.mark.anyio


def _get(target: bytes, *headers: bytes) -> bytes:
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: example.test\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + (b"Connection: close\r\n\r\n")
    )


@pytest.mark.parametrize(
    "target",
    [
        b"/echo/a%2Fb?x=%25&y=%2F",
        b"/echo?a=1&a=2&b",
        b"/echo?a=&b=&&c",
        b"/echo?",
        b"/echo;p=1/%7Euser?q=a+b&q=c%20d",
    ],
)
async def test_method_raw_path_and_query_are_forwarded_byte_for_byte(
    gateway: RunningServer, recorder: Recorder, target: bytes
) -> None:
    response = await raw_exchange(gateway.port, _get(target))
    assert response.status == 200
    record = recorder.last()
    path, _, query = target.partition(b"?")
    assert record["raw_path"].encode() == path
    assert record["query_string"].encode() == query


async def test_empty_query_question_mark_survives(upstream: RunningServer, gateway_for: GatewayFactory) -> None:
    # The upstream's scope cannot show a bare "?", so look at the bytes on the wire with a raw upstream.
    seen: list[bytes] = []

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            seen.append(data.split(b"\r\n", 1)[0])
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        async with gateway_for(f"http://127.0.0.1:{port}") as gw:
            for method in (b"GET", b"DELETE"):
                response = await raw_exchange(
                    gw.port, method + b" /p? HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                assert response.status == 200
        tg.cancel_scope.cancel()
    assert seen == [b"GET /p? HTTP/1.1", b"DELETE /p? HTTP/1.1"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
async def test_methods_are_forwarded(client: httpx.AsyncClient, recorder: Recorder, method: str) -> None:
    response = await client.request(method, "/echo")
    assert response.status_code == 200
    assert recorder.last()["method"] == method


async def test_path_prefix_in_upstream_url_is_honoured(
    upstream: RunningServer, recorder: Recorder, gateway_for: GatewayFactory
) -> None:
    async with gateway_for(upstream.url + "/base/") as gw:
        response = await raw_exchange(gw.port, _get(b"/x/y?z=1"))
    assert response.status == 200
    assert recorder.last()["raw_path"] == "/base/x/y"
    assert recorder.last()["query_string"] == "z=1"


async def test_request_body_streams_upstream_before_the_client_finishes(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    sent_last_at = 0.0

    first = b"f" * (70 * 1024)  # past server.request_prebuffer_bytes (64 KiB): from there on the body streams

    async def slow_body():  # type: ignore[no-untyped-def]
        nonlocal sent_last_at
        yield first
        await anyio.sleep(0.8)
        sent_last_at = time.monotonic()
        yield b"last piece"

    response = await client.post("/upload", content=slow_body())
    assert response.status_code == 200
    assert response.json()["size"] == len(first + b"last piece")
    assert recorder.first_body_byte_at is not None
    assert recorder.first_body_byte_at < sent_last_at - 0.5
    # no Content-Length from the client: chunked upstream
    assert recorder.header("transfer-encoding") == ["chunked"]
    assert recorder.header("content-length") == []


async def test_a_small_request_body_trickling_in_goes_upstream_whole_once_it_has_arrived(
    client: httpx.AsyncClient, recorder: Recorder
) -> None:
    sent_last_at = 0.0

    async def slow_body():  # type: ignore[no-untyped-def]
        nonlocal sent_last_at
        yield b"first piece;"
        await anyio.sleep(0.5)
        sent_last_at = time.monotonic()
        yield b"last piece"

    response = await client.post("/upload", content=slow_body())
    assert response.status_code == 200
    assert response.json()["size"] == len(b"first piece;last piece")
    assert recorder.first_body_byte_at is not None
    # within server.request_prebuffer_bytes: no upstream request until the whole body was here (framed as it came)
    assert recorder.first_body_byte_at >= sent_last_at
    assert recorder.header("transfer-encoding") == ["chunked"]


async def test_content_length_is_passed_through(client: httpx.AsyncClient, recorder: Recorder) -> None:
    body = b"x" * 300_000
    response = await client.post("/upload", content=body)
    assert response.json()["size"] == len(body)
    assert recorder.header("content-length") == [str(len(body))]
    assert recorder.header("transfer-encoding") == []


async def test_large_chunked_upload_arrives_intact(client: httpx.AsyncClient) -> None:
    import hashlib

    pieces = [bytes([i]) * 65536 for i in range(64)]

    async def body():  # type: ignore[no-untyped-def]
        for piece in pieces:
            yield piece

    response = await client.post("/upload", content=body())
    assert response.json() == {"size": 64 * 65536, "sha256": hashlib.sha256(b"".join(pieces)).hexdigest()}


async def test_empty_bodies_stay_empty(gateway: RunningServer, recorder: Recorder) -> None:
    response = await raw_exchange(
        gateway.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 200
    assert recorder.last()["body"] == ""
    assert recorder.header("content-length") == ["0"]
    response = await raw_exchange(gateway.port, _get(b"/echo"))
    assert recorder.header("content-length") == [] and recorder.header("transfer-encoding") == []


async def test_expect_100_continue_works(gateway: RunningServer, recorder: Recorder) -> None:
    async with await anyio.connect_tcp("127.0.0.1", gateway.port) as stream:
        await stream.send(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        with anyio.fail_after(5):
            interim = await stream.receive()
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        await stream.send(b"hello")
        rest = interim[len(b"HTTP/1.1 100 Continue\r\n\r\n") :] + await read_until_closed(stream)
    response = parse_response(rest)
    assert response.status == 200
    assert json.loads(response.body)["size"] == 5
    assert recorder.header("expect") == []


async def test_hop_by_hop_request_headers_are_removed(gateway: RunningServer, recorder: Recorder) -> None:
    await raw_exchange(
        gateway.port,
        _get(
            b"/echo",
            b"Connection: keep-alive, X-Secret, x-other",
            b"X-Secret: hidden",
            b"X-Other: hidden",
            b"Keep-Alive: timeout=5",
            b"Proxy-Connection: keep-alive",
            b"TE: trailers",
            b"Trailer: X-Checksum",
            b"Upgrade: h2c",
            b"X-Kept: yes",
        ),
    )
    names = {name for name, _ in recorder.last()["headers"]}
    for gone in ("x-secret", "x-other", "keep-alive", "proxy-connection", "trailer", "upgrade"):
        assert gone not in names
    # TE is hop-by-hop, but "trailers" goes on when the gateway can relay them (fastgate's protocol can; issue 17)
    assert recorder.header("te") == ["trailers"]
    assert recorder.header("x-kept") == ["yes"]
    # the gateway's own hop to the upstream is keep-alive; the client's Connection header never passes
    assert recorder.header("connection") == []


async def test_forwarded_headers_are_set(gateway: RunningServer, recorder: Recorder) -> None:
    await raw_exchange(
        gateway.port,
        _get(
            b"/echo",
            b"X-Forwarded-For: 203.0.113.7",
            b"X-Forwarded-Proto: https",
            b"X-Forwarded-Host: forged.test",
            b"Via: 1.0 edge",
        ),
    )
    assert recorder.header("x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    assert recorder.header("x-forwarded-proto") == ["http"]
    assert recorder.header("x-forwarded-host") == ["example.test"]
    assert recorder.header("via") == ["1.0 edge, 1.1 fastgate"]
    assert recorder.header("host") == ["example.test"]
    assert len(recorder.header("x-request-id")[0]) == 16


async def test_x_forwarded_for_is_set_when_absent(gateway: RunningServer, recorder: Recorder) -> None:
    await raw_exchange(gateway.port, _get(b"/echo"))
    assert recorder.header("x-forwarded-for") == ["127.0.0.1"]


async def test_rfc7239_forwarded_header_is_optional(
    upstream: RunningServer, recorder: Recorder, gateway_for: GatewayFactory
) -> None:
    async with gateway_for(upstream.url) as gw:
        await raw_exchange(gw.port, _get(b"/echo"))
    assert recorder.header("forwarded") == []
    async with gateway_for(upstream.url, forwarded=True) as gw:
        await raw_exchange(gw.port, _get(b"/echo", b"Forwarded: for=192.0.2.1"))
    assert recorder.header("forwarded") == ['for=192.0.2.1, for=127.0.0.1;proto=http;host="example.test"']


async def test_upstream_host_header_is_used_when_asked(
    upstream: RunningServer, recorder: Recorder, gateway_for: GatewayFactory
) -> None:
    async with gateway_for(upstream.url, preserve_host=False) as gw:
        await raw_exchange(gw.port, _get(b"/echo"))
    assert recorder.header("host") == [f"127.0.0.1:{upstream.port}"]
    assert recorder.header("x-forwarded-host") == ["example.test"]


async def test_request_id_is_kept_when_the_client_sends_one(client: httpx.AsyncClient, recorder: Recorder) -> None:
    await client.get("/echo", headers={"x-request-id": "abc-123"})
    assert recorder.header("x-request-id") == ["abc-123"]


@pytest.mark.parametrize("transport", ["fastgate", "httpx"])
async def test_shared_client_never_stores_or_replays_cookies(
    upstream: RunningServer, recorder: Recorder, gateway_for: GatewayFactory, transport: str
) -> None:
    async with gateway_for(upstream.url, transport=transport) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as alice:
            response = await alice.get("/cookies")
            assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]
        # a different client, with no cookies of its own, on the same pooled upstream connection
        response = await raw_exchange(gw.port, _get(b"/echo"))
        assert response.status == 200
    assert recorder.header("cookie") == []


# Raw-byte smuggling vectors (ambiguous framing, oversized heads, ...) live in the table of
# tests/hostile/test_requests.py, which also checks the upstream received no byte of a refused request.


async def test_request_with_a_non_websocket_upgrade_is_forwarded_without_upgrade(
    gateway: RunningServer, recorder: Recorder
) -> None:
    # An h2c upgrade offer (curl --http2 on http://): forwarded as plain HTTP/1.1, the offer stripped.
    response = await raw_exchange(
        gateway.port,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    assert response.status == 200
    assert recorder.header("upgrade") == [] and recorder.header("http2-settings") == []


async def test_body_sent_with_an_upgrade_offer_gets_400_not_a_hang(gateway: RunningServer) -> None:
    # llhttp stops at an upgrade offer and leaves the body unread: refusing is the only answer that loses nothing.
    response = await raw_exchange(
        gateway.port,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 5\r\n\r\nhello",
        limit=5,
    )
    assert response.status == 400


async def test_connection_closes_after_a_declined_upgrade_offer(gateway: RunningServer) -> None:
    async with await anyio.connect_tcp("127.0.0.1", gateway.port) as stream:
        await stream.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        response = parse_response(await read_until_closed(stream, 5))
    assert response.status == 200
    assert response.header(b"connection") == [b"close"]


async def test_request_body_shorter_than_content_length_never_leaves_the_upstream_waiting(
    gateway: RunningServer, recorder: Recorder
) -> None:
    # past server.request_prebuffer_bytes (64 KiB), so the body is under way upstream when the client leaves (a
    # shorter one never reaches the upstream: tests/hostile/test_slow_clients.py)
    async with await anyio.connect_tcp("127.0.0.1", gateway.port) as stream:
        await stream.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"h" * 70_000)
        with anyio.fail_after(5):
            await recorder.started.wait()
    # the client left mid-body: the upstream sees its connection close instead of waiting for 30,000 more bytes
    with anyio.fail_after(2):
        await recorder.disconnect_event.wait()
