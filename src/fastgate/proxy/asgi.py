"""The ASGI adapter: an ASGI ``scope``/``receive``/``send`` as a :class:`~fastgate.proxy.downstream.Downstream`.

The gateway's exchange core (``proxy/http.py``) knows no ASGI. This adapter drives it for the library (``forward()``,
``ProxyApp``, a gateway mounted in a FastAPI app) and for any ASGI server: the head is read from the scope, the body
from ``receive()`` messages, and the response goes out as ``http.response.*`` messages. Under fastgate's own server
the scope's ``fastgate.server`` extension adds what ASGI cannot say (the raw target, a disconnect callback,
``write_paused``, ``abort``); elsewhere a watcher task learns of a disconnect (``proxy/disconnect.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from .._types import Receive, Scope, Send
from ..exceptions import ClientDisconnected
from .disconnect import AnyDisconnectScope, HookScope, WatcherScope
from .paths import PATH_KEY

_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def request_target(scope: Scope) -> bytes:
    """The request target to forward: what the client sent, less the mount prefix (``root_path``) if any.

    Under fastgate's server protocol the target is taken byte for byte from the request line (so ``/p?`` keeps
    its ``?``); elsewhere it is rebuilt from ``raw_path`` and ``query_string``. When the app is mounted (Starlette's
    ``app.mount("/api", gateway)`` sets ``root_path``), the prefix is taken off, so ``/api/x`` goes upstream as ``/x``.
    """
    hooks = scope.get("extensions", {}).get("fastgate.server")
    target: bytes
    if hooks is not None and hooks.raw_target.startswith(b"/"):
        target = hooks.raw_target
    else:
        raw_path: bytes = scope.get("raw_path") or quote(scope["path"], safe=_PATH_SAFE).encode("ascii")
        query: bytes = scope.get("query_string", b"")
        target = raw_path + b"?" + query if query else raw_path
    root: str = scope.get("root_path", "")
    if not root:
        return target
    for prefix in (root.encode("utf-8"), quote(root, safe=_PATH_SAFE).encode("ascii")):
        if target.startswith(prefix) and target[len(prefix) : len(prefix) + 1] in (b"", b"/", b"?"):
            rest = target[len(prefix) :]
            return rest if rest.startswith(b"/") else b"/" + rest
    # The target does not carry the prefix (a server's --root-path): rebuild it from the routed path.
    path: str = scope["path"]
    if path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        path = path[len(root) :] or "/"
    query = scope.get("query_string", b"")
    return quote(path, safe=_PATH_SAFE).encode("ascii") + (b"?" + query if query else b"")


class AsgiDownstream:
    """One ASGI HTTP request as the exchange core's downstream (``target``: the target to forward, default the
    client's less the mount prefix)."""

    __slots__ = (
        "scope",
        "receive",
        "send",
        "method",
        "target",
        "headers",
        "http_version",
        "scheme",
        "client",
        "offers_trailers",
        "_hooks",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, target: bytes | None = None) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method: str = scope["method"]
        self.target = target if target is not None else request_target(scope)
        self.headers: list[tuple[bytes, bytes]] = scope["headers"]
        version: str = scope.get("http_version", "1.1")
        self.http_version = "2.0" if version == "2" else version  # the access line's HTTP/2.0, as the native driver's
        self.scheme: str = scope.get("scheme", "http")
        self.client: tuple[str, int] | None = scope.get("client")
        extensions = scope.get("extensions") or {}
        self._hooks: Any = extensions.get("fastgate.server")
        self.offers_trailers = "http.response.trailers" in extensions

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    @property
    def matched_path(self) -> bytes | None:
        return self.scope.get(PATH_KEY)

    @matched_path.setter
    def matched_path(self, path: bytes | None) -> None:
        self.scope[PATH_KEY] = path

    @property
    def disconnected(self) -> bool:
        return self._hooks is not None and bool(self._hooks.disconnected)

    @property
    def write_paused(self) -> bool:
        """Known only under fastgate's server (its ``fastgate.server`` extension); another server's send may wait."""
        return self._hooks is not None and bool(self._hooks.write_paused)

    def disconnect_scope(self, exchanges: set[Any]) -> AnyDisconnectScope:
        if self._hooks is not None:
            return HookScope(self._hooks, exchanges)
        return WatcherScope(self.receive, exchanges)

    async def read_body(self) -> tuple[bytes, bool]:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("client disconnected during the request body")
        return message.get("body", b""), message.get("more_body", False)

    async def send_head(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], *, trailers: bool = False, defer: bool = False
    ) -> None:
        start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
        if trailers:
            start["trailers"] = True
        if defer:
            start["fastgate.defer"] = True  # fastgate's server writes it with the first body message
        await self.send(start)

    async def send_body(self, data: bytes, more: bool) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        await self.send({"type": "http.response.trailers", "headers": fields, "more_trailers": False})

    def abort(self) -> None:
        if self._hooks is not None:
            self._hooks.abort()
