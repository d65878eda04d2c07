"""The seed texts' pattern: FastAPI + one shared httpx.AsyncClient, `client.send(stream=True)` returned as a
StreamingResponse over `aiter_raw()`, closed by a BackgroundTask. Request bodies are streamed too.

    python bench/proxies/httpx_seed_app.py --port 8003 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def build_app(upstream: str) -> FastAPI:
    client = httpx.AsyncClient(base_url=upstream)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with client:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.api_route("/{path:path}", methods=METHODS)
    async def proxy(request: Request, path: str) -> StreamingResponse:
        headers = [(k, v) for k, v in request.headers.items() if k not in HOP_BY_HOP]
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        url = f"/{path}?{request.url.query}" if request.url.query else f"/{path}"
        req = client.build_request(
            request.method,
            url,
            headers=headers,
            content=request.stream() if has_body else None,
        )
        r = await client.send(req, stream=True)
        out_headers = {k: v for k, v in r.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            r.aiter_raw(), status_code=r.status_code, headers=out_headers, background=BackgroundTask(r.aclose)
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.upstream.rstrip("/")),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
