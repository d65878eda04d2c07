"""Drive fastgate's server protocol without sockets: a fake transport that records what the server wrote.

Deadlines are tested by calling ``protocol.check(now)`` with the time of our choosing: no sleeps, no clocks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from fastgate._types import ASGIApp, Receive, Scope, Send
from fastgate.serving.limits import ServerLimits
from fastgate.serving.protocol import HttpProtocol


@dataclass
class FakeTransport:
    written: bytearray = field(default_factory=bytearray)
    closed: bool = False  # the server ended its side: close, abort, or FIN (write_eof)
    eof: bool = False
    aborted: bool = False
    ended: bool = False  # the socket is gone (close or abort), not only its sending side (write_eof)
    reading: bool = True
    protocol: Any = None

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def writelines(self, data: Any) -> None:
        for piece in data:
            self.write(piece)

    def close(self) -> None:
        self.closed = self.ended = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = self.eof = True

    def abort(self) -> None:
        self.closed = self.aborted = self.ended = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.0.0.7", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)


class Echo:
    """An ASGI app that records each request and answers 200 with the body it read."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.scopes.append(scope)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


def connect(
    app: ASGIApp, limits: ServerLimits | None = None, state: ServerState | None = None, **config: Any
) -> tuple[HttpProtocol, FakeTransport]:
    """A protocol for ``app`` under ``limits`` on a fresh fake connection (call inside a running event loop)."""
    if limits is not None:
        app.server_limits = limits  # type: ignore[attr-defined]  # where the protocol finds a Gateway's limits
    uv_config = uvicorn.Config(app, http=HttpProtocol, lifespan="off", log_level="warning", **config)
    protocol = HttpProtocol(uv_config, state or ServerState(), {}, _loop=asyncio.get_running_loop())
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def settle(rounds: int = 20) -> None:
    """Let the app's task run as far as it can without new input."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def status_of(written: bytes) -> int:
    return int(written.split(b" ", 2)[1]) if written.startswith(b"HTTP/1.1 ") else 0
