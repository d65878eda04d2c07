"""Testing plugins in-process, without a server: the same chain the gateway runs, driven by hand.

>>> runner = PluginRunner(TokenCheck(token="s3cret"))
>>> result = await runner.request("GET", "/api/x", headers={"authorization": "Bearer nope"})
>>> result.answer.status
401
>>> result = await runner.request("GET", "/api/x", headers={"authorization": "Bearer s3cret"})
>>> result.answer is None, result.request.headers.get("x-user")
(True, 'alice')
>>> response = await runner.response(result.request, 200, {"content-type": "text/plain"})
>>> response.headers.get("x-timing")

``runner.body(request, [b"chunk", ...])`` streams a body through the ``request_body`` hooks and returns what would
go upstream; ``runner.finish(request, status=200)`` runs the ``on_finish`` hooks with an :class:`Exchange`;
``async with runner.lifespan():`` runs ``startup`` and ``shutdown``. A hook that raises raises
:class:`~fastgate.plugins.chain.PluginError` here (``.plugin``, ``.error``), where the gateway would answer 500.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

from .plugins.base import Answer, Exchange, HeaderList, RequestContext, ResponseHead
from .plugins.chain import PluginChain, PluginError
from .proxy.headers import new_request_id

__all__ = ["PluginError", "PluginRunner", "RequestResult"]

HeadersLike = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


def _raw(headers: HeadersLike | None) -> list[tuple[bytes, bytes]]:
    if headers is None:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [
        (
            (k.encode("latin-1") if isinstance(k, str) else k).lower(),
            v.encode("latin-1") if isinstance(v, str) else v,
        )
        for k, v in pairs
    ]


@dataclass
class RequestResult:
    """What the request-head hooks did: ``answer`` is the early answer (None: the request would go upstream),
    ``answered_by`` the plugin that gave it, ``request`` the context with its changed headers, target, identity."""

    request: RequestContext
    answer: Answer | None
    answered_by: str | None


class PluginRunner:
    """Runs plugins' hooks the way a route runs them (in order; responses in reverse order)."""

    def __init__(self, *plugins: object) -> None:
        named = [(str(getattr(plugin, "name", "") or type(plugin).__name__), plugin) for plugin in plugins]
        self.chain = PluginChain(named)

    def make_request(
        self,
        method: str = "GET",
        target: str | bytes = "/",
        headers: HeadersLike | None = None,
        *,
        client: tuple[str, int] | None = ("127.0.0.1", 50000),
        has_body: bool = False,
        upstream: str = "test",
    ) -> RequestContext:
        """A request head as plugins see it (``headers`` as the upstream would get them, lower-case names)."""
        raw_target = target.encode("latin-1") if isinstance(target, str) else target
        return RequestContext(
            method,
            raw_target,
            HeaderList(_raw(headers)),
            raw_target.partition(b"?")[0].decode("latin-1"),
            client=client,
            request_id=new_request_id().decode("latin-1"),
            upstream=upstream,
            route=0,
            has_body=has_body,
        )

    async def request(
        self,
        method: str = "GET",
        target: str | bytes = "/",
        headers: HeadersLike | None = None,
        *,
        client: tuple[str, int] | None = ("127.0.0.1", 50000),
        has_body: bool = False,
    ) -> RequestResult:
        """Run the ``on_request`` hooks on a new request head."""
        request = self.make_request(method, target, headers, client=client, has_body=has_body)
        return await self.run_request(request)

    async def run_request(self, request: RequestContext) -> RequestResult:
        """Run the ``on_request`` hooks on ``request`` (made by :meth:`make_request` and changed as you like)."""
        answered = await self.chain.request(request)
        if answered is None:
            return RequestResult(request, None, None)
        return RequestResult(request, answered[1], answered[0])

    async def body(self, request: RequestContext, chunks: Iterable[bytes]) -> list[bytes]:
        """Stream ``chunks`` through the ``request_body`` hooks; the pieces that would go upstream."""

        async def source() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return [chunk async for chunk in self.chain.body(request, source())]

    async def response(
        self, request: RequestContext, status: int = 200, headers: HeadersLike | None = None
    ) -> ResponseHead:
        """Run the ``on_response`` hooks on an upstream response head; the head the client would get."""
        head = ResponseHead(status, HeaderList(_raw(headers)))
        await self.chain.response(request, head)
        return head

    async def finish(
        self,
        request: RequestContext,
        *,
        status: int = 200,
        bytes_sent: int = 0,
        duration: float = 0.0,
        outcome: str = "",
    ) -> Exchange:
        """Run the ``on_finish`` hooks with an :class:`Exchange` record (failures are logged, as in the gateway)."""
        exchange = Exchange(
            request.route,
            request.upstream,
            request.method,
            request.target.decode("latin-1"),
            status,
            bytes_sent,
            duration,
            request.request_id,
            outcome=outcome,
        )
        await self.chain.finish(request, exchange)
        return exchange

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[PluginRunner]:
        """``startup`` on entry, ``shutdown`` on exit."""
        await self.chain.startup()
        try:
            yield self
        finally:
            await self.chain.shutdown()


_ = PluginError  # re-exported: what a raising hook raises here
