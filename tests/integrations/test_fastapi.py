"""Library use in a FastAPI app: the Upstreams lifespan, forward(), the dependency and mounting (issue 5)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Request, Response
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import Route

from fastgate import Gateway, GatewayConfig, ProxyApp, UpstreamClient, Upstreams, forward, upstream_client
from tests.integrations.conftest import send_then_disconnect, serve
from tests.servers import REFUSED_PORT, RunningServer, wait_until
from tests.upstream_app import Recorder

pytestmark = pytest.mark.anyio

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


Api = Annotated[UpstreamClient, Depends(upstream_client("api"))]


class Order(BaseModel):
    item: str
    quantity: int


def proxy_app(upstream_url: str) -> FastAPI:
    """A FastAPI app whose catch-all route forwards to ``upstream``."""
    app = FastAPI(lifespan=Upstreams(api=upstream_url))

    @app.api_route("/{path:path}", methods=METHODS)
    async def relay(request: Request) -> Response:
        return forward(request, "api")

    return app


@contextlib.asynccontextmanager
async def client_for(app: Any, server_path: str = "httptools", **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve(app, server_path, **options) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        yield client


# --- the lifespan helper ---------------------------------------------------------------------------------------


async def test_lifespan_opens_one_client_per_upstream_and_closes_them_at_shutdown(upstream: RunningServer) -> None:
    seen: dict[str, Any] = {}
    app = FastAPI(lifespan=Upstreams(users=upstream.url, orders=upstream.url))

    @app.get("/clients")
    async def clients(request: Request) -> dict[str, bool]:
        seen["users"], seen["orders"] = request.state.users, request.state.orders
        return {"users": request.state.users.is_open, "orders": request.state.orders.is_open}

    async with client_for(app) as client:
        assert (await client.get("/clients")).json() == {"users": True, "orders": True}
        assert (await client.get("/clients")).json() == {"users": True, "orders": True}
    assert isinstance(seen["users"], UpstreamClient) and seen["users"] is not seen["orders"]
    assert not seen["users"].is_open and not seen["orders"].is_open and seen["users"].is_closed


async def test_lifespan_composes_with_the_apps_own_lifespan(upstream: RunningServer) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # Runs inside Upstreams: the clients are open for its whole life.
        events.append("app startup")
        yield {"greeting": "hi"}
        events.append("app shutdown")

    app = FastAPI(lifespan=Upstreams(api=upstream.url, lifespan=app_lifespan))

    @app.get("/state")
    async def state(request: Request) -> dict[str, Any]:
        return {"greeting": request.state.greeting, "api": request.state.api.is_open}

    async with client_for(app) as client:
        assert (await client.get("/state")).json() == {"greeting": "hi", "api": True}
    assert events == ["app startup", "app shutdown"]


async def test_lifespan_entered_from_the_apps_own_lifespan(upstream: RunningServer) -> None:
    upstreams = Upstreams(api=upstream.url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with upstreams(app) as clients:
            warmup = await clients["api"].get("/echo")  # the clients work during startup too
            yield {**clients, "warmup": warmup.status_code}

    app = FastAPI(lifespan=lifespan)

    @app.get("/state")
    async def state(request: Request) -> dict[str, Any]:
        return {"warmup": request.state.warmup, "echo": (await request.state.api.get("/echo")).json()["method"]}

    async with client_for(app) as client:
        assert (await client.get("/state")).json() == {"warmup": 200, "echo": "GET"}


async def test_lifespan_works_on_plain_starlette(upstream: RunningServer) -> None:
    async def relay(request: Any) -> Response:
        return forward(request, "api", "/echo")

    app = Starlette(routes=[Route("/relay", relay, methods=["POST"])], lifespan=Upstreams(api=upstream.url))
    async with client_for(app) as client:
        response = await client.post("/relay", content=b"plain starlette")
    assert response.status_code == 200
    assert response.json()["body"] == "plain starlette"


def test_upstreams_rejects_names_that_cannot_be_state_attributes() -> None:
    with pytest.raises(ValueError, match="identifier"):
        Upstreams({"user-service": "http://127.0.0.1:1"})
    with pytest.raises(ValueError, match="at least one"):
        Upstreams()


# --- forward() -------------------------------------------------------------------------------------------------


async def test_forward_streams_the_upstream_body_back(upstream: RunningServer) -> None:
    async with client_for(proxy_app(upstream.url)) as client:
        arrivals: list[float] = []
        started = time.monotonic()
        async with client.stream("GET", "/stream?n=3&delay=0.12") as response:
            assert response.status_code == 200
            async for _ in response.aiter_raw():
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 3, arrivals  # pieces arrived one by one ...
    assert arrivals[0] < 0.2 < arrivals[-1], arrivals  # ... the first long before the last


async def test_forward_streams_the_request_body_up(upstream: RunningServer, recorder: Recorder) -> None:
    piece = b"x" * 65536
    sent_last_at = 0.0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent_last_at
        for _ in range(16):
            yield piece
            await anyio.sleep(0.02)
        sent_last_at = time.monotonic()

    async with client_for(proxy_app(upstream.url)) as client:
        response = await client.post("/upload", content=body())
    assert response.json() == {"size": 16 * 65536, "sha256": hashlib.sha256(piece * 16).hexdigest()}
    assert recorder.first_body_byte_at is not None and recorder.first_body_byte_at < sent_last_at


async def test_forward_replays_a_body_the_handler_already_read(upstream: RunningServer) -> None:
    app = FastAPI(lifespan=Upstreams(api=upstream.url))

    @app.post("/orders")
    async def create(order: Order, request: Request) -> Response:
        assert order.quantity > 0  # FastAPI read and validated the body before the endpoint ran
        return forward(request, "api", "/echo")

    async with client_for(app) as client:
        response = await client.post("/orders", json={"item": "book", "quantity": 2})
    assert response.status_code == 200
    assert json.loads(response.json()["body"]) == {"item": "book", "quantity": 2}


async def test_forward_raises_at_call_time_when_the_body_was_consumed_as_a_stream(
    upstream: RunningServer, recorder: Recorder
) -> None:
    app = FastAPI(lifespan=Upstreams(api=upstream.url))

    @app.post("/relay")
    async def relay(request: Request) -> Response:
        async for _ in request.stream():
            pass
        try:
            return forward(request, "api", "/upload")
        except RuntimeError as exc:  # as documented: the handler can still answer
            return Response(str(exc), status_code=409)

    async with client_for(app) as client:
        response = await client.post("/relay", content=b"x" * 1000)
    assert response.status_code == 409
    assert "consumed as a stream" in response.text
    assert recorder.requests == []  # nothing went upstream


async def test_forward_applies_the_gateway_header_rules(upstream: RunningServer, recorder: Recorder) -> None:
    # proxy_headers=False: with Uvicorn's default, a 127.0.0.1 peer is trusted and the client it names in
    # X-Forwarded-For becomes scope["client"], which would be appended a second time (docs/library.md).
    async with client_for(proxy_app(upstream.url), proxy_headers=False) as client:
        response = await client.get(
            "/echo", headers={"connection": "keep-alive, x-secret", "x-secret": "1", "x-forwarded-for": "10.0.0.1"}
        )
        hop = await client.get("/hop")
    assert response.status_code == 200
    sent = dict(response.json()["headers"])
    assert "x-secret" not in sent and "connection" not in sent
    assert sent["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["via"] == "1.1 fastgate"
    assert "x-request-id" in sent
    assert hop.headers["x-kept"] == "yes"
    for name in ("x-upstream-secret", "keep-alive", "proxy-connection", "trailer"):
        assert name not in hop.headers
    assert "fastgate" in hop.headers["via"]


async def test_forward_target_reaches_the_upstream_as_given(upstream: RunningServer, recorder: Recorder) -> None:
    app = FastAPI(lifespan=Upstreams(api=upstream.url + "/base"))

    @app.get("/items/{item}")
    async def item(item: str, request: Request) -> Response:
        return forward(request, request.state.api, f"/catalog/{item}", headers={"x-tenant": "acme"})

    @app.get("/search")
    async def search(request: Request) -> Response:
        return forward(request, "api", "/find", query="q=replaced")

    @app.get("/default/{rest:path}")
    async def default(request: Request) -> Response:
        return forward(request, "api")

    async with client_for(app) as client:
        await client.get("/items/a%20b%3F", params={"page": "2"}, headers={"x-tenant": "spoofed"})
        await client.get("/search?q=original")
        await client.get("/default/x%2Fy?z=1")
    first, second, third = recorder.requests[-3:]
    assert (first["raw_path"], first["query_string"]) == ("/base/catalog/a%20b%3F", "page=2")
    assert [v for k, v in first["headers"] if k == "x-tenant"] == ["acme"]
    assert (second["raw_path"], second["query_string"]) == ("/base/find", "q=replaced")
    assert (third["raw_path"], third["query_string"]) == ("/base/default/x%2Fy", "z=1")


async def test_forward_answers_502_when_the_upstream_is_unreachable() -> None:
    async with client_for(proxy_app(f"http://127.0.0.1:{REFUSED_PORT}")) as client:
        response = await client.get("/anything")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_connect_error"


async def test_forward_answers_503_when_the_client_is_not_open(upstream: RunningServer) -> None:
    closed = UpstreamClient("api", upstream.url)  # never entered: no lifespan opened it
    app = FastAPI()

    @app.get("/relay")
    async def relay(request: Request) -> Response:
        return forward(request, closed)

    async with client_for(app) as client:
        response = await client.get("/relay")
    assert response.status_code == 503
    assert response.json()["error"] == "upstream_unavailable"


async def test_forward_names_a_missing_upstream_clearly(upstream: RunningServer) -> None:
    app = FastAPI(lifespan=Upstreams(api=upstream.url))

    @app.get("/relay")
    async def relay(request: Request) -> Response:
        with pytest.raises(RuntimeError, match="no upstream client 'users'"):
            forward(request, "users")
        return Response(b"checked")

    async with client_for(app) as client:
        assert (await client.get("/relay")).content == b"checked"


async def test_forward_keeps_headers_set_on_the_response_and_runs_background_tasks(upstream: RunningServer) -> None:
    done = anyio.Event()
    app = FastAPI(lifespan=Upstreams(api=upstream.url))

    @app.get("/relay")
    async def relay(request: Request, tasks: BackgroundTasks) -> Response:
        tasks.add_task(done.set)
        response = forward(request, "api", "/cookies")
        response.set_cookie("session", "abc")
        response.headers["x-added"] = "1"
        return response

    async with client_for(app) as client:
        response = await client.get("/relay")
        with anyio.fail_after(5):
            await done.wait()
    assert response.text == "cookies"
    assert response.headers["x-added"] == "1"
    assert sorted(response.headers.get_list("set-cookie"))[0].startswith("a=1")
    assert any(c.startswith("session=abc") for c in response.headers.get_list("set-cookie"))


async def test_forward_cancels_upstream_when_client_disconnects(
    upstream: RunningServer, recorder: Recorder, server_path: str
) -> None:
    async with serve(proxy_app(upstream.url), server_path) as server:
        started = time.monotonic()
        await send_then_disconnect(
            server.port, b"GET /slow?delay=10 HTTP/1.1\r\nHost: app\r\n\r\n", recorder.started.wait
        )
        with anyio.fail_after(3):
            await recorder.disconnect_event.wait()
    assert recorder.disconnected["/slow"] - started < 3


async def test_forward_closes_the_upstream_response_when_client_disconnects_mid_body(
    upstream: RunningServer, server_path: str
) -> None:
    clients: list[UpstreamClient] = []
    app = FastAPI(lifespan=Upstreams(api=upstream.url))

    @app.get("/relay")
    async def relay(request: Request) -> Response:
        clients.append(request.state.api)
        return forward(request, "api", "/stream", query="n=200&delay=0.05")

    async with serve(app, server_path) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await stream.send(b"GET /relay HTTP/1.1\r\nHost: app\r\n\r\n")
            with anyio.fail_after(5):
                assert b"chunk 0" in await stream.receive()
        # The connection is aborted (the body was not read to its end) and leaves the pool.
        pool = clients[0]._fastgate.transport.pool  # type: ignore[attr-defined]
        await wait_until(lambda: (pool.stats().busy, pool.stats().idle) == (0, 0), 3)


async def test_upstream_client_dependency_shares_the_lifespan_client(upstream: RunningServer) -> None:
    app = FastAPI(lifespan=Upstreams(api=upstream.url))

    @app.get("/mine")
    async def mine(api: Api, request: Request) -> dict[str, Any]:
        first = (await api.get("/echo", params={"n": "1"})).json()
        second = (await api.post("/echo", json={"n": 2})).json()
        return {"same": api is request.state.api, "first": first["query_string"], "second": second["body"]}

    async with client_for(app) as client:
        response = await client.get("/mine")
    assert response.json() == {"same": True, "first": "n=1", "second": '{"n":2}'}
    assert upstream_client("api") is upstream_client("api")  # one dependency per name: FastAPI caches it


async def test_forward_works_under_fastgate_protocol_and_h11(upstream: RunningServer, server_path: str) -> None:
    async with client_for(proxy_app(upstream.url), server_path) as client:
        response = await client.post("/echo?x=1", content=b"payload")
    assert response.status_code == 200
    assert response.json()["body"] == "payload"
    assert response.json()["query_string"] == "x=1"


# --- mounting --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("server_path", ["httptools", "fastgate-protocol"])
async def test_mounted_gateway_is_opened_by_the_host_lifespan(
    upstream: RunningServer, recorder: Recorder, server_path: str
) -> None:
    gateway = Gateway(GatewayConfig.single(upstream.url))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with gateway.lifespan():  # Starlette gives mounted apps no lifespan: the host enters it
            yield

    app = FastAPI(lifespan=lifespan)
    app.mount("/gw", ProxyApp(gateway))

    @app.get("/own")
    async def own() -> dict[str, str]:
        return {"route": "own"}

    async with client_for(app, server_path) as client:
        echoed = await client.get("/gw/echo?x=1")
        assert (await client.get("/own")).json() == {"route": "own"}
    assert echoed.status_code == 200
    assert (recorder.last()["raw_path"], recorder.last()["query_string"]) == ("/echo", "x=1")
    assert repr(gateway).startswith("<Gateway stopped")


async def test_mounted_gateway_without_the_host_lifespan_answers_503(upstream: RunningServer) -> None:
    app = FastAPI()
    app.mount("/gw", ProxyApp(Gateway(GatewayConfig.single(upstream.url))))
    async with client_for(app) as client:
        response = await client.get("/gw/echo")
    assert response.status_code == 503
    assert response.json()["error"] == "upstream_unavailable"


async def test_mounted_upstream_forwards_paths_under_the_prefix(upstream: RunningServer, recorder: Recorder) -> None:
    app = FastAPI(lifespan=Upstreams(users=upstream.url))
    app.mount("/users", ProxyApp("users"))
    async with client_for(app) as client:
        response = await client.post("/users/echo?id=7", content=b"hello")
        root = await client.get("/users/")
    assert response.json()["body"] == "hello"
    assert (recorder.requests[0]["raw_path"], recorder.requests[0]["query_string"]) == ("/echo", "id=7")
    assert root.status_code == 200 and recorder.last()["raw_path"] == "/"


async def test_mounted_upstream_without_the_host_lifespan_answers_503(upstream: RunningServer) -> None:
    app = FastAPI()
    app.mount("/users", ProxyApp("users"))
    async with client_for(app) as client:
        response = await client.get("/users/echo")
    assert response.status_code == 503


async def test_mounted_subapp_uses_the_host_upstreams(upstream: RunningServer, recorder: Recorder) -> None:
    sub = FastAPI()  # its lifespan would never run: it sees the host's lifespan state instead

    @sub.get("/things/{rest:path}")
    async def things(request: Request) -> Response:
        return forward(request, "api")

    app = FastAPI(lifespan=Upstreams(api=upstream.url))
    app.mount("/v1", sub)
    async with client_for(app) as client:
        response = await client.get("/v1/things/1?full=yes")
    assert response.status_code == 200
    assert (recorder.last()["raw_path"], recorder.last()["query_string"]) == ("/things/1", "full=yes")
