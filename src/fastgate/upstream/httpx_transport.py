"""httpx's AsyncClient as a fastgate transport: slower (see PERFORMANCE-NOTES), but with httpx's ecosystem.

The client never keeps cookies (a shared client must not carry one user's cookies to another), never follows
redirects and ignores proxy environment variables. httpx's ``read`` timeout applies between body chunks too,
so ``stream_idle`` is not separate here: the read timeout bounds every wait for upstream data.
"""

from __future__ import annotations

import http.cookiejar
import urllib.request
from collections.abc import AsyncIterator
from types import TracebackType

import httpx

from ..config import Timeouts, UpstreamConfig
from ..exceptions import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .tls import client_context
from .transport import CHUNKED, UpstreamRequest, UpstreamResponse


class NoCookieJar(http.cookiejar.CookieJar):
    """A jar that stores nothing, so a Set-Cookie from one client's response never reaches another client."""

    def extract_cookies(self, response: http.client.HTTPResponse, request: urllib.request.Request) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


def _translate(exc: httpx.HTTPError, upstream: str, target: str) -> UpstreamError:
    if isinstance(exc, httpx.PoolTimeout):
        return UpstreamUnavailable(f"connection pool exhausted: {exc}", upstream, target)
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamConnectTimeout(f"connect timeout: {exc or type(exc).__name__}", upstream, target)
    if isinstance(exc, httpx.TimeoutException):
        kind = {httpx.ConnectTimeout: "connect", httpx.ReadTimeout: "read", httpx.WriteTimeout: "write"}
        detail = f"{kind.get(type(exc), 'upstream')} timeout: {exc or type(exc).__name__}"
        return UpstreamTimeout(detail, upstream, target)
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError(f"cannot connect: {exc}", upstream, target)
    return UpstreamProtocolError(f"{type(exc).__name__}: {exc}", upstream, target)


class HttpxResponse:
    aclose_waits = True
    trailers = None  # httpx (httpcore over h11) reads trailer fields and drops them

    def __init__(self, response: httpx.Response, upstream: str, target: str) -> None:
        self._response = response
        self._upstream = upstream
        self._target = target
        self._chunks = response.aiter_raw()
        self.target = target
        self.tries = 1
        self.status = response.status_code
        self.headers = list(response.headers.raw)

    async def read(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return b""
        except httpx.HTTPError as exc:
            raise _translate(exc, self._upstream, self._target) from exc

    def read_buffered(self) -> tuple[bytes, bool]:
        return b"", False

    async def aclose(self) -> None:
        await self._response.aclose()


def _timeout(t: Timeouts) -> dict[str, float | None]:
    return {"connect": t.connect, "read": t.read, "write": t.write, "pool": t.pool}


class HttpxTransport:
    def __init__(self, name: str, config: UpstreamConfig) -> None:
        self.name = name
        self.config = config
        self.target = config.target
        t, limits = config.timeouts, config.limits
        self._base = f"{config.scheme}://{config.authority.decode()}"
        self._prefix = config.path_prefix
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
            limits=httpx.Limits(
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
            ),
            cookies=NoCookieJar(),
            verify=client_context(config.ca_file),
            follow_redirects=False,
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"<HttpxTransport {self.name} {self._base}>"

    async def __aenter__(self) -> HttpxTransport:
        await self.client.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.client.aclose()

    async def send(self, request: UpstreamRequest, body: AsyncIterator[bytes] | None) -> UpstreamResponse:
        headers = list(request.headers)
        if request.body_length is not None and request.body_length != CHUNKED:
            headers.append((b"content-length", b"%d" % request.body_length))
        outgoing = httpx.Request(
            request.method.decode("ascii"),
            httpx.URL(self._base + (self._prefix + request.target).decode("latin-1")),
            headers=headers,
            content=body if body is not None else b"",
            extensions={"timeout": _timeout(request.timeouts)} if request.timeouts is not None else None,
        )
        if body is None:
            # httpx would add Content-Length: 0 to a body-less request; send exactly what the client sent.
            outgoing.headers.pop("content-length", None)
        try:
            response = await self.client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            raise _translate(exc, self.name, self.target) from exc
        return HttpxResponse(response, self.name, self.target)
