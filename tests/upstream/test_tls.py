"""https and wss upstreams: certificates verified against the system CAs or the upstream's ``ca_file``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect

from fastgate.config import UpstreamConfig
from fastgate.proxy.websocket import WebSocketForwardOptions
from fastgate.upstream.websocket import dial
from tests.conftest import GatewayFactory
from tests.servers import RunningServer, run_server
from tests.upstream_app import Recorder, UpstreamApp
from tests.ws_upstream import WebSocketRecorder, WebSocketUpstreamApp

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("cert")
    key, chain = folder / "key.pem", folder / "chain.pem"
    cert.private_key_pem.write_to_path(str(key))
    cert.cert_chain_pems[0].write_to_path(str(chain))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(chain), append=True)
    yield str(key), str(chain)


@pytest.fixture
async def tls_upstream(recorder: Recorder, server_cert: tuple[str, str]) -> AsyncIterator[RunningServer]:
    key, chain = server_cert
    async with run_server(UpstreamApp(recorder), ssl_keyfile=key, ssl_certfile=chain) as server:
        yield server


@pytest.mark.parametrize("transport", ["fastgate", "httpx"])
async def test_https_upstream_is_verified_against_its_ca_file(
    tls_upstream: RunningServer, gateway_for: GatewayFactory, ca_file: Path, recorder: Recorder, transport: str
) -> None:
    url = f"https://127.0.0.1:{tls_upstream.port}"
    async with gateway_for(url, ca_file=str(ca_file), transport=transport) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            response = await client.get("/echo")
    assert response.status_code == 200
    assert recorder.last()["raw_path"] == "/echo"


@pytest.mark.parametrize("transport", ["fastgate", "httpx"])
async def test_https_upstream_with_an_unknown_certificate_gives_502(
    tls_upstream: RunningServer, gateway_for: GatewayFactory, recorder: Recorder, transport: str
) -> None:
    async with gateway_for(f"https://127.0.0.1:{tls_upstream.port}", transport=transport) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            response = await client.get("/echo")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_connect_error"
    assert "CERTIFICATE_VERIFY_FAILED" in response.json()["detail"] or "certificate" in response.json()["detail"]
    assert recorder.requests == []


async def test_wss_upstream_is_verified_against_its_ca_file(
    gateway_for: GatewayFactory, ca_file: Path, server_cert: tuple[str, str]
) -> None:
    key, chain = server_cert
    recorder = WebSocketRecorder()
    async with run_server(
        WebSocketUpstreamApp(recorder), ws="websockets-sansio", ssl_keyfile=key, ssl_certfile=chain
    ) as up:
        async with gateway_for(f"https://127.0.0.1:{up.port}", ca_file=str(ca_file)) as gw:
            async with connect(f"ws://127.0.0.1:{gw.port}/ws/echo") as ws:
                await ws.send("over tls")
                assert await ws.recv() == "over tls"


async def test_wss_dials_share_one_tls_context_per_upstream(ca_file: Path, server_cert: tuple[str, str]) -> None:
    """Building a context loads the CA bundle (tens of ms of CPU on the loop): once per upstream, not per dial."""
    key, chain = server_cert
    async with run_server(
        WebSocketUpstreamApp(WebSocketRecorder()), ws="websockets-sansio", ssl_keyfile=key, ssl_certfile=chain
    ) as up:
        config = UpstreamConfig(url=f"https://127.0.0.1:{up.port}", ca_file=str(ca_file))
        options = WebSocketForwardOptions.from_config("tls", config)
        contexts = []
        for _ in range(2):
            upstream = await dial(options.target, "/ws/echo", [("host", "127.0.0.1")], [])
            contexts.append(upstream.transport.get_extra_info("ssl_object").context)
            await upstream.close()
    assert contexts[0] is contexts[1]
    assert contexts[0] is options.target.tls  # built with the options, before any dial
