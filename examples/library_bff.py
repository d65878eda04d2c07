"""A backend-for-frontend endpoint: two downstream services called concurrently, their JSON combined, and both
calls cancelled when the client leaves (the downstream services see their connections close).

    python examples/upstream.py --port 9000 &
    python examples/library_bff.py --port 8000 --users http://127.0.0.1:9000 --orders http://127.0.0.1:9000
    curl http://127.0.0.1:8000/dashboard/7

GET /dashboard/{user_id} -> {"user": <users: GET /users/{id}>, "orders": <orders: GET /orders?user_id={id}>}
A downstream failure (unreachable, timeout, a non-2xx or non-JSON answer) becomes a 502 naming the service.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

import anyio
import httpx
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from fastgate import UpstreamClient, UpstreamError, Upstreams, cancel_on_disconnect, upstream_client

Users = Annotated[UpstreamClient, Depends(upstream_client("users"))]
Orders = Annotated[UpstreamClient, Depends(upstream_client("orders"))]


class DownstreamFailed(Exception):
    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service}: {detail}")
        self.service = service
        self.detail = detail


async def fetch_json(client: UpstreamClient, path: str, params: dict[str, Any] | None = None) -> Any:
    try:
        response = await client.get(path, params=params)
        response.raise_for_status()
        return response.json()
    except (UpstreamError, httpx.HTTPStatusError, ValueError) as exc:  # ValueError: the body is not JSON
        raise DownstreamFailed(client.name, str(exc) or type(exc).__name__) from exc


def build_app(users: str, orders: str) -> FastAPI:
    app = FastAPI(lifespan=Upstreams(users=users, orders=orders))

    @app.exception_handler(DownstreamFailed)
    async def downstream_failed(request: Any, exc: DownstreamFailed) -> JSONResponse:
        return JSONResponse({"error": "downstream_failed", "service": exc.service, "detail": exc.detail}, 502)

    @app.get("/dashboard/{user_id}")
    @cancel_on_disconnect  # the client leaves: the task group below is cancelled, and both calls with it
    async def dashboard(user_id: int, users: Users, orders: Orders) -> dict[str, Any]:
        results: dict[str, Any] = {}

        async def load(key: str, client: UpstreamClient, path: str, params: dict[str, Any] | None = None) -> None:
            results[key] = await fetch_json(client, path, params)

        failure: DownstreamFailed | None = None
        try:
            async with anyio.create_task_group() as tg:  # one failure cancels the other call
                tg.start_soon(load, "user", users, f"/users/{user_id}")
                tg.start_soon(load, "orders", orders, "/orders", {"user_id": user_id})
        except* DownstreamFailed as group:
            failure = group.exceptions[0]  # type: ignore[assignment]  # the first failure answers
        if failure is not None:
            # Raised here, not inside except*: Python 3.11.0-3.11.3 wrap what an except* block raises in an
            # ExceptionGroup, which the DownstreamFailed handler would not match.
            raise failure from None  # the handler makes it a 502
        return {"user": results["user"], "orders": results["orders"]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--users", default="http://127.0.0.1:9000")
    parser.add_argument("--orders", default="http://127.0.0.1:9000")
    args = parser.parse_args()
    uvicorn.run(build_app(args.users, args.orders), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
