"""A chunked response relayed piece by piece: small pieces are joined with their chunk framing, large ones go to the
client transport as the upstream delivered them with the framing written around them (no copy). Either way the
client must read exactly the upstream's bytes, under both drivers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fastgate import Gateway, GatewayConfig
from fastgate.serving.cycle import JOIN_BELOW
from tests.servers import answer_lifespan, run_gateway, run_server

pytestmark = pytest.mark.anyio

SIZES = [1, JOIN_BELOW - 1, JOIN_BELOW, 300_000, 7, 1 << 20]
PIECES = [bytes([65 + i]) * size for i, size in enumerate(SIZES)]


async def chunked_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for piece in PIECES:
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def test_a_chunked_response_of_small_and_large_pieces_arrives_byte_for_byte() -> None:
    async with run_server(chunked_upstream) as origin:
        gateway = Gateway(GatewayConfig.single(origin.url))
        async with run_gateway(gateway) as gw, httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            for _ in range(2):  # the second on a kept-alive connection: the framing ended where it should
                response = await client.get("/any")
                assert response.status_code == 200
                assert response.headers["transfer-encoding"] == "chunked"
                assert response.content == b"".join(PIECES)
