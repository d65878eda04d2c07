"""Which driver fastgate's server uses for the app it serves: the gateway's own handler only for an app that offers
``fastgate_handler`` (the Gateway), the app's ASGI interface for everything else, whatever attributes it has."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from fastgate._protocol import FastgateHttpProtocol
from tests.servers import answer_lifespan, run_server

pytestmark = pytest.mark.anyio


class AppWithAHandler:
    """An ASGI app that happens to have a callable attribute named ``handler``: it must be served as ASGI."""

    def __init__(self) -> None:
        self.handled: list[Any] = []

    def handler(self, *args: Any) -> None:
        self.handled.append(args)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"asgi"})


async def test_an_asgi_app_with_a_handler_attribute_is_served_as_asgi() -> None:
    app = AppWithAHandler()
    async with run_server(app, http=FastgateHttpProtocol) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            response = await client.get("/x")
    assert (response.status_code, response.text) == (200, "asgi")
    assert app.handled == []
