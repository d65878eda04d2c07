"""The plugin interface: what a plugin is handed in each phase of an exchange, and what it may give back.

A plugin is any object with some of these methods (subclassing :class:`Plugin` documents them and gives no-op
defaults); the gateway looks once, when it builds a route, at which of them the plugin defines, and calls only
those (docs/plugins.md):

    async startup() / async shutdown()                  with the gateway's lifespan (open a pool, a cache)
    async on_request(request) -> Answer | None          request head, before anything goes upstream and before
                                                        the body is read; an Answer ends the exchange there
    request_body(request, body) -> AsyncIterator[bytes] only when defined: the body as a stream, to pass on
    async on_response(request, response)                response head (status, headers) before it goes out
    async on_finish(request, exchange)                  after the exchange, with its :class:`Exchange` record

Nothing here imports the rest of fastgate (``config`` imports this package to resolve ``use``).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "Exchange", "HeaderList", "Plugin", "RequestContext", "ResponseHead"]

# Message framing and hop-by-hop headers belong to fastgate: a plugin setting them could smuggle requests.
PROTECTED_HEADERS = frozenset(
    {
        b"connection",
        b"content-length",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
# A request target a plugin may leave: origin-form, visible ASCII (no space, no control byte, no '#').
_TARGET = re.compile(rb"/[\x21-\x22\x24-\x7e]*")


def valid_target(target: bytes) -> bool:
    """Whether ``target`` can go on the upstream request line as it is."""
    return _TARGET.fullmatch(target) is not None


def _name(name: str | bytes) -> bytes:
    return (name.encode("latin-1") if isinstance(name, str) else name).lower()


def _value(value: str | bytes) -> bytes:
    data = value.encode("latin-1") if isinstance(value, str) else value
    if b"\r" in data or b"\n" in data or b"\0" in data:
        raise ValueError(f"a header value may not contain CR, LF or NUL: {data[:64]!r}")
    return data


def _settable(name: str | bytes) -> bytes:
    key = _name(name)
    if _TOKEN.fullmatch(key) is None:
        raise ValueError(f"not a valid header name: {key[:64]!r}")
    if key in PROTECTED_HEADERS:
        raise ValueError(f"{key.decode('latin-1')} is a framing or hop-by-hop header; fastgate manages it")
    return key


class HeaderList:
    """Headers as raw ``(name, value)`` byte pairs, names lower case; edited in place.

    >>> headers = HeaderList([(b"accept", b"*/*")])
    >>> headers.set("X-Tenant", "acme"); headers.get("x-tenant")
    'acme'

    Names and values are given as ``str`` (latin-1) or ``bytes``; ``get`` and ``get_all`` answer ``str``.
    Framing and hop-by-hop headers (``content-length``, ``transfer-encoding``, ``connection``...) may not be set
    or added: fastgate manages them.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]] | None = None) -> None:
        self.raw: list[tuple[bytes, bytes]] = raw if raw is not None else []

    def get(self, name: str | bytes, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default``."""
        key = _name(name)
        for k, v in self.raw:
            if k == key:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str | bytes) -> list[str]:
        key = _name(name)
        return [v.decode("latin-1") for k, v in self.raw if k == key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, (str, bytes)):
            return False
        key = _name(name)
        return any(k == key for k, _ in self.raw)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def set(self, name: str | bytes, value: str | bytes) -> None:
        """Replace every ``name`` header by one with ``value`` (in the place of the first), or append it."""
        key = _settable(name)
        data = _value(value)
        out: list[tuple[bytes, bytes]] = []
        placed = False
        for pair in self.raw:
            if pair[0] == key:
                if not placed:
                    out.append((key, data))
                    placed = True
            else:
                out.append(pair)
        if not placed:
            out.append((key, data))
        self.raw[:] = out

    def add(self, name: str | bytes, value: str | bytes) -> None:
        """Append a ``name`` header, keeping those already there."""
        self.raw.append((_settable(name), _value(value)))

    def remove(self, name: str | bytes) -> None:
        """Drop every ``name`` header (nothing happens when there is none)."""
        key = _name(name)
        self.raw[:] = [pair for pair in self.raw if pair[0] != key]

    def __repr__(self) -> str:
        return f"HeaderList({self.raw!r})"


class RequestContext:
    """One request as plugins see it, from its head to the end of the exchange.

    ``headers`` are the headers going upstream, after fastgate's own rules (Host, X-Forwarded-*, Via,
    X-Request-Id: hop-by-hop ones are already gone); ``target`` is the path and query going upstream after the
    route's ``strip_prefix`` and ``rewrite`` (bytes, as sent). Both may be changed in ``on_request``.
    ``identity`` is for the verified caller (a JWT ``sub``, an API key's name) that later plugins and the
    upstream may use; ``state`` is a dict for plugins to keep per-request data between phases.
    """

    __slots__ = (
        "method",
        "path",
        "target",
        "headers",
        "client",
        "request_id",
        "upstream",
        "route",
        "has_body",
        "identity",
        "scope",
        "_state",
        "answered_at",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: HeaderList,
        path: str = "",
        client: tuple[str, int] | None = None,
        request_id: str = "",
        upstream: str = "",
        route: int = -1,
        has_body: bool = False,
        scope: Any = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.path = path
        self.client = client
        self.request_id = request_id
        self.upstream = upstream
        self.route = route
        self.has_body = has_body
        self.identity: str | None = None
        self.scope = scope
        self._state: dict[str, Any] | None = None
        self.answered_at = -1  # set by the chain: the position of the plugin that answered early, or raised

    @property
    def state(self) -> dict[str, Any]:
        """Per-request data for plugins (created on first use)."""
        if self._state is None:
            self._state = {}
        return self._state

    def __repr__(self) -> str:
        return f"<RequestContext {self.method} {self.target.decode('latin-1')} request_id={self.request_id}>"


_new = object.__new__


def request_context(
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    path: str,
    client: tuple[str, int] | None,
    request_id: str,
    upstream: str,
    route: int,
    has_body: bool,
    scope: Any,
) -> RequestContext:
    """``RequestContext(method, target, HeaderList(headers), ...)`` as the proxy builds it on every request of a route
    with plugins: the same object, without the two ``__init__`` calls (a class call with a Python ``__init__`` goes
    through ``type.__call__`` and ``slot_tp_init``, a few hundred instructions each).
    """
    wrapped: HeaderList = _new(HeaderList)
    wrapped.raw = headers
    context: RequestContext = _new(RequestContext)
    context.method = method
    context.target = target
    context.headers = wrapped
    context.path = path
    context.client = client
    context.request_id = request_id
    context.upstream = upstream
    context.route = route
    context.has_body = has_body
    context.identity = None
    context.scope = scope
    context._state = None
    context.answered_at = -1
    return context


class ResponseHead:
    """The response's status and headers before they go to the client (hop-by-hop ones already gone)."""

    __slots__ = ("status", "headers")

    def __init__(self, status: int, headers: HeaderList) -> None:
        self.status = status
        self.headers = headers

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status} {self.headers.raw!r}>"


@dataclass(slots=True)
class Answer:
    """An answer a plugin gives in ``on_request`` instead of forwarding: it never reaches the upstream.

    >>> Answer(401, {"www-authenticate": 'Bearer realm="api"'}, b"login first")
    >>> Answer.json(403, {"error": "forbidden"})

    fastgate adds ``content-length`` and ``x-request-id``. For a WebSocket handshake the answer goes out through
    the ASGI denial response (or, when the server lacks it, as a close: 1008 for a 4xx, 1011 otherwise).
    """

    status: int
    headers: dict[str, str] | Iterable[tuple[str | bytes, str | bytes]] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(
        cls, status: int, data: Any, headers: dict[str, str] | Iterable[tuple[str | bytes, str | bytes]] = ()
    ) -> Answer:
        pairs = list(headers.items() if isinstance(headers, dict) else headers)
        body = json.dumps(data, separators=(",", ":")).encode()
        return cls(status, [("content-type", "application/json"), *pairs], body)

    def raw_headers(self, request_id: bytes) -> list[tuple[bytes, bytes]]:
        """The headers to send: the plugin's (framing headers refused), ``content-length`` and ``x-request-id``."""
        pairs = self.headers.items() if isinstance(self.headers, dict) else self.headers
        out = [(_settable(name), _value(value)) for name, value in pairs]
        out.append((b"content-length", b"%d" % len(self.body)))
        out.append((b"x-request-id", request_id))
        return out


@dataclass(slots=True)
class Exchange:
    """What happened, once the exchange is over (``on_finish``): one record per request.

    ``status`` is what the client got (499 when it went away first), ``bytes_sent`` the response body bytes sent,
    ``duration`` seconds from the request head to the end, ``target`` the upstream address that failed when one
    did (``host:port``, else ``""``), ``retries`` the retries the transport made when it reports them, and
    ``outcome`` ``""`` for a plain exchange, else why it ended as it did (``upstream_timeout: ...``,
    ``client disconnected``, ``answered by <plugin>``).
    """

    route: int
    upstream: str
    method: str
    request_target: str
    status: int
    bytes_sent: int
    duration: float
    request_id: str
    target: str = ""
    retries: int = 0
    outcome: str = ""


class Plugin:
    """Base class for plugins: override the hooks you need; the others cost nothing per request.

    >>> class TokenCheck(Plugin):
    ...     def __init__(self, token: str) -> None:
    ...         self.token = token
    ...     async def on_request(self, request: RequestContext) -> Answer | None:
    ...         if request.headers.get("authorization") != f"Bearer {self.token}":
    ...             return Answer(401, {"www-authenticate": "Bearer"})
    ...         return None

    The object a route's ``use`` names is called once per route, with the ``options`` as keyword arguments,
    when the gateway is built. ``name`` is set to the ``use`` string unless the plugin sets its own.
    """

    name: str = ""
    early_answers: bool = False
    """True: ``on_response`` also sees the early answers (``Answer`` or error) of the plugins after this one."""

    async def startup(self) -> None:
        """Called once when the gateway's lifespan starts, before the first request."""

    async def shutdown(self) -> None:
        """Called once when the gateway's lifespan ends."""

    async def on_request(self, request: RequestContext) -> Answer | None:
        """The request head: change ``request.headers`` / ``request.target``, or return an :class:`Answer`."""
        return None

    def request_body(self, request: RequestContext, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The request body as a stream: yield what goes upstream. Keep the length (Content-Length is sent)."""
        return body

    async def on_response(self, request: RequestContext, response: ResponseHead) -> None:
        """The response head: change ``response.status`` and ``response.headers`` before they go out."""

    async def on_finish(self, request: RequestContext, exchange: Exchange) -> None:
        """After the exchange (metrics, logs, counters); what it raises is logged, the client has its answer."""
