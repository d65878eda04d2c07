"""fastgate inside a FastAPI (or plain Starlette) app: pooled upstream clients, ``forward()``, mounting.

>>> app = FastAPI(lifespan=Upstreams(users="http://127.0.0.1:9001"))
>>> @app.api_route("/users/{path:path}", methods=["GET", "POST"])
... async def users(request: Request, path: str) -> Response:
...     return forward(request, "users", f"/{path}")

Nothing here imports FastAPI: the helpers are Starlette objects (``Response``, an ASGI app, a lifespan, a
dependency taking ``HTTPConnection``), so they work the same on FastAPI and plain Starlette. Forwarding is
:func:`fastgate.proxy.http.forward_http`, the gateway's own engine: same header rules, same streaming both ways,
same cancellation when the client leaves, same JSON 502/503/504 answers.

Starlette gives mounted apps no lifespan (Kludex/starlette#649), so whatever is mounted relies on the host app's
lifespan: :class:`Upstreams` for named upstreams, ``gateway.lifespan()`` for a mounted :class:`~fastgate.Gateway`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketState

from .._types import Message, Receive, Scope, Send
from ..app import Gateway
from ..config import UpstreamConfig
from ..exceptions import UpstreamUnavailable
from ..observability.logging import error_logger
from ..observability.safe_url import safe_url
from ..proxy.asgi import request_target
from ..proxy.errors import error_response
from ..proxy.headers import new_request_id
from ..proxy.http import forward_http
from ..proxy.websocket import forward_websocket as forward_ws
from ..proxy.websocket import refuse_websocket
from .client import UpstreamClient

AppLifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Mapping[str, Any] | None]]

# RFC 3986 pchar plus "/": what may stay unescaped in a path we rebuild from a decoded one.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class Upstreams:
    """A lifespan that opens one pooled :class:`UpstreamClient` per named upstream and closes them at shutdown.

    >>> app = FastAPI(lifespan=Upstreams(users="http://127.0.0.1:9001", orders=UpstreamConfig(url=...)))
    >>> # in a handler: request.state.users.get(...), forward(request, "users"), Depends(upstream_client("users"))

    The clients reach handlers through lifespan state, ``yield {"users": client, ...}`` as in the seed texts.
    To keep the app's own lifespan, pass it (its state is merged in; it runs inside, so the clients are open
    for its whole life) or enter this one from yours:

    >>> app = FastAPI(lifespan=Upstreams(users=..., lifespan=app_lifespan))
    >>> @asynccontextmanager
    ... async def lifespan(app):
    ...     async with Upstreams(users=...)(app) as clients:
    ...         yield {**clients, "db": db}

    Upstreams are given as keyword arguments or as a mapping (for names that are not keywords).
    """

    def __init__(
        self,
        upstreams: Mapping[str, str | UpstreamConfig] | None = None,
        /,
        *,
        lifespan: AppLifespan | None = None,
        **named: str | UpstreamConfig,
    ) -> None:
        merged = {**(upstreams or {}), **named}
        if not merged:
            raise ValueError("Upstreams needs at least one upstream, e.g. Upstreams(api='http://127.0.0.1:9000')")
        self.configs: dict[str, UpstreamConfig] = {}
        for name, config in merged.items():
            if not name.isidentifier():
                raise ValueError(f"upstream name {name!r} must be an identifier (it becomes request.state.{name})")
            self.configs[name] = UpstreamConfig(url=config) if isinstance(config, str) else config
        self.lifespan = lifespan

    def __repr__(self) -> str:
        return f"<Upstreams {', '.join(f'{n}={safe_url(str(c.url))}' for n, c in self.configs.items())}>"

    def __call__(self, app: object = None) -> contextlib.AbstractAsyncContextManager[dict[str, Any]]:
        return self._open(app)

    @contextlib.asynccontextmanager
    async def _open(self, app: object) -> AsyncIterator[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            state: dict[str, Any] = {}
            for name, config in self.configs.items():
                state[name] = await stack.enter_async_context(UpstreamClient(name, config))
            if self.lifespan is not None:
                own = await stack.enter_async_context(self.lifespan(app))
                if own:
                    clash = sorted(set(own) & set(state))
                    if clash:
                        raise ValueError(f"the app's lifespan state reuses upstream names: {', '.join(clash)}")
                    state.update(own)
            yield state


def _client_from_state(scope: Scope, name: str) -> UpstreamClient:
    client = scope.get("state", {}).get(name)
    if not isinstance(client, UpstreamClient):
        raise RuntimeError(
            f"no upstream client {name!r} in the lifespan state: give the app lifespan=Upstreams({name}=...) "
            "(a mounted app uses its host app's lifespan)"
        )
    return client


@functools.cache
def upstream_client(name: str) -> Callable[[HTTPConnection], Awaitable[UpstreamClient]]:
    """A FastAPI dependency giving the named upstream's pooled client, for handlers' own downstream calls.

    >>> @app.get("/me")
    ... async def me(users: Annotated[UpstreamClient, Depends(upstream_client("users"))]) -> dict:
    ...     return (await users.get("/users/me")).json()

    It is the same client (and pool) as ``request.state.users``; in a ``def`` endpoint use ``users.sync``.
    """

    async def dependency(connection: HTTPConnection) -> UpstreamClient:
        return _client_from_state(connection.scope, name)

    dependency.__name__ = dependency.__qualname__ = f"upstream_client_{name}"
    return dependency


def _target(scope: Scope, path: str | None, query: str | None) -> bytes:
    """The upstream target for ``forward()`` / ``forward_websocket()``: ``path`` (decoded) or the routed one."""
    if path is None:
        target = request_target(scope)
        if query is not None:
            target = target.partition(b"?")[0] + (b"?" + query.encode("latin-1") if query else b"")
        return target
    target = quote(path if path.startswith("/") else "/" + path, safe=_PATH_SAFE).encode("ascii")
    raw_query: bytes = scope.get("query_string", b"") if query is None else query.encode("latin-1")
    return target + b"?" + raw_query if raw_query else target


def _header_pairs(headers: Mapping[str, str] | None) -> list[tuple[bytes, bytes]] | None:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()] if headers else None


def _with_request_headers(scope: Scope, headers: list[tuple[bytes, bytes]] | None) -> Scope:
    if not headers:
        return scope
    names = {name for name, _ in headers}
    return {**scope, "headers": [pair for pair in scope["headers"] if pair[0] not in names] + headers}


def _replay_body(body: bytes, receive: Receive) -> Receive:
    """``receive`` with the already-read body in front of it (a handler awaited ``request.body()``)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sender


async def _forward(client: UpstreamClient, scope: Scope, receive: Receive, send: Send, target: bytes) -> None:
    if not client.is_open:
        error_logger.error("request for upstream %r before its lifespan started or after it ended", client.name)
        await error_response(send, UpstreamUnavailable("upstream client is not open", client.name), new_request_id())
        return
    await forward_http(scope, receive, send, client.forward_options, target)


def _read_body(request: Request) -> bytes | None:
    """The body the handler (or FastAPI, for body parameters) already read, which receive() will not give again.

    Raises RuntimeError when it was consumed as a stream: nothing is left to forward. Starlette has no public flag
    for either, hence the private attributes.
    """
    body: bytes | None = getattr(request, "_body", None)
    if body is None and getattr(request, "_stream_consumed", False):
        raise RuntimeError(
            "forward(): the request body was consumed as a stream (request.stream(), or form parsing), "
            "so there is none left to forward"
        )
    return body


class ForwardResponse(Response):
    """The response :func:`forward` returns; the exchange happens when Starlette sends it."""

    def __init__(
        self, request: Request, client: UpstreamClient, target: bytes, headers: list[tuple[bytes, bytes]] | None
    ) -> None:
        # No super().__init__(): status and body come from the upstream. Headers set on this object (and
        # FastAPI's background tasks) are added to the upstream's response.
        self.status_code = 200
        self.background = None
        self.body = b""
        self.raw_headers = []
        self.request = request
        self.client = client
        self.target = target
        self._request_headers = headers

    def __repr__(self) -> str:
        return f"<ForwardResponse {self.request.method} {self.target.decode('latin-1')} -> {self.client.name!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = _read_body(self.request)
        if body is not None:
            receive = _replay_body(body, receive)
        scope = _with_request_headers(scope, self._request_headers)
        if self.raw_headers:
            send = _with_headers(send, self.raw_headers)
        await _forward(self.client, scope, receive, send, self.target)
        if self.background is not None:
            await self.background()


def forward(
    request: Request,
    upstream: UpstreamClient | str,
    path: str | None = None,
    *,
    query: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ForwardResponse:
    """Relay ``request`` to an upstream and stream its answer back: the gateway's forwarding, as a response.

    >>> @app.api_route("/users/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    ... async def users(request: Request, path: str) -> Response:
    ...     return forward(request, "users", f"/{path}")

    ``upstream`` is a client from :class:`Upstreams` or its name in the lifespan state. ``path`` is the
    (decoded) path to request upstream, after the upstream URL's own path; by default the request's path as the
    app sees it (without a mount prefix). ``query`` replaces the query string (already encoded), which is
    kept by default. ``headers`` are set on the upstream request, replacing the client's of the same name.

    The request body is streamed up as it arrives (or replayed, if the handler already read it), the response
    body streamed down; hop-by-hop headers are dropped and X-Forwarded-For/-Proto/-Host and Via added as the
    gateway does; the upstream response is closed in every case; a client disconnect cancels the upstream call.
    Upstream failures become the gateway's JSON 502/503/504. Nothing happens until the response is sent, so a
    ``def`` endpoint may return it too. A body the handler consumed as a stream (``request.stream()``) cannot be
    forwarded: ``forward()`` raises ``RuntimeError`` then, when called, not when the response is sent.
    """
    _read_body(request)  # fails now, in the handler, rather than as a 500 once the response is under way
    client = _client_from_state(request.scope, upstream) if isinstance(upstream, str) else upstream
    return ForwardResponse(request, client, _target(request.scope, path, query), _header_pairs(headers))


async def _forward_websocket(client: UpstreamClient, scope: Scope, receive: Receive, send: Send, target: bytes) -> None:
    if not client.is_open:
        error_logger.error("WebSocket for upstream %r before its lifespan started or after it ended", client.name)
        if (await receive())["type"] == "websocket.connect":
            exc = UpstreamUnavailable("upstream client is not open", client.name)
            await refuse_websocket(scope, send, exc, new_request_id())
        return
    await forward_ws(scope, receive, send, client.websocket_options, target)


async def forward_websocket(
    websocket: WebSocket,
    upstream: UpstreamClient | str,
    path: str | None = None,
    *,
    query: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Relay a WebSocket session to an upstream until either side closes: the gateway's WebSocket forwarding.

    >>> @app.websocket("/chat/{room}")
    ... async def chat(websocket: WebSocket, room: str) -> None:
    ...     if websocket.query_params.get("token") != TOKEN:
    ...         await websocket.accept()  # accept first: the client then sees the close code, not an HTTP 403
    ...         raise WebSocketException(code=1008, reason="invalid token")
    ...     await forward_websocket(websocket, "chat", f"/rooms/{room}")

    Call it instead of ``websocket.accept()``: the upstream is dialed first and the client accepted with the
    subprotocol and headers the upstream chose, or refused with the upstream's own answer (or a JSON 502/504)
    when no session opens. Close codes and reasons pass through both ways; an upstream that drops gives the
    client 1011, one that breaks the protocol 1014, an oversized message 1009, a forbidden Origin 1008
    (``UpstreamConfig.websocket``). ``upstream``, ``path``, ``query`` and ``headers`` work as in :func:`forward`.
    """
    if websocket.client_state is not WebSocketState.CONNECTING:
        raise RuntimeError("forward_websocket() accepts the client itself: call it before websocket.accept()")
    client = _client_from_state(websocket.scope, upstream) if isinstance(upstream, str) else upstream
    scope = _with_request_headers(websocket.scope, _header_pairs(headers))
    # The raw ASGI callables: the relay speaks ASGI itself (denial responses, close codes, spec 2.4 OSError),
    # which Starlette's WebSocket.receive/send would check and translate. Starlette has no public accessor.
    receive: Receive = websocket._receive
    send: Send = websocket._send
    await _forward_websocket(client, scope, receive, send, _target(websocket.scope, path, query))


class _MountedHooks:
    """fastgate's server hooks with the request target seen from inside the mount (everything else delegated)."""

    __slots__ = ("_hooks", "raw_target")

    def __init__(self, hooks: Any, raw_target: bytes) -> None:
        object.__setattr__(self, "_hooks", hooks)
        object.__setattr__(self, "raw_target", raw_target)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hooks, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._hooks, name, value)


def _strip_mount(scope: Scope) -> Scope:
    if not scope.get("root_path"):
        return scope
    target = request_target(scope)
    raw_path = target.partition(b"?")[0]
    inner = {**scope, "path": unquote(raw_path.decode("latin-1")), "raw_path": raw_path, "root_path": ""}
    hooks = scope.get("extensions", {}).get("fastgate.server")
    if hooks is not None:
        inner["extensions"] = {**scope["extensions"], "fastgate.server": _MountedHooks(hooks, target)}
    return inner


class ProxyApp:
    """An ASGI app to mount in a FastAPI/Starlette app: a whole :class:`~fastgate.Gateway`, or one upstream.

    >>> gateway = Gateway(load_config("gateway.yaml"))
    >>> @asynccontextmanager
    ... async def lifespan(app):
    ...     async with gateway.lifespan():  # mounted apps get no lifespan of their own
    ...         yield
    >>> app = FastAPI(lifespan=lifespan)
    >>> app.mount("/gw", ProxyApp(gateway))            # /gw/x -> the gateway routes /x
    >>> app.mount("/users", ProxyApp("users"))         # /users/x -> upstream "users" at /x (needs Upstreams)

    Paths are seen from inside the mount: the prefix is taken off before routing or forwarding. A request that
    arrives before the lifespan opened the pools gets a JSON 503 and an error in the log.
    """

    def __init__(self, target: Gateway | UpstreamClient | str) -> None:
        self.target = target

    def __repr__(self) -> str:
        return f"<ProxyApp {self.target!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self.target
        if isinstance(target, Gateway):
            await target(_strip_mount(scope) if scope["type"] in ("http", "websocket") else scope, receive, send)
            return
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return  # lifespan: mounted apps get none; the host app's lifespan opens the clients
        if isinstance(target, str):
            client = scope.get("state", {}).get(target)
            if not isinstance(client, UpstreamClient):
                error_logger.error("no upstream client %r in the lifespan state (host app without Upstreams?)", target)
                exc = UpstreamUnavailable("upstream is not open", target)
                if kind == "http":
                    await error_response(send, exc, new_request_id())
                elif (await receive())["type"] == "websocket.connect":
                    await refuse_websocket(scope, send, exc, new_request_id())
                return
        else:
            client = target
        if kind == "http":
            await _forward(client, scope, receive, send, request_target(scope))
        else:
            await _forward_websocket(client, scope, receive, send, request_target(scope))
