"""Plugins the tests name in routes' ``use`` (``tests.plugin_fixtures:Name``); each records what it saw."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import anyio

from fastgate import Answer, Exchange, Plugin, RequestContext, ResponseHead

EVENTS: list[str] = []  # lifespan events, in order
FINISHED: list[Exchange] = []
BODY_CHUNKS: list[bytes] = []


class Refuse(Plugin):
    """401 with a challenge unless ``x-token`` is ``token``; sets the identity when it is."""

    def __init__(self, token: str = "let-me-in") -> None:
        self.token = token

    async def on_request(self, request: RequestContext) -> Answer | None:
        if request.headers.get("x-token") != self.token:
            return Answer(401, {"www-authenticate": 'Bearer realm="test"'}, b"no token")
        request.identity = "tester"
        request.headers.set("x-identity", request.identity)
        request.headers.remove("x-token")
        return None


MARK: ContextVar[str] = ContextVar("MARK", default="-")


class ContextMark(Plugin):
    """Records in EVENTS what the context variable MARK held when a request came (``mark -``), then sets it to the
    request's path and never resets it: a request must not see what the one before it set."""

    async def on_request(self, request: RequestContext) -> Answer | None:
        EVENTS.append(f"mark {MARK.get()}")
        MARK.set(request.path)
        return None

    async def on_response(self, request: RequestContext, response: ResponseHead) -> None:
        EVENTS.append(f"response mark {MARK.get()}")


class RouteOf(Plugin):
    """Records ``request.route`` of each request it sees in EVENTS (``route 1``)."""

    async def on_request(self, request: RequestContext) -> Answer | None:
        EVENTS.append(f"route {request.route}")
        return None


class Boom(Plugin):
    """Raises in ``phase`` (``on_request`` or ``on_response``) when the path contains ``/boom``."""

    def __init__(self, phase: str = "on_request") -> None:
        self.phase = phase

    async def on_request(self, request: RequestContext) -> None:
        if self.phase == "on_request" and "/boom" in request.path:
            raise KeyError("no such thing")

    async def on_response(self, request: RequestContext, response: ResponseHead) -> None:
        if self.phase == "on_response" and "/boom" in request.path:
            raise RuntimeError("response broke")


class Upper(Plugin):
    """Streams the request body upstream upper-cased (same length), recording each chunk."""

    async def request_body(self, request: RequestContext, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in body:
            BODY_CHUNKS.append(chunk)
            yield chunk.upper()


class StatusAndFinish(Plugin):
    """Turns a 404 from the upstream into a 410, tags responses, and records the finished exchange."""

    async def on_response(self, request: RequestContext, response: ResponseHead) -> None:
        if response.status == 404:
            response.status = 410
        response.headers.set("x-plugin", "seen")

    async def on_finish(self, request: RequestContext, exchange: Exchange) -> None:
        FINISHED.append(exchange)


class AwaitingFinish(Plugin):
    """An ``on_finish`` hook that awaits before it records the exchange (a store written after each request)."""

    async def on_finish(self, request: RequestContext, exchange: Exchange) -> None:
        await anyio.sleep(0.05)
        FINISHED.append(exchange)


class BadTarget(Plugin):
    """Sets a target that may not go on a request line."""

    async def on_request(self, request: RequestContext) -> None:
        request.target = b"/x HTTP/1.1\r\nX-Smuggled: 1"


class Stall(Plugin):
    """An on_request that waits (a slow auth service); records whether it was cancelled and the finished record."""

    started: list[str] = []
    cancelled: list[str] = []

    async def on_request(self, request: RequestContext) -> None:
        Stall.started.append(request.request_id)
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            Stall.cancelled.append(request.request_id)
            raise

    async def on_finish(self, request: RequestContext, exchange: Exchange) -> None:
        FINISHED.append(exchange)


class FailingStartup(Plugin):
    async def startup(self) -> None:
        raise OSError("redis is down")


class FailingStartupAfter(Plugin):
    """Fails in startup like FailingStartup, and records that it was never shut down."""

    async def startup(self) -> None:
        EVENTS.append("startup failing")
        raise OSError("redis is down")

    async def shutdown(self) -> None:
        EVENTS.append("shutdown failing")


class Lifespan(Plugin):
    def __init__(self, label: str = "a") -> None:
        self.label = label

    async def startup(self) -> None:
        EVENTS.append(f"startup {self.label}")

    async def shutdown(self) -> None:
        EVENTS.append(f"shutdown {self.label}")


def picky(**options: Any) -> Plugin:
    """A factory function (not a class) that refuses unknown options."""
    if set(options) - {"ok"}:
        raise TypeError(f"unexpected options {sorted(set(options) - {'ok'})}")
    return Plugin()
