"""One pooled client per named upstream, shared by ``forward()`` and by handlers' own downstream calls.

:class:`UpstreamClient` is an ``httpx.AsyncClient`` whose transport is fastgate's (the same one, with the same
pool, that the gateway uses for that upstream): handlers call ``await client.get("/users/1")`` as they would with
httpx, and ``forward(request, client)`` relays a whole request through the very same connections.

Differences from a plain ``httpx.AsyncClient``, all on purpose for a client shared by every request of an app:
it only talks to its upstream (another host raises ``ValueError``), it never keeps cookies (one user's
Set-Cookie must not reach the next user), it never follows redirects, it ignores proxy environment variables,
timeouts come from ``UpstreamConfig.timeouts`` (httpx's per-request ``timeout=`` is ignored), and failures raise
fastgate's :class:`~fastgate.UpstreamError` subclasses (``UpstreamConnectError``, ``UpstreamTimeout``...).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
import httpx

from ..config import UpstreamConfig
from ..observability.safe_url import safe_url
from ..proxy.http import ForwardOptions
from ..upstream.httpx_transport import NoCookieJar
from ..upstream.transport import CHUNKED, Transport, UpstreamRequest, UpstreamResponse, create_transport
from .sync import SyncUpstreamClient

if TYPE_CHECKING:
    from ..proxy.websocket import WebSocketForwardOptions

# Framing is the transport's job (UpstreamRequest.body_length); Connection is per hop.
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self._response.read():
            yield chunk

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._response.aclose()


class _FastgateHttpxTransport(httpx.AsyncBaseTransport):
    """httpx's transport interface over a fastgate :class:`Transport` (which owns the pool)."""

    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self.transport: Transport = create_transport(name, config)
        self.is_open = False
        self._origin = (config.scheme, config.host, config.port)

    async def __aenter__(self) -> _FastgateHttpxTransport:
        await self.transport.__aenter__()
        self.is_open = True
        return self

    async def aclose(self) -> None:
        if self.is_open:
            self.is_open = False
            await self.transport.__aexit__(None, None, None)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)) != self._origin:
            raise ValueError(
                f"upstream client {self.name!r} only sends to {safe_url(self.config.targets[0].url)}, "
                f"not to {safe_url(str(url))}"
            )
        headers: list[tuple[bytes, bytes]] = []
        body_length: int | None = None
        for name, value in request.headers.raw:
            lower = name.lower()
            if lower == b"content-length":
                body_length = int(value)
            elif lower == b"transfer-encoding":
                body_length = CHUNKED
            elif lower not in _FRAMING_HEADERS:
                headers.append((name, value))
        body = None
        if body_length is not None:
            assert isinstance(request.stream, httpx.AsyncByteStream), "UpstreamClient needs an async request body"
            body = aiter(request.stream)
        target = url.raw_path
        prefix = self.config.path_prefix  # the transport adds it again
        if prefix:
            if not target.startswith(prefix) or target[len(prefix) : len(prefix) + 1] not in (b"", b"/", b"?"):
                raise ValueError(f"upstream client {self.name!r} only sends below {prefix.decode()}, not to {url}")
            target = target[len(prefix) :]
            target = target if target.startswith(b"/") else b"/" + target
        upstream_request = UpstreamRequest(request.method.encode("ascii"), target, headers, body_length)
        response = await self.transport.send(upstream_request, body)
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_ResponseStream(response),
            extensions={"http_version": b"HTTP/1.1"},
        )


class UpstreamClient(httpx.AsyncClient):
    """A pooled client for one named upstream: httpx's API over fastgate's transport.

    >>> async with UpstreamClient("users", "http://127.0.0.1:9000") as users:
    ...     profile = (await users.get("/users/1")).json()

    In an app, :class:`~fastgate.Upstreams` opens one per upstream in the lifespan and hands it to handlers as
    ``request.state.<name>``; ``forward(request, client)`` relays a whole request through it, and
    ``client.sync`` offers the same calls to ``def`` endpoints (see :class:`SyncUpstreamClient`).
    """

    def __init__(self, name: str, config: UpstreamConfig | str) -> None:
        if isinstance(config, str):
            config = UpstreamConfig(url=config)
        self._fastgate = _FastgateHttpxTransport(name, config)
        super().__init__(
            base_url=config.targets[0].url,
            transport=self._fastgate,
            cookies=NoCookieJar(),
            follow_redirects=False,
            trust_env=False,
            timeout=None,
        )
        self.name = name
        self.config = config
        self.forward_options = ForwardOptions.from_config(name, self._fastgate.transport, config)
        self.sync = SyncUpstreamClient(self)

    @functools.cached_property
    def websocket_options(self) -> WebSocketForwardOptions:
        """How ``forward_websocket()`` reaches this upstream (each session dials its own connection)."""
        from ..proxy.websocket import WebSocketForwardOptions

        return WebSocketForwardOptions.from_config(self.name, self.config)

    @property
    def is_open(self) -> bool:
        """True between entering the client (the lifespan's startup) and closing it."""
        return self._fastgate.is_open

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        url = safe_url(self.config.targets[0].url)
        return f"<UpstreamClient {self.name!r} {url} {state} {self._fastgate.transport!r}>"
