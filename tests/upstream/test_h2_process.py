"""``fastgate run`` with HTTP/2 upstreams, every new key set: an HTTP/1.1 client -> fastgate -> an h2c upstream
(Hypercorn; ``http2.max_concurrent_streams`` seen as the upstream's connection count), an h2 upstream over TLS
(``protocol: h2``, ALPN), and a raw h2c upstream that counts the keep-alive PINGs (``http2.keepalive_interval``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
import trustme

from tests.rawhttp import raw_exchange
from tests.reload_support import fastgate_run, write_config
from tests.servers import free_port
from tests.upstream.h2_servers import H2App, RawConnection, run_hypercorn, run_raw_h2

pytestmark = pytest.mark.anyio


async def _answer(connection: RawConnection, stream_id: int) -> None:
    await connection.respond(stream_id, body=b"raw")


async def wait_until(predicate: Callable[[], bool], limit: float = 15.0) -> None:
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - the gateway process and the peers change it
            await anyio.sleep(0.02)


async def test_http1_client_to_h2c_and_h2_upstreams_through_fastgate_run(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(tmp_path / "chain.pem"), append=index > 0)
    app, tls_app = H2App(), H2App()
    port = free_port()
    async with (
        run_hypercorn(app) as h2c_server,
        run_hypercorn(tls_app, certfile=str(tmp_path / "chain.pem"), keyfile=str(tmp_path / "key.pem")) as tls,
        run_raw_h2(_answer) as raw,
    ):
        config = {
            "server": {"port": port, "access_log": False, "graceful_timeout": 5},
            "upstreams": {
                "grpcish": {
                    "url": f"http://127.0.0.1:{h2c_server.port}",
                    "protocol": "h2c",
                    "http2": {"max_concurrent_streams": 2, "keepalive_interval": 30},
                },
                "secure": {
                    "url": f"https://127.0.0.1:{tls.port}",
                    "protocol": "h2",
                    "ca_file": str(tmp_path / "ca.pem"),
                },
                "pinged": {
                    "url": f"http://127.0.0.1:{raw.port}",
                    "protocol": "h2c",
                    "http2": {"keepalive_interval": 0.3},
                },
            },
            "routes": [
                {"prefix": "/secure", "upstream": "secure", "strip_prefix": True},
                {"prefix": "/pinged", "upstream": "pinged", "strip_prefix": True},
                {"prefix": "/", "upstream": "grpcish"},
            ],
        }
        write_config(tmp_path / "gateway.yaml", config)
        with fastgate_run(tmp_path / "gateway.yaml", tmp_path / "gateway.log", port):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15) as client:
                echo = await client.post("/echo?x=1", content=b"a" * 100_000)
                assert echo.status_code == 200
                seen = echo.json()
                assert seen["http_version"] == "2" and seen["body_size"] == 100_000 and seen["query"] == "x=1"

                # three held requests on a limit of two streams a connection: two upstream connections
                async with anyio.create_task_group() as tg:
                    statuses: list[int] = []

                    async def hold() -> None:
                        statuses.append((await client.get("/hold")).status_code)

                    for _ in range(3):
                        tg.start_soon(hold)
                    await wait_until(lambda: app.holding == 3)
                    assert app.connections == 2
                    app.release.set()
                assert statuses == [200, 200, 200]

                secure = await client.get("/secure/echo")
                assert secure.status_code == 200 and json.loads(secure.content)["http_version"] == "2"

                pinged = await client.get("/pinged/anything")
                assert pinged.content == b"raw"
                await wait_until(lambda: raw.connections[0].pings >= 2)  # idle, pinged every 0.3 s

            # trailers from the h2c upstream reach an HTTP/1.1 client that sent TE: trailers, in the last chunk
            request = b"GET /trailers HTTP/1.1\r\nHost: gw\r\nTE: trailers\r\nConnection: close\r\n\r\n"
            response = await raw_exchange(port, request, limit=15)
            assert response.status == 200
            assert response.body.endswith(b"0\r\ngrpc-status: 0\r\nx-checksum: abc\r\n\r\n")
            assert b"body before trailers" in response.body
