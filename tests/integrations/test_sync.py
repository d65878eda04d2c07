"""Sync (``def``) endpoints: downstream calls without sharing the async client across threads (issue 5)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response

from fastgate import UpstreamClient, Upstreams, forward, upstream_client
from tests.integrations.conftest import serve
from tests.servers import RunningServer

pytestmark = pytest.mark.anyio

Api = Annotated[UpstreamClient, Depends(upstream_client("api"))]


def build_app(upstream_url: str, calls: list[tuple[int, int]]) -> FastAPI:
    """``calls`` gets (endpoint thread, thread that used the pooled client) for each downstream call."""
    upstreams = Upstreams(api=upstream_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with upstreams(app) as state:
            transport = state["api"].forward_options.transport
            send = transport.send

            async def recording_send(*args: Any) -> Any:
                calls.append((-1, threading.get_ident()))
                return await send(*args)

            transport.send = recording_send
            yield state

    app = FastAPI(lifespan=lifespan)

    @app.get("/sync-call")
    def sync_call(api: Api) -> dict[str, Any]:
        echoed = api.sync.post("/echo", content=b"from a thread").json()
        calls.append((threading.get_ident(), -1))
        return {"body": echoed["body"]}

    @app.get("/sync-forward")
    def sync_forward(request: Request) -> Response:
        return forward(request, "api", "/stream", query="n=3&delay=0.01")  # no I/O here: it runs on the loop

    return app


async def test_sync_endpoint_calls_upstream_through_the_event_loop(upstream: RunningServer) -> None:
    calls: list[tuple[int, int]] = []
    async with serve(build_app(upstream.url, calls)) as server, httpx.AsyncClient(base_url=server.url) as client:
        loop_thread = threading.get_ident()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(client.get, "/sync-call")
            response = await client.get("/sync-call")
    assert response.json() == {"body": "from a thread"}
    endpoint_threads = {endpoint for endpoint, _ in calls if endpoint != -1}
    client_threads = {used for _, used in calls if used != -1}
    assert loop_thread not in endpoint_threads  # the endpoints ran in worker threads ...
    assert client_threads == {loop_thread}  # ... and every use of the pooled client happened on the loop


async def test_sync_endpoint_can_return_forward(upstream: RunningServer) -> None:
    async with serve(build_app(upstream.url, [])) as server, httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/sync-forward")
    assert response.text == "chunk 0\nchunk 1\nchunk 2\n"


async def test_sync_client_refuses_the_event_loop_thread(upstream: RunningServer) -> None:
    async with UpstreamClient("api", upstream.url) as api:
        with pytest.raises(RuntimeError):
            api.sync.get("/echo")  # in async code, await the client itself
        assert (await api.get("/echo")).status_code == 200
        assert (await anyio.to_thread.run_sync(api.sync.get, "/echo")).json()["method"] == "GET"
