"""A WebSocket relay endpoint with a policy check: sessions with a valid token are relayed to the chat service,
others are closed with 1008 (policy violation).

    python examples/library_websocket.py --port 8000 --upstream ws://127.0.0.1:9000   # any WebSocket echo service
    websocat 'ws://127.0.0.1:8000/chat/lobby?token=let-me-in'    # relayed to /rooms/lobby upstream
    websocat 'ws://127.0.0.1:8000/chat/lobby?token=wrong'        # closed with 1008 "invalid token"

``forward_websocket()`` dials the upstream before it accepts the client, relays messages both ways, passes close
codes and reasons through, and closes the other side when one side goes. The token is checked here, then dropped
from the query string sent upstream.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlencode

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketException

from fastgate import Upstreams, forward_websocket

TOKENS = frozenset({"let-me-in"})


def build_app(upstream: str, tokens: frozenset[str] = TOKENS) -> FastAPI:
    url = upstream.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    app = FastAPI(lifespan=Upstreams(chat=url))

    @app.websocket("/chat/{room}")
    async def chat(websocket: WebSocket, room: str) -> None:
        if websocket.query_params.get("token") not in tokens:
            await websocket.accept()  # accept first: the client then sees the close code, not an HTTP 403
            raise WebSocketException(code=1008, reason="invalid token")
        rest = urlencode([(k, v) for k, v in websocket.query_params.multi_items() if k != "token"])
        await forward_websocket(websocket, "chat", f"/rooms/{room}", query=rest)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--upstream", default="ws://127.0.0.1:9000")
    args = parser.parse_args()
    uvicorn.run(build_app(args.upstream), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
