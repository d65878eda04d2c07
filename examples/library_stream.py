"""The seed scenario, done with fastgate: a FastAPI endpoint that fetches from a downstream service and streams it
back. One pooled client is opened in the lifespan (not per request, not at import) and every request goes through
``forward()``: request and response bodies streamed, hop-by-hop headers dropped, X-Forwarded-* added, the upstream
response always closed, and the upstream call cancelled when the client leaves.

    python examples/upstream.py --port 9000 &
    python examples/library_stream.py --port 8000 --upstream http://127.0.0.1:9000
    curl -N http://127.0.0.1:8000/stream        # five events, as the upstream sends them
    curl http://127.0.0.1:8000/echo -d hello    # the request as the upstream received it

The seed texts' version for comparison (what this replaces):

    req = client.build_request("GET", "https://www.example.com")
    r = await client.send(req, stream=True)
    return StreamingResponse(r.aiter_raw(), background=BackgroundTask(r.aclose))
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, Request, Response

from fastgate import Upstreams, forward

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def build_app(upstream: str) -> FastAPI:
    app = FastAPI(lifespan=Upstreams(downstream=upstream))

    @app.api_route("/{path:path}", methods=METHODS)
    async def relay(request: Request) -> Response:
        return forward(request, "downstream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--upstream", default="http://127.0.0.1:9000")
    args = parser.parse_args()
    # access_log off: forward() writes fastgate's access line (logger "fastgate.access") when it is enabled.
    # proxy_headers off: X-Forwarded-For should name our peer, not a client some local proxy claims (docs/library.md).
    uvicorn.run(
        build_app(args.upstream),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
