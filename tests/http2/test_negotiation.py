"""How a connection comes to speak HTTP/2 (issue 18, "Negotiation"): ALPN ``h2`` over TLS, the preface (h2c with
prior knowledge) on a plain listener, HTTP/1.1 beside both; ``server.http2.enabled: false`` brings back ALPN
``http/1.1`` only and a 505 to the preface; ``Upgrade: h2c`` is ignored (the request is served as HTTP/1.1)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from fastgate import Gateway, GatewayConfig
from fastgate.config import ServerConfig
from fastgate.http2 import PREFACE
from fastgate.server import uvicorn_options
from tests.http2.client import h2_connect
from tests.misbehaving import raw_upstream
from tests.proxy.test_trailers import TrailerUpstream
from tests.rawhttp import parse_response, read_until_closed
from tests.servers import RunningServer, run_gateway
from tests.serving.test_tls import Issued, https_gateway, https_url, issue, tls_config
from tests.upstream_app import Recorder

pytestmark = pytest.mark.anyio


@pytest.fixture
def issued(tmp_path: Path) -> Issued:
    return issue(tmp_path)


@contextlib.asynccontextmanager
async def plain_gateway(url: str, *, http2: bool = True) -> AsyncIterator[RunningServer]:
    config = GatewayConfig.single(url, server=ServerConfig(http2={"enabled": http2}))
    async with run_gateway(Gateway(config)) as server:
        yield server


async def alpn_of(port: int, context: ssl.SSLContext, offer: list[str]) -> str | None:
    context.set_alpn_protocols(offer)
    stream = await anyio.connect_tcp(
        "127.0.0.1", port, tls=True, ssl_context=context, tls_hostname="127.0.0.1", tls_standard_compatible=False
    )
    async with stream:  # closed without close_notify: an h2 server has spoken first (its SETTINGS)
        chosen: str | None = stream.extra(anyio.streams.tls.TLSAttribute.alpn_protocol)
        return chosen


async def test_tls_alpn_h2_serves_http2_and_http11_still_works(
    upstream: RunningServer, recorder: Recorder, issued: Issued
) -> None:
    body = bytes(range(256)) * 1024
    async with https_gateway(upstream.url, issued) as gw:
        assert await alpn_of(gw.port, issued.client_context(), ["h2", "http/1.1"]) == "h2"
        assert await alpn_of(gw.port, issued.client_context(), ["http/1.1"]) == "http/1.1"
        async with httpx.AsyncClient(base_url=https_url(gw), http2=True, verify=issued.client_context()) as client:
            h2 = await client.post("/upload", content=body)
            echoed = await client.get("/echo")
        async with httpx.AsyncClient(base_url=https_url(gw), verify=issued.client_context()) as client:
            h1 = await client.get("/echo")
    assert h2.http_version == "HTTP/2" and h2.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert echoed.json()["headers"].count(["x-forwarded-proto", "https"]) == 1
    assert h1.http_version == "HTTP/1.1" and h1.status_code == 200
    assert all(request["http_version"] == "1.1" for request in recorder.requests)


async def test_raw_h2_over_tls_gets_trailers_and_multiplexes(issued: Issued) -> None:
    async with raw_upstream(TrailerUpstream()) as (url, _):
        async with https_gateway(url, issued) as gw, h2_connect(gw.port, ssl_context=issued.client_context()) as h2:
            streams = [await h2.request("GET", "/trailers", [("te", "trailers")]) for _ in range(3)]
            states = [await h2.response(stream_id) for stream_id in streams]
    for state in states:
        assert state.status == 200 and state.body == b"hello world"
        assert state.trailers == [(b"grpc-status", b"0"), (b"x-checksum", b"abc")]


async def test_http2_disabled_offers_http11_only_by_alpn(upstream: RunningServer, issued: Issued) -> None:
    config = tls_config(upstream.url, issued, http2=False)
    options = {key: value for key, value in uvicorn_options(config).items() if key.startswith("ssl_")}
    async with run_gateway(Gateway(config), **options) as gw:
        assert await alpn_of(gw.port, issued.client_context(), ["h2", "http/1.1"]) == "http/1.1"
        async with httpx.AsyncClient(base_url=https_url(gw), http2=True, verify=issued.client_context()) as client:
            response = await client.get("/echo")
    assert response.http_version == "HTTP/1.1" and response.status_code == 200


@pytest.mark.parametrize("enabled", [True, False])
async def test_preface_on_a_plain_listener_is_h2c_unless_disabled(
    upstream: RunningServer, recorder: Recorder, enabled: bool
) -> None:
    async with plain_gateway(upstream.url, http2=enabled) as gw:
        if enabled:
            async with httpx.AsyncClient(base_url=gw.url, http1=False, http2=True) as client:
                response = await client.get("/echo")
            assert response.http_version == "HTTP/2" and response.status_code == 200
        else:
            async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
                await stream.send(PREFACE)
                raw = parse_response(await read_until_closed(stream, 10))
            assert raw.status == 505
            assert not recorder.requests
        # HTTP/1.1 on the same listener either way.
        async with httpx.AsyncClient(base_url=gw.url) as client:
            h1 = await client.get("/echo")
        assert h1.http_version == "HTTP/1.1" and h1.status_code == 200


async def test_upgrade_h2c_is_ignored_and_served_as_http11(upstream: RunningServer, recorder: Recorder) -> None:
    # (with a body the offer is refused, 400: tests/proxy/test_http_forwarding.py)
    request = (
        b"GET /echo HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    async with plain_gateway(upstream.url) as gw, await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
        await stream.send(request)
        raw = parse_response(await read_until_closed(stream, 10))
    assert raw.status == 200  # not 101: no switch
    assert raw.version == b"HTTP/1.1"
    assert json.loads(raw.body)["http_version"] == "1.1"
    assert recorder.header("upgrade") == [] and recorder.header("http2-settings") == []


async def test_settings_a_plain_listener_sends_are_the_defaults(upstream: RunningServer) -> None:
    async with plain_gateway(upstream.url) as gw, h2_connect(gw.port) as h2:
        settings = dict(h2.server_settings)
        assert (await h2.get("/echo")).status == 200
    # MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE (RFC 9113 §6.5.2)
    assert {code: settings[code] for code in (3, 4, 5, 6)} == {3: 100, 4: 1048576, 5: 16384, 6: 65536}
    assert h2.conn.outbound_flow_control_window == 4194304  # the connection window, opened by WINDOW_UPDATE


async def test_rst_stream_over_tls_cancels_the_upstream_request(
    upstream: RunningServer, recorder: Recorder, issued: Issued
) -> None:
    async with (
        https_gateway(upstream.url, issued) as gw,
        h2_connect(gw.port, ssl_context=issued.client_context()) as h2,
    ):
        stream_id = await h2.request("GET", "/stream?n=200&delay=0.05")
        state = h2.state(stream_id)
        await h2.wait(lambda: b"chunk 1\n" in state.body)
        await h2.reset(stream_id)
        with anyio.fail_after(10):
            await recorder.disconnect_event.wait()
        echoed = json.loads((await h2.get("/echo")).body)  # the connection serves on
    assert "/stream" in recorder.disconnected
    assert ["x-forwarded-proto", "https"] in echoed["headers"]
