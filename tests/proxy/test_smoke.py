from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_get_is_forwarded(client: httpx.AsyncClient) -> None:
    response = await client.get("/echo")
    assert response.status_code == 200
    assert response.json()["method"] == "GET"
