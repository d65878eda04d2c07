"""TLS on the listener (issue 10): HTTPS and WSS with ``server.tls``, TLS 1.2 minimum, certificates re-read on reload.

The certificates come from a trustme CA made for each test; the gateway is served by real Uvicorn with the options
``fastgate.server.uvicorn_options`` gives it, in process (so ``reload_certificates`` reaches its context) or as
``fastgate run``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trustme
from click.testing import CliRunner
from websockets.asyncio.client import connect

from fastgate import ConfigError, Gateway, GatewayConfig
from fastgate.cli import main
from fastgate.config import ServerConfig, TlsConfig, build_config
from fastgate.server import uvicorn_options
from fastgate.serving import tls
from tests.hostile.support import gateway_process
from tests.servers import RunningServer, run_gateway, wait_until
from tests.upstream_app import Recorder

pytestmark = pytest.mark.anyio


@dataclass
class Issued:
    ca: trustme.CA
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def issue(directory: Path, ca: trustme.CA | None = None, name: str = "") -> Issued:
    """A certificate for 127.0.0.1 and localhost, its chain and key written to ``directory``."""
    ca = ca or trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", common_name=name or None)
    cert_file, key_file = directory / f"cert{name}.pem", directory / f"key{name}.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key_file.write_bytes(cert.private_key_pem.bytes())
    return Issued(ca, cert_file, key_file)


@pytest.fixture
def issued(tmp_path: Path) -> Issued:
    return issue(tmp_path)


def tls_config(url: str, issued: Issued, *, http2: bool = True) -> GatewayConfig:
    server = ServerConfig(
        tls=TlsConfig(cert_file=str(issued.cert_file), key_file=str(issued.key_file)), http2={"enabled": http2}
    )
    return GatewayConfig.single(url, server=server)


@contextlib.asynccontextmanager
async def https_gateway(url: str, issued: Issued, *, http2: bool = True) -> AsyncIterator[RunningServer]:
    """The gateway in front of ``url``, served over TLS with the Uvicorn options ``fastgate run`` uses."""
    config = tls_config(url, issued, http2=http2)
    options = {key: value for key, value in uvicorn_options(config).items() if key.startswith("ssl_")}
    async with run_gateway(Gateway(config), **options) as server:
        yield server


def https_url(server: RunningServer) -> str:
    return f"https://127.0.0.1:{server.port}"


def peer_certificate(response: httpx.Response) -> bytes:
    ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
    der: bytes = ssl_object.getpeercert(binary_form=True)
    return der


def served_certificate(issued: Issued) -> bytes:
    """The leaf certificate in ``issued.cert_file`` (DER), as a client sees it."""
    leaf = issued.cert_file.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return ssl.PEM_cert_to_DER_cert(leaf)


async def test_https_request_through_the_gateway_reaches_upstream_with_x_forwarded_proto_https(
    upstream: RunningServer, recorder: Recorder, issued: Issued
) -> None:
    async with (
        https_gateway(upstream.url, issued) as gw,
        httpx.AsyncClient(base_url=https_url(gw), verify=issued.client_context(), timeout=10) as client,
    ):
        response = await client.get("/echo")
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    assert peer_certificate(response) == served_certificate(issued)
    assert recorder.header("x-forwarded-proto") == ["https"]


async def test_plain_http_to_the_tls_listener_gets_no_response(upstream: RunningServer, issued: Issued) -> None:
    async with https_gateway(upstream.url, issued) as gw, httpx.AsyncClient(timeout=10) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(f"http://127.0.0.1:{gw.port}/echo")


@pytest.mark.parametrize(("http2", "chosen"), [(True, "h2"), (False, "http/1.1")])
async def test_tls_listener_offers_h2_by_alpn_unless_http2_is_disabled(
    upstream: RunningServer, issued: Issued, http2: bool, chosen: str
) -> None:
    # Issue 18 changed this: the listener offered http/1.1 only before HTTP/2 was served.
    context = issued.client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    async with https_gateway(upstream.url, issued, http2=http2) as gw:
        stream = await anyio.connect_tcp("127.0.0.1", gw.port, tls=True, ssl_context=context, tls_hostname="127.0.0.1")
        async with stream:
            assert stream.extra(anyio.streams.tls.TLSAttribute.alpn_protocol) == chosen
            if chosen == "h2":
                with anyio.fail_after(10):
                    first = await stream.receive()
                assert first[3:4] == b"\x04"  # the server speaks first in HTTP/2: its SETTINGS frame


def tls_1_1_client(issued: Issued) -> ssl.SSLContext:
    context = issued.client_context()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 only at security level 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def handshake(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped:
            return wrapped.version() or ""


@contextlib.contextmanager
def tls_1_1_server(issued: Issued) -> Iterator[int]:
    """A bare TLS server that accepts TLS 1.1 (one handshake), to show the client really offers it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert_file, issued.key_file)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with contextlib.suppress(OSError), listener.accept()[0] as conn, context.wrap_socket(conn, server_side=True):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(10)
        listener.close()


async def test_tls_1_1_client_is_refused(upstream: RunningServer, issued: Issued) -> None:
    client = tls_1_1_client(issued)
    # The same client completes a TLS 1.1 handshake with a server that allows it: the refusal below is the
    # gateway's minimum version, not a client that cannot speak TLS 1.1 at all. (Where this OpenSSL will not offer
    # TLS 1.1 even at security level 0, only the refusal can be checked; it says so.)
    with tls_1_1_server(issued) as port:
        try:
            assert await anyio.to_thread.run_sync(handshake, port, client) == "TLSv1.1"
        except ssl.SSLError as exc:
            print(f"note: this OpenSSL ({ssl.OPENSSL_VERSION}) does not offer TLS 1.1 at all: {exc}")
    async with https_gateway(upstream.url, issued) as gw:
        with pytest.raises(ssl.SSLError):
            await anyio.to_thread.run_sync(handshake, gw.port, client)
        # A TLS 1.2 client is served.
        modern = issued.client_context()
        modern.maximum_version = ssl.TLSVersion.TLSv1_2
        assert await anyio.to_thread.run_sync(handshake, gw.port, modern) == "TLSv1.2"


async def test_wss_echo_through_the_gateway_with_x_forwarded_proto_https(
    ws_upstream: RunningServer, issued: Issued
) -> None:
    async with (
        https_gateway(ws_upstream.url, issued) as gw,
        connect(f"wss://127.0.0.1:{gw.port}/ws/echo", ssl=issued.client_context(), open_timeout=10) as ws,
    ):
        await ws.send("hello over tls")
        assert await ws.recv() == "hello over tls"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        await ws.send("handshake")
        handshake_seen = json.loads(await ws.recv())
    headers = {name.lower(): value for name, value in handshake_seen["headers"]}
    assert headers["x-forwarded-proto"] == "https"


async def test_reload_certificates_serves_the_new_certificate_to_new_connections_only(
    upstream: RunningServer, issued: Issued, tmp_path: Path
) -> None:
    first = served_certificate(issued)
    async with (
        https_gateway(upstream.url, issued) as gw,
        httpx.AsyncClient(base_url=https_url(gw), verify=issued.client_context(), timeout=10) as old,
    ):
        response = await old.get("/echo")
        assert peer_certificate(response) == first
        kept = response.extensions["network_stream"]
        # Rotate: a new certificate from the same CA, written over the same files, then the reload.
        renewed = issue(tmp_path, issued.ca, name="renewed")
        issued.cert_file.write_bytes(renewed.cert_file.read_bytes())
        issued.key_file.write_bytes(renewed.key_file.read_bytes())
        second = served_certificate(issued)
        assert second != first
        tls.reload_certificates(tls_config(upstream.url, issued))
        async with httpx.AsyncClient(base_url=https_url(gw), verify=issued.client_context(), timeout=10) as new:
            response = await new.get("/echo")
            assert response.status_code == 200
            assert peer_certificate(response) == second
        # The connection opened before the reload goes on, with the certificate it was shown.
        response = await old.get("/echo")
        assert response.status_code == 200
        assert response.extensions["network_stream"] is kept
        assert peer_certificate(response) == first


async def test_reload_certificates_with_a_bad_pair_raises_config_error_and_keeps_the_old_certificate(
    upstream: RunningServer, issued: Issued, tmp_path: Path
) -> None:
    other = issue(tmp_path, name="other")
    async with https_gateway(upstream.url, issued) as gw:
        config = tls_config(upstream.url, issued)
        issued.key_file.write_bytes(other.key_file.read_bytes())  # the key no longer matches the certificate
        with pytest.raises(ConfigError, match=r"server\.tls\.cert_file"):
            tls.reload_certificates(config)
        async with httpx.AsyncClient(base_url=https_url(gw), verify=issued.client_context(), timeout=10) as client:
            response = await client.get("/echo")
        assert response.status_code == 200
        assert peer_certificate(response) == served_certificate(issued)


def test_reload_certificates_without_tls_does_nothing() -> None:
    tls.reload_certificates(GatewayConfig.single("http://127.0.0.1:9"))


def test_tls_options_reach_uvicorn_with_fastgates_context(issued: Issued) -> None:
    options = uvicorn_options(tls_config("http://127.0.0.1:9", issued))
    assert options["ssl_certfile"] == str(issued.cert_file)
    assert options["ssl_keyfile"] == str(issued.key_file)
    assert options["ssl_context_factory"] is tls.context_factory
    assert "ssl_certfile" not in uvicorn_options(GatewayConfig.single("http://127.0.0.1:9"))
    context = tls.server_context(TlsConfig(cert_file=str(issued.cert_file), key_file=str(issued.key_file)))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("tls_keys", "message"),
    [
        ({"cert_file": "/nonexistent/cert.pem", "key_file": "KEY"}, "server.tls.cert_file: no such file"),
        ({"cert_file": "CERT", "key_file": "/nonexistent/key.pem"}, "server.tls.key_file: no such file"),
        ({"cert_file": "KEY", "key_file": "KEY"}, "server.tls.cert_file: cannot load"),
        ({"cert_file": "CERT", "key_file": "OTHER_KEY"}, "server.tls.cert_file: cannot load"),
        ({"key_file": "KEY"}, "server.tls.cert_file: Field required"),
    ],
)
def test_bad_tls_files_are_a_config_error_naming_the_key(
    issued: Issued, tmp_path: Path, tls_keys: dict[str, str], message: str
) -> None:
    other = issue(tmp_path, name="other")
    paths = {"CERT": str(issued.cert_file), "KEY": str(issued.key_file), "OTHER_KEY": str(other.key_file)}
    keys = {key: paths.get(value, value) for key, value in tls_keys.items()}
    data: dict[str, Any] = {
        "server": {"tls": keys},
        "upstreams": {"default": {"url": "http://127.0.0.1:9"}},
        "routes": [{"prefix": "/", "upstream": "default"}],
    }
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        build_config(data)
    config_file = tmp_path / "gateway.json"
    config_file.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["run", str(config_file)])
    assert result.exit_code == 2
    assert message in result.output


async def test_fastgate_run_serves_https_from_server_tls_in_every_worker(
    upstream: RunningServer, recorder: Recorder, issued: Issued, tmp_path: Path
) -> None:
    """``fastgate run`` with two workers: Uvicorn hands each worker the context factory, and each serves HTTPS."""
    config = {
        "server": {"workers": 2, "tls": {"cert_file": str(issued.cert_file), "key_file": str(issued.key_file)}},
        "upstreams": {"default": {"url": upstream.url}},
        "routes": [{"prefix": "/", "upstream": "default"}],
    }
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with gateway_process(config, tmp_path) as gw:
        # Each worker builds its own context (Uvicorn passes it the factory) before its startup completes.
        await wait_until(lambda: gw.log().count("Application startup complete") == 2, limit=30)
        async with httpx.AsyncClient(verify=issued.client_context(), timeout=10, limits=no_reuse) as client:
            responses = [await client.get(f"https://127.0.0.1:{gw.port}/echo") for _ in range(6)]
        log = gw.log()
    assert [r.status_code for r in responses] == [200] * 6
    assert [recorder.header("x-forwarded-proto", i) for i in range(6)] == [["https"]] * 6
    assert "https://" in log  # Uvicorn's startup line names the scheme
    assert "Traceback" not in log, log


async def test_partial_head_over_tls_gets_408_after_header_timeout(
    upstream: RunningServer, issued: Issued, tmp_path: Path
) -> None:
    """The client deadlines apply over TLS as over plain HTTP, from the end of the handshake."""
    config = {
        "server": {
            "header_timeout": 1,
            "tls": {"cert_file": str(issued.cert_file), "key_file": str(issued.key_file)},
        },
        "upstreams": {"default": {"url": upstream.url}},
        "routes": [{"prefix": "/", "upstream": "default"}],
    }
    with gateway_process(config, tmp_path) as gw:
        stream = await anyio.connect_tcp(
            "127.0.0.1", gw.port, tls=True, ssl_context=issued.client_context(), tls_hostname="127.0.0.1"
        )
        async with stream:
            await stream.send(b"GET /echo HTTP/1.1\r\nHost: example.test\r\n")
            sent = time.monotonic()
            answer = b""
            with anyio.fail_after(10), contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                while True:
                    answer += await stream.receive()
            waited = time.monotonic() - sent
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert 0.9 <= waited <= 1 + 4, f"answered {waited:.2f} s after the partial head (header_timeout 1 s)"


async def test_sighup_reload_of_fastgate_run_serves_the_renewed_certificate(
    upstream: RunningServer, issued: Issued, tmp_path: Path
) -> None:
    """The certificate is re-read on reload: rotate the files, SIGHUP, and the next connection sees the new one."""
    config = {
        "server": {"tls": {"cert_file": str(issued.cert_file), "key_file": str(issued.key_file)}},
        "upstreams": {"default": {"url": upstream.url}},
        "routes": [{"prefix": "/", "upstream": "default"}],
    }
    first = served_certificate(issued)
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with gateway_process(config, tmp_path) as gw:
        async with httpx.AsyncClient(verify=issued.client_context(), timeout=10, limits=no_reuse) as client:
            assert peer_certificate(await client.get(f"https://127.0.0.1:{gw.port}/echo")) == first
            renewed = issue(tmp_path, issued.ca, name="renewed")
            issued.cert_file.write_bytes(renewed.cert_file.read_bytes())
            issued.key_file.write_bytes(renewed.key_file.read_bytes())
            second = served_certificate(issued)
            gw.process.send_signal(signal.SIGHUP)
            await wait_until(lambda: "config reloaded" in gw.log(), limit=30)
            response = await client.get(f"https://127.0.0.1:{gw.port}/echo")
        log = gw.log()
    assert response.status_code == 200
    assert peer_certificate(response) == second
    assert "Traceback" not in log, log
