"""Upstream trailers (issue 17, item 12): never merged into the head, bounded, relayed only as trailers.

A raw upstream on 127.0.0.1 answers with a chunked body and a trailer section that carries ``Set-Cookie``; before
the fix, that cookie reached the client as a response header. Now a client that sent ``TE: trailers`` gets the
permitted fields as trailers (fastgate's server protocol offers ASGI's HTTP Trailers extension; Uvicorn's protocols
do not, so there nobody gets them), any other client gets none, and a trailer section over the upstream's
``max_response_header_bytes`` breaks the response off as an upstream error after the body.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from fastgate import Gateway, GatewayConfig
from fastgate.config import UpstreamConfig
from fastgate.proxy.headers import request_headers
from fastgate.proxy.trailers import DROPPED_TRAILERS, accepts_trailers, response_trailers
from fastgate.upstream.transport import FastgateTransport, UpstreamRequest
from tests.misbehaving import raw_upstream
from tests.rawhttp import dechunk, parse_response, read_until_closed
from tests.reload_support import fastgate_run, gateway_config, write_config
from tests.servers import SERVER_PATHS, captured_logs, free_port, run_gateway

pytestmark = pytest.mark.anyio

HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Trailer: Grpc-Status, X-Checksum, Set-Cookie\r\n"
    b"\r\n"
)
BODY = b"5\r\nhello\r\n6\r\n world\r\n"
TRAILERS = (
    b"0\r\n"
    b"Grpc-Status: 0\r\n"
    b"Set-Cookie: session=attacker\r\n"
    b"X-Checksum: abc\r\n"
    b"Cache-Control: no-store\r\n"
    b"Host: evil.example\r\n"
    b"\r\n"
)
# What a client that sent TE: trailers gets after the body: the permitted fields only, names lower-cased.
RELAYED = b"0\r\ngrpc-status: 0\r\nx-checksum: abc\r\n\r\n"
LIMIT = 4096  # the upstream's max_response_header_bytes in these tests


class TrailerUpstream:
    """A raw HTTP/1.1 upstream: keep-alive, every request head recorded, answers chosen by path.

    ``/trailers``: a chunked body with ``TRAILERS``, in one write (``?split``: head, body and trailers in three,
    so the head is relayed before the trailers exist). ``/plain``: a chunked body without trailers. ``/huge``:
    trailer fields past ``LIMIT`` in all; ``/endless``: one trailer field that never ends (1 MiB and counting).
    Both of the last keep the connection open, so only the gateway's bound can end the response.
    """

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.release = anyio.Event()

    async def __call__(self, stream: anyio.abc.SocketStream, number: int) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive()
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            self.heads.append(head)
            target = head.split(b" ", 2)[1]
            if target == b"/trailers":
                await stream.send(HEAD + BODY + TRAILERS)
            elif target == b"/trailers?split":
                for piece in (HEAD, BODY, TRAILERS):
                    await stream.send(piece)
                    await anyio.sleep(0.05)  # separate reads upstream-side; the test holds without it too
            elif target == b"/plain":
                await stream.send(HEAD + BODY + b"0\r\n\r\n")
            elif target == b"/huge":
                fields = b"".join(b"X-Field-%04d: %s\r\n" % (i, b"v" * 40) for i in range(200))  # ~11 KB
                await stream.send(HEAD + BODY + b"0\r\n" + fields)
                await self.release.wait()
                return
            elif target == b"/endless":
                await stream.send(HEAD + BODY + b"0\r\nX-Endless: ")
                for _ in range(64):
                    await stream.send(b"a" * 16384)
                await self.release.wait()
                return
            else:
                await stream.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    def te_headers(self) -> list[list[bytes]]:
        """The ``te`` values each request head reaching the upstream carried."""
        return [
            [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:] if line.lower().startswith(b"te:")]
            for head in self.heads
        ]


@contextlib.asynccontextmanager
async def gateway_and_upstream(
    server_path: str, transport: str = "fastgate"
) -> AsyncIterator[tuple[int, TrailerUpstream, list[int]]]:
    upstream = TrailerUpstream()
    async with raw_upstream(upstream) as (url, connections):
        timeouts = {"read": 30, "stream_idle": 60}
        config = GatewayConfig.single(url, max_response_header_bytes=LIMIT, timeouts=timeouts, transport=transport)
        http, _ = SERVER_PATHS[server_path]
        async with run_gateway(Gateway(config), http=http) as server:
            try:
                yield server.port, upstream, connections
            finally:
                upstream.release.set()


def request(target: bytes, *extra: bytes) -> bytes:
    return b"\r\n".join([b"GET " + target + b" HTTP/1.1", b"Host: gw.test", *extra, b"Connection: close", b"", b""])


async def exchange(port: int, data: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        return await read_until_closed(stream, 15)


def no_trailer_in_head(raw: bytes) -> None:
    head = raw.partition(b"\r\n\r\n")[0].lower()
    for name in (b"set-cookie", b"grpc-status", b"x-checksum", b"cache-control", b"x-field-0000", b"x-endless"):
        assert name not in head, name
    assert b"evil.example" not in head


# -- the regression: trailers never reach the head ------------------------------------------------------------


@pytest.mark.parametrize("target", [b"/trailers", b"/trailers?split"])
@pytest.mark.parametrize("server_path", ["fastgate-protocol", "httptools", "h11"])
async def test_upstream_trailers_are_never_merged_into_the_response_head(server_path: str, target: bytes) -> None:
    async with gateway_and_upstream(server_path) as (port, upstream, _):
        raw = await exchange(port, request(target))
    response = parse_response(raw)
    assert response.status == 200
    no_trailer_in_head(raw)
    assert response.header(b"transfer-encoding") == [b"chunked"]
    assert response.header(b"trailer") == []  # hop-by-hop: the client gets no promise of trailers
    assert dechunk(response.body) == b"hello world"
    # without TE: trailers, the body ends with an empty trailer section
    assert response.body.endswith(b"\r\n0\r\n\r\n")
    assert upstream.te_headers() == [[]]


async def test_a_client_that_sent_te_trailers_gets_the_permitted_trailers_under_fastgates_protocol() -> None:
    async with gateway_and_upstream("fastgate-protocol") as (port, upstream, _):
        for target in (b"/trailers", b"/trailers?split"):
            raw = await exchange(port, request(target, b"TE: trailers"))
            response = parse_response(raw)
            assert response.status == 200
            no_trailer_in_head(raw)
            assert dechunk(response.body) == b"hello world"
            # the exact trailer section: Set-Cookie, Cache-Control and Host are dropped, the rest lower-cased
            assert response.body.endswith(b"\r\n" + RELAYED)
            assert response.body.count(b"\r\n0\r\n") == 1  # one last chunk
        # the upstream was told the client takes trailers: TE: trailers, and only that
        assert upstream.te_headers() == [[b"trailers"], [b"trailers"]]


async def test_te_with_other_codings_goes_upstream_as_trailers_only() -> None:
    async with gateway_and_upstream("fastgate-protocol") as (port, upstream, _):
        raw = await exchange(port, request(b"/trailers", b"TE: gzip;q=0.5, Trailers", b"Connection: TE"))
        assert parse_response(raw).body.endswith(b"\r\n" + RELAYED)
        raw = await exchange(port, request(b"/trailers", b"TE: gzip"))
        assert parse_response(raw).body.endswith(b"\r\n0\r\n\r\n")
    assert upstream.te_headers() == [[b"trailers"], []]


@pytest.mark.parametrize("server_path", ["httptools", "h11"])
async def test_under_plain_uvicorn_trailers_are_dropped_and_te_is_not_forwarded(server_path: str) -> None:
    # Uvicorn does not offer ASGI's http.response.trailers extension: we cannot relay, so we do not ask for them
    async with gateway_and_upstream(server_path) as (port, upstream, _):
        raw = await exchange(port, request(b"/trailers", b"TE: trailers"))
    response = parse_response(raw)
    no_trailer_in_head(raw)
    assert dechunk(response.body) == b"hello world"
    assert response.body.endswith(b"\r\n0\r\n\r\n")
    assert upstream.te_headers() == [[]]


async def test_with_the_httpx_transport_trailers_are_dropped_and_te_is_not_forwarded() -> None:
    # httpx (httpcore over h11) reads trailer fields and drops them: the upstream must not count on them
    async with gateway_and_upstream("fastgate-protocol", "httpx") as (port, upstream, _):
        raw = await exchange(port, request(b"/trailers?split", b"TE: trailers"))
    response = parse_response(raw)
    no_trailer_in_head(raw)
    assert dechunk(response.body) == b"hello world"
    assert response.body.endswith(b"\r\n0\r\n\r\n")
    assert upstream.te_headers() == [[]]


async def test_an_http_1_0_client_with_te_trailers_gets_none() -> None:
    # HTTP/1.0 has no chunked encoding: the body is close-delimited and has nowhere to carry trailers
    async with gateway_and_upstream("fastgate-protocol") as (port, upstream, _):
        raw = await exchange(port, b"GET /trailers HTTP/1.0\r\nHost: gw.test\r\nTE: trailers\r\n\r\n")
    response = parse_response(raw)
    assert response.body == b"hello world"
    no_trailer_in_head(raw)
    assert upstream.te_headers() == [[]]


async def test_keep_alive_survives_trailers_on_both_sides() -> None:
    async with gateway_and_upstream("fastgate-protocol") as (port, upstream, connections):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            keep = b"GET %s HTTP/1.1\r\nHost: gw.test\r\nTE: trailers\r\n\r\n"
            raw = b""
            with anyio.fail_after(15):
                for target in (b"/trailers", b"/plain", b"/trailers"):
                    await stream.send(keep % target)
                    while not raw.endswith(b"\r\n\r\n") or raw.count(b"\r\n0\r\n") < 1:
                        raw += await stream.receive()
                    head, _, body = raw.partition(b"\r\n\r\n")
                    no_trailer_in_head(raw)
                    assert dechunk(body) == b"hello world"
                    assert body.endswith(b"\r\n" + RELAYED if target == b"/trailers" else b"\r\n0\r\n\r\n")
                    raw = b""
    # one client connection, one upstream connection: the trailers ended each response cleanly
    assert connections == [1]
    assert len(upstream.heads) == 3


# -- the bound ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("te", [b"TE: trailers", b"X-No-TE: 1"])
@pytest.mark.parametrize("target", [b"/huge", b"/endless"])
@pytest.mark.parametrize("server_path", ["fastgate-protocol", "httptools"])
async def test_trailers_over_the_head_limit_break_the_response_off_after_the_body(
    server_path: str, target: bytes, te: bytes
) -> None:
    async with gateway_and_upstream(server_path) as (port, _, _):
        with captured_logs("fastgate.error", logging.WARNING) as errors:
            # the upstream holds its connection open: only the bound can end this before the 60 s idle timeout
            raw = await exchange(port, request(target, te))
    response = parse_response(raw)
    assert response.status == 200
    no_trailer_in_head(raw)
    # the body arrived; no end of it, no trailers: the client sees an incomplete response
    assert b"hello" in response.body and b" world" in response.body
    assert not response.body.endswith(b"\r\n\r\n")
    assert b"x-field" not in raw.lower() and b"x-endless" not in raw.lower()
    lines = [record.getMessage() for record in errors.records]
    assert any("broke off the response" in line and f"over {LIMIT} bytes" in line for line in lines), lines


# -- through a real `fastgate run` ----------------------------------------------------------------------------


async def test_trailers_through_fastgate_run(tmp_path: Path) -> None:
    upstream = TrailerUpstream()
    async with raw_upstream(upstream) as (url, _):
        port = free_port()
        config = gateway_config({"api": url}, [{"prefix": "/", "upstream": "api"}], port=port)
        config["upstreams"]["api"]["max_response_header_bytes"] = LIMIT
        config["upstreams"]["api"]["timeouts"] = {"stream_idle": 60}
        path = tmp_path / "gateway.yaml"
        write_config(path, config)
        with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
            relayed = await exchange(port, request(b"/trailers?split", b"TE: trailers"))
            dropped = await exchange(port, request(b"/trailers"))
            broken = await exchange(port, request(b"/huge", b"TE: trailers"))
            upstream.release.set()
            log = gateway.log()
    for raw in (relayed, dropped, broken):
        no_trailer_in_head(raw)
    assert parse_response(relayed).body.endswith(b"\r\n" + RELAYED)
    assert parse_response(dropped).body.endswith(b"\r\n0\r\n\r\n")
    assert dechunk(parse_response(relayed).body) == dechunk(parse_response(dropped).body) == b"hello world"
    assert not parse_response(broken).body.endswith(b"\r\n\r\n")
    assert f"trailers from upstream over {LIMIT} bytes" in log  # max_response_header_bytes reached the process
    assert upstream.te_headers()[:2] == [[b"trailers"], []]


# -- the upstream response object -----------------------------------------------------------------------------


async def test_upstream_response_keeps_trailers_apart_and_gives_them_after_the_body() -> None:
    upstream = TrailerUpstream()
    async with raw_upstream(upstream) as (url, _):
        async with FastgateTransport("api", UpstreamConfig(url=url)) as transport:
            for target in (b"/trailers", b"/trailers?split", b"/plain"):
                response = await transport.send(UpstreamRequest(b"GET", target, [(b"host", b"api")]), None)
                assert [name.lower() for name, _ in response.headers] == [
                    b"content-type",
                    b"transfer-encoding",
                    b"trailer",
                ]
                body = b""
                while chunk := await response.read():
                    assert target == b"/trailers" or response.trailers is None  # nothing before the end
                    body += chunk
                assert body == b"hello world"
                expected = (
                    None
                    if target == b"/plain"
                    else [
                        (b"Grpc-Status", b"0"),
                        (b"Set-Cookie", b"session=attacker"),
                        (b"X-Checksum", b"abc"),
                        (b"Cache-Control", b"no-store"),
                        (b"Host", b"evil.example"),
                    ]
                )
                assert response.trailers == expected
                await response.aclose()
                assert response.trailers == expected  # still there once the connection went back to the pool
            assert transport.pool.stats().connects == 1


# -- fastgate's server protocol with any ASGI app -------------------------------------------------------------


async def test_fastgates_protocol_writes_asgi_trailers_and_refuses_injection() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        assert "http.response.trailers" in scope["extensions"]
        # a Content-Length body (and a HEAD) has no trailer section: the trailers are dropped, the response ends
        headers = [(b"content-length", b"4")] if scope["path"] == "/length" else []
        await send({"type": "http.response.start", "status": 200, "headers": headers, "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": False})
        if scope["path"] == "/inject":
            fields = [(b"x-a", b"1\r\nset-cookie: x=1")]
            with pytest.raises(RuntimeError, match="Invalid HTTP trailer"):
                await send({"type": "http.response.trailers", "headers": fields, "more_trailers": False})
            return
        await send({"type": "http.response.trailers", "headers": [(b"X-A", b"1")], "more_trailers": True})
        await send({"type": "http.response.trailers", "headers": [(b"x-b", b"2")], "more_trailers": False})

    async with run_gateway(app, lifespan="off") as server:
        raw = await exchange(server.port, request(b"/"))
        assert raw.endswith(b"\r\n\r\n4\r\ndata\r\n0\r\nx-a: 1\r\nx-b: 2\r\n\r\n")
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            received = b""
            with anyio.fail_after(10):
                for method in (b"GET", b"HEAD", b"GET"):
                    await stream.send(method + b" /length HTTP/1.1\r\nHost: x\r\n\r\n")
                    expected = b"\r\n\r\n" if method == b"HEAD" else b"\r\n\r\ndata"
                    while not received.endswith(expected):  # on one kept-alive connection, each response complete
                        received += await stream.receive()
                    assert b"x-a" not in received and b"x-b" not in received
                    received = b""
        injected = await exchange(server.port, request(b"/inject"))
    assert b"set-cookie" not in injected
    assert not injected.endswith(b"\r\n\r\n")  # aborted: the app never completed its response


# -- the pure policy ------------------------------------------------------------------------------------------


def test_response_trailers_drop_what_must_not_follow_the_content() -> None:
    raw = [
        (b"Grpc-Status", b"0"),
        (b"grpc-message", b"ok"),
        (b"Set-Cookie", b"session=attacker"),
        (b"Content-Length", b"5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Trailer", b"x"),
        (b"TE", b"trailers"),
        (b"Host", b"evil"),
        (b"Authorization", b"Bearer x"),
        (b"WWW-Authenticate", b"Basic"),
        (b"Content-Type", b"text/html"),
        (b"Location", b"https://evil.example/"),
        (b"If-Match", b"x"),
        (b"X-Hop", b"1"),
        (b"X-Checksum", b"abc"),
    ]
    assert response_trailers(raw, [(b"Connection", b"x-hop")]) == [
        (b"grpc-status", b"0"),
        (b"grpc-message", b"ok"),
        (b"x-checksum", b"abc"),
    ]
    assert {b"set-cookie", b"content-length", b"transfer-encoding", b"host", b"authorization"} <= DROPPED_TRAILERS


def test_accepts_trailers_reads_the_te_token_list() -> None:
    assert accepts_trailers([b"trailers"])
    assert accepts_trailers([b"gzip", b"deflate;q=0.5, TRAILERS"])
    assert not accepts_trailers([b"gzip, deflate"])
    assert not accepts_trailers([b"trailersx"])
    assert not accepts_trailers([])


def test_request_headers_forward_te_trailers_alone() -> None:
    def te(raw: list[tuple[bytes, bytes]]) -> tuple[list[bytes], bool]:
        head = request_headers(raw, client=b"10.0.0.1", scheme=b"http", upstream_authority=b"api")
        return [value for name, value in head.headers if name == b"te"], head.trailers

    assert te([(b"host", b"x"), (b"te", b"gzip, trailers"), (b"connection", b"te")]) == ([b"trailers"], True)
    assert te([(b"host", b"x"), (b"te", b"gzip")]) == ([], False)
    assert te([(b"host", b"x")]) == ([], False)
