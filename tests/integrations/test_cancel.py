"""cancel_on_disconnect: the seed's task-group pattern with its "client never disconnects" fix (issue 5)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from fastgate import cancel_on_disconnect
from fastgate.integrations.cancel import DisconnectGuard
from tests.integrations.conftest import send_then_disconnect, serve
from tests.servers import wait_until

pytestmark = pytest.mark.anyio


class Work:
    """What the endpoints under test did: started, finished, or cancelled."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.cancelled = anyio.Event()
        self.finished = anyio.Event()
        self.entered = anyio.Event()  # the endpoint was called
        self.handled = anyio.Event()  # the endpoint returned (or raised)
        self.guards: list[DisconnectGuard] = []

    async def run(self, seconds: float) -> str:
        self.started.set()
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            self.cancelled.set()
            raise
        self.finished.set()
        return "done"


class Payload(BaseModel):
    seconds: float


def build_app(work: Work) -> FastAPI:
    app = FastAPI()

    @app.get("/decorated")
    @cancel_on_disconnect
    async def decorated(seconds: float) -> dict[str, str]:  # no Request parameter: the decorator asks for it
        return {"result": await work.run(seconds)}

    @app.get("/block")
    async def block(request: Request, seconds: float) -> Any:
        async with cancel_on_disconnect(request) as guard:
            work.guards.append(guard)
            result = await work.run(seconds)
        if guard.disconnected:
            return guard.response
        return {"result": result}

    @app.post("/reads-body")
    async def reads_body(request: Request) -> Any:
        async with cancel_on_disconnect(request) as guard:
            payload = await request.json()  # the guard read it first; Starlette kept it
            result = await work.run(payload["seconds"])
        return guard.response if guard.disconnected else {"result": result, "payload": payload}

    @app.post("/work-ignoring-body")
    async def work_ignoring_body(request: Request) -> Any:
        work.entered.set()
        try:
            async with cancel_on_disconnect(request) as guard:  # reads the body first, to watch for a disconnect
                result = await work.run(10)  # the work itself does not need the body: only the guard stops it
            return guard.response if guard.disconnected else {"result": result}
        finally:
            work.handled.set()

    @app.post("/body-param")
    @cancel_on_disconnect
    async def body_param(payload: Payload, request: Request) -> dict[str, Any]:
        return {"result": await work.run(payload.seconds), "body": json.loads(await request.body())}

    return app


async def _disconnect_during_work(port: int, request: bytes, work: Work) -> None:
    await send_then_disconnect(port, request, work.started.wait)
    with anyio.fail_after(3):
        await work.cancelled.wait()
    assert not work.finished.is_set()


async def test_cancel_on_disconnect_decorator_cancels_the_work_when_client_disconnects(server_path: str) -> None:
    work = Work()
    async with serve(build_app(work), server_path) as server:
        await _disconnect_during_work(server.port, b"GET /decorated?seconds=10 HTTP/1.1\r\nHost: a\r\n\r\n", work)


async def test_cancel_on_disconnect_context_manager_cancels_the_work_when_client_disconnects(server_path: str) -> None:
    work = Work()
    async with serve(build_app(work), server_path) as server:
        await _disconnect_during_work(server.port, b"GET /block?seconds=10 HTTP/1.1\r\nHost: a\r\n\r\n", work)
        await wait_until(lambda: not work.guards[0].watching)
    assert work.guards[0].disconnected


async def test_cancel_on_disconnect_when_client_never_disconnects(server_path: str) -> None:
    work = Work()
    async with serve(build_app(work), server_path) as server, httpx.AsyncClient(base_url=server.url) as client:
        with anyio.fail_after(3):  # the seed's first version hangs here: its watcher never returns
            first = await client.get("/block", params={"seconds": "0.05"})
            tasks_before = len(asyncio.all_tasks())
            second = await client.get("/decorated", params={"seconds": "0.05"})  # same keep-alive connection
            third = await client.get("/block", params={"seconds": "0"})
        await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before)  # the watchers' tasks ended: no leak
    assert first.json() == second.json() == third.json() == {"result": "done"}
    assert [g.watching or g.disconnected for g in work.guards] == [False, False]


async def test_cancel_on_disconnect_with_an_endpoint_that_reads_the_body(server_path: str) -> None:
    work = Work()
    async with serve(build_app(work), server_path) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            with anyio.fail_after(3):
                response = await client.post("/reads-body", json={"seconds": 0.01})
        assert response.json() == {"result": "done", "payload": {"seconds": 0.01}}
        work.started, work.finished = anyio.Event(), anyio.Event()
        body = b'{"seconds": 10}'
        head = b"POST /reads-body HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        await _disconnect_during_work(server.port, head % len(body) + body, work)


async def test_cancel_on_disconnect_with_a_fastapi_body_parameter() -> None:
    work = Work()
    async with serve(build_app(work)) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            with anyio.fail_after(3):
                response = await client.post("/body-param", json={"seconds": 0.01})
        assert response.json() == {"result": "done", "body": {"seconds": 0.01}}
        work.started, work.finished = anyio.Event(), anyio.Event()
        body = b'{"seconds": 10}'
        head = b"POST /body-param HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        await _disconnect_during_work(server.port, head % len(body) + body, work)


async def test_cancel_on_disconnect_when_client_leaves_during_the_body() -> None:
    # The endpoint's work does not wait for the body, so without the guard it would run its 10 s: the guard reads
    # the body on entry, sees the client leave part-way, and the block is cancelled at its first await.
    work = Work()
    async with serve(build_app(work)) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await stream.send(b'POST /work-ignoring-body HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{"seco')
            with anyio.fail_after(3):
                await work.entered.wait()
        with anyio.fail_after(3):  # a guard that ignored the disconnect would wait for the body forever
            await work.handled.wait()
    # the block was cancelled on entry: its work's first await was cancelled, it never ran its 10 s
    assert work.cancelled.is_set()
    assert not work.finished.is_set()


def test_cancel_on_disconnect_hides_its_request_parameter_from_the_openapi_schema() -> None:
    app = build_app(Work())
    parameters = app.openapi()["paths"]["/decorated"]["get"]["parameters"]
    assert [p["name"] for p in parameters] == ["seconds"]


def test_cancel_on_disconnect_refuses_sync_endpoints() -> None:
    def sync_endpoint() -> None:
        pass

    with pytest.raises(TypeError, match="async endpoint"):
        cancel_on_disconnect(sync_endpoint)  # type: ignore[arg-type]


async def test_cancel_on_disconnect_on_plain_starlette() -> None:
    work = Work()

    @cancel_on_disconnect
    async def endpoint(request: Any) -> JSONResponse:
        return JSONResponse({"result": await work.run(float(request.query_params["seconds"]))})

    app = Starlette(routes=[Route("/work", endpoint)])
    async with serve(app) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/work?seconds=0")).json() == {"result": "done"}
        work.started, work.finished = anyio.Event(), anyio.Event()
        await _disconnect_during_work(server.port, b"GET /work?seconds=10 HTTP/1.1\r\nHost: a\r\n\r\n", work)


async def test_cancel_on_disconnect_lets_the_endpoints_exceptions_through_unchanged() -> None:
    from fastapi import HTTPException

    app = FastAPI()

    @app.get("/missing")
    @cancel_on_disconnect
    async def missing() -> None:
        raise HTTPException(404, "no such report")

    @app.get("/missing-block")
    async def missing_block(request: Request) -> None:
        async with cancel_on_disconnect(request):
            raise HTTPException(404, "no such report")

    async with serve(app) as server, httpx.AsyncClient(base_url=server.url) as client:
        for path in ("/missing", "/missing-block"):
            response = await client.get(path)
            assert (response.status_code, response.json()) == (404, {"detail": "no such report"})
