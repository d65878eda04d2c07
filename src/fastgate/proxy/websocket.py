"""One WebSocket session through the gateway.

How this works
--------------
1. ``websocket.connect`` arrives. Checks that need no upstream come first: the allowed origins (a refusal is a
   policy close, 1008) and the request-head rules of ``proxy/headers.py`` (400/431, as for HTTP).
2. The upstream is dialed **before** the client is accepted (``upstream/websocket.py``), offering the client's
   subprotocols and its application headers (cookies, auth, custom headers, the query string), never its
   Sec-WebSocket-Key/-Version/-Extensions. When no WebSocket opens, the client gets an HTTP answer through the
   ASGI denial-response extension (``websocket.http.response``): the upstream's own refusal unchanged (status,
   headers, body), or fastgate's JSON 502/504. Without that extension the client is accepted and closed at once
   with the error's close code, since a bare ``websocket.close`` before accept reaches it as a 403.
3. The client is accepted with the subprotocol the upstream chose and the upstream's application headers.
4. Two pumps run in one task group: client -> upstream in a child task, upstream -> client in this task. Each
   waits on one side only, so backpressure is natural: while a pump waits to send, nobody reads the side it
   came from (Uvicorn pauses reading while a message waits; websockets' client after 16 frames). The first pump
   to see its side end records how the session ends (``_Ending``) and cancels the group. An idle watcher joins
   them when ``idle_timeout`` is set.
5. Each side still open then gets the close the other side sent, code and reason unchanged, except the codes
   that may not be sent on the wire (RFC 6455 §7.4.1): ``1005`` (an empty close frame) becomes 1000, an upstream
   that dropped without a close frame (``1006``) gives the client 1011, one that broke the protocol 1014, and a
   client that dropped its connection gives the upstream 1001. A policy failure (Starlette's
   ``WebSocketException``: a message above ``max_message_size`` 1009, a forbidden origin 1008) closes the client
   with its code and the upstream with 1001; a fastgate error closes the client with its ``close_code``.
6. Both closes run at once, shielded from cancellation but bounded by ``close_timeout``: a peer that stopped
   reading cannot hold the session. ``finally``: the upstream socket is closed or aborted, whatever happened, so
   no task or socket outlives the session.

Pings are per hop: Uvicorn pings the client (``ServerConfig.ws_client_ping_interval``), websockets pings the upstream
(``WebSocketOptions.ping_interval``), and neither hop's pings or pongs are relayed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING

import anyio
from starlette.exceptions import WebSocketException

from .._types import Headers, Message, Receive, Scope, Send
from ..config import ServerConfig, UpstreamConfig
from ..exceptions import FastgateError, UpstreamError, UpstreamRefused
from ..observability.exchange import Observability
from ..observability.logging import error_logger
from ..observability.record import ExchangeRecord
from ..plugins.base import Answer, HeaderList, RequestContext
from ..plugins.chain import PluginChain, PluginError
from ..upstream.tls import client_context
from ..upstream.ws_target import WebSocketTarget

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection
    from websockets.exceptions import ConnectionClosed

    from ..upstream.cluster import Cluster
from .errors import error_response
from .headers import HeaderRules, response_headers

DENIAL_EXTENSION = "websocket.http.response"
# Handshake headers that belong to one hop: each side has its own key, version, extensions and subprotocol.
HANDSHAKE_HEADERS = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
    }
)
# Close codes an endpoint may send (RFC 6455 §7.4.1-2); 3000-4999 are the registered and private ranges.
WIRE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
_TO_CLIENT = {1005: 1000, 1006: 1011, 1015: 1014}
_TO_UPSTREAM = {1005: 1000, 1006: 1001, 1015: 1001}
EXPIRED = "closed by server.drain_timeout"  # the session note (access line) of a session ``expire`` ended
MAX_REASON_BYTES = 123  # RFC 6455 §5.5: a control frame carries at most 125 bytes, two of them the code


@dataclass(frozen=True, slots=True)
class WebSocketForwardOptions:
    """How WebSocket sessions are forwarded to one upstream; built once per upstream from the config.

    >>> options = WebSocketForwardOptions.from_config("api", UpstreamConfig(url="http://127.0.0.1:9000"))
    >>> await forward_websocket(scope, receive, send, options, b"/ws?room=1")
    """

    target: WebSocketTarget
    rules: HeaderRules
    idle_timeout: float | None = None
    max_message_size: int = 16 * 1024 * 1024
    allowed_origins: frozenset[str] | None = None
    cluster: Cluster | None = None  # the upstream's targets, once the lifespan has started them
    observability: Observability = field(default_factory=Observability)  # access line, session gauge, tracing
    sessions: set[_Session] = field(default_factory=set, compare=False)  # open; expire() closes them (drain_timeout)

    @classmethod
    def from_config(
        cls,
        name: str,
        upstream: UpstreamConfig,
        server: ServerConfig | None = None,
        *,
        observability: Observability | None = None,
        strip: Iterable[bytes] = (),
    ) -> WebSocketForwardOptions:
        ws = upstream.websocket
        target = WebSocketTarget(
            name,
            upstream.host,
            upstream.port,
            # one context per upstream, shared by its https targets (ca_file is an upstream key)
            tls=client_context(upstream.ca_file) if any(t.scheme == "https" for t in upstream.targets) else None,
            connect_timeout=upstream.timeouts.connect,
            ping_interval=ws.ping_interval,
            ping_timeout=ws.ping_timeout,
            close_timeout=ws.close_timeout,
            max_message_size=ws.max_message_size,
        )
        return cls(
            target=target,
            rules=HeaderRules.from_config(upstream, server, strip=strip),
            idle_timeout=ws.idle_timeout,
            max_message_size=ws.max_message_size,
            allowed_origins=frozenset(ws.allowed_origins) if ws.allowed_origins is not None else None,
            observability=observability if observability is not None else Observability(),
        )


def close_for(exc: BaseException) -> tuple[int, str]:
    """The close code and reason an open session ends with when ``exc`` ends it (fastgate's exception handler).

    >>> close_for(WebSocketException(1009, "too big")), close_for(UpstreamUnavailable("circuit open"))
    ((1009, 'too big'), (1013, 'upstream_unavailable'))
    """
    if isinstance(exc, WebSocketException):
        return exc.code, exc.reason
    if isinstance(exc, FastgateError):
        return exc.close_code, exc.code
    return 1011, "internal_error"


def client_close_code(code: int) -> int:
    """The code the client is sent when the upstream's side ended with ``code`` (reserved codes mapped).

    >>> client_close_code(4001), client_close_code(1005), client_close_code(1006)
    (4001, 1000, 1011)
    """
    code = _TO_CLIENT.get(code, code)
    return code if code in WIRE_CLOSE_CODES or 3000 <= code < 5000 else 1014


def upstream_close_code(code: int) -> int:
    """The code the upstream is sent when the client's side ended with ``code`` (reserved codes mapped).

    >>> upstream_close_code(4001), upstream_close_code(1005), upstream_close_code(1006)
    (4001, 1000, 1001)
    """
    code = _TO_UPSTREAM.get(code, code)
    return code if code in WIRE_CLOSE_CODES or 3000 <= code < 5000 else 1001


def origin_allowed(headers: Headers, allowed: frozenset[str] | None) -> bool:
    """Whether the handshake's Origin may open a session; one without Origin (not a browser) always may.

    >>> origin_allowed([(b"origin", b"https://App.example")], frozenset({"https://app.example"}))
    True
    """
    if allowed is None:
        return True
    for name, value in headers:
        if name == b"origin":
            return value.decode("latin-1").lower() in allowed
    return True


def _clip(reason: str) -> str:
    data = reason.encode()
    return reason if len(data) <= MAX_REASON_BYTES else data[:MAX_REASON_BYTES].decode(errors="ignore")


@dataclass(slots=True)
class _Ending:
    """How a session ends: the close each side still open gets (None: that side is gone), and why."""

    client: tuple[int, str] | None
    upstream: tuple[int, str] | None
    note: str


def _upstream_ended(exc: ConnectionClosed) -> _Ending:
    rcvd, sent = exc.rcvd, exc.sent
    if rcvd is not None and (sent is None or exc.rcvd_then_sent):
        return _Ending((client_close_code(rcvd.code), rcvd.reason), None, f"upstream closed with {rcvd.code}")
    if sent is not None:  # we failed the upstream connection: a message too big, a protocol error, no pong
        if sent.code == 1009:
            return _Ending((1009, "upstream message too big"), None, f"upstream: {sent.reason}")
        if sent.code == 1011:
            return _Ending((1011, sent.reason), None, f"upstream: {sent.reason}")
        return _Ending((1014, "upstream protocol error"), None, f"upstream protocol error: {sent.reason}")
    return _Ending((1011, "upstream went away"), None, "upstream dropped the connection without a close frame")


async def forward_websocket(
    scope: Scope,
    receive: Receive,
    send: Send,
    options: WebSocketForwardOptions,
    target: bytes,
    *,
    plugins: PluginChain | None = None,
    route: str = "",
    route_index: int = -1,
) -> None:
    """Forward one WebSocket session to ``options``'s upstream at ``target`` (path and query) and relay it.

    ``plugins``: the route's plugin chain; its request-head hooks see the handshake (a ``GET``) before the upstream
    is dialed, and an :class:`Answer` from one is the client's answer (``refuse_websocket_answer``). ``route``:
    the route's label in metrics and logs; ``route_index``: its index in ``routes`` (the plugins' ``request.route``).
    The handshake goes upstream with a ``traceparent``, as HTTP requests do; an open session counts in
    ``fastgate_websocket_sessions``, and its end writes one access line.

    >>> options = WebSocketForwardOptions.from_config("chat", UpstreamConfig(url="http://127.0.0.1:9000"))
    >>> await forward_websocket(scope, receive, send, options, b"/chat?room=1")  # returns when the session ends
    """
    started_at = perf_counter()
    status = 0
    request_id = b"-"
    note = ""
    observability = options.observability
    peer = scope.get("client")
    record = ExchangeRecord(
        route, options.target.name, "", "GET", "", client=f"{peer[0]}:{peer[1]}" if peer else "-", websocket=True
    )
    trace = None
    try:
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            if not origin_allowed(scope["headers"], options.allowed_origins):
                raise WebSocketException(1008, "origin not allowed")
            scheme = b"https" if scope.get("scheme") == "wss" else b"http"
            client = scope.get("client")
            head = options.rules.apply(
                scope["headers"], client=client[0].encode("latin-1") if client else b"unknown", scheme=scheme
            )
            request_id = head.request_id
            headers = head.headers
            if head.client is not None:  # from a trusted proxy: the client its X-Forwarded-For names
                client = (head.client, 0)
                record.client = f"{head.client}:0"
            record.target = target.decode("latin-1")
            trace = observability.begin(headers, record, scheme=scope.get("scheme", "ws"))
            if plugins is not None:
                context = RequestContext(
                    "GET",
                    target,
                    HeaderList(headers),
                    path=scope.get("path", ""),
                    client=(client[0], client[1]) if client else None,
                    request_id=request_id.decode("latin-1"),
                    upstream=options.target.name,
                    route=route_index,
                    scope=scope,
                )
                try:
                    answered = await plugins.request(context)
                except PluginError as exc:
                    error_logger.error(
                        "WebSocket %s -> 500: %s (request_id %s)",
                        target.decode("latin-1"),
                        exc.describe(),
                        request_id.decode("latin-1"),
                    )
                    raise
                if answered is not None:
                    status, note = await refuse_websocket_answer(scope, send, answered[1], request_id)
                    note = note or f"answered by {answered[0]}"
                    return
                target, headers = context.target, context.headers.raw
            # Here, not at import: a worker that never proxies a WebSocket never loads websockets' asyncio client.
            from ..upstream.websocket import dial, dial_cluster

            if options.cluster is not None:
                upstream = await dial_cluster(
                    options.cluster,
                    options.target,
                    target,
                    [(k, v) for k, v in headers if k not in HANDSHAKE_HEADERS],
                    scope.get("subprotocols") or (),
                    client[0].encode("latin-1") if client else b"",
                )
            else:
                upstream = await dial(
                    options.target,
                    (options.rules.path_prefix + target).decode("latin-1"),
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k not in HANDSHAKE_HEADERS],
                    scope.get("subprotocols") or (),
                )
        except (FastgateError, WebSocketException) as exc:
            status, note = await refuse_websocket(scope, send, exc, request_id)
            if isinstance(exc, UpstreamError) and not isinstance(exc, UpstreamRefused):
                error_logger.warning(
                    "WebSocket %s -> %d %s: %s (upstream %s, request_id %s)",
                    target.decode("latin-1"),
                    status,
                    exc.code,
                    exc.detail,
                    options.target.name,
                    request_id.decode("latin-1"),
                )
            return
        record.upstream_address = _address(upstream.remote_address)
        observability.websocket_opened(options.target.name)
        try:
            status = 101
            note = await _Session(receive, send, upstream, options).run()
            if note == EXPIRED:
                error_logger.warning(
                    "WebSocket %s: closed with 1001, its config was retired by a reload over server.drain_timeout "
                    "ago (request_id %s)",
                    target.decode("latin-1"),
                    request_id.decode("latin-1"),
                )
        finally:
            upstream.transport.abort()  # a no-op after a completed closing handshake
            observability.websocket_closed(options.target.name)
    finally:
        record.target = target.decode("latin-1")
        record.status = status
        record.duration_s = perf_counter() - started_at
        record.request_id = request_id.decode("latin-1")
        record.outcome = note
        observability.finish(record, trace)


def _address(remote: object) -> str:
    """``host:port`` of the upstream's socket (``[::1]:9000`` for IPv6), ``""`` when unknown."""
    if isinstance(remote, tuple) and len(remote) >= 2:
        host = str(remote[0])
        return f"[{host}]:{remote[1]}" if ":" in host else f"{host}:{remote[1]}"
    return ""


async def refuse_websocket(
    scope: Scope, send: Send, exc: FastgateError | WebSocketException, request_id: bytes
) -> tuple[int, str]:
    """Answer a handshake that will not be proxied; returns the status (101 when closed after accept) and why.

    >>> await refuse_websocket(scope, send, RouteNotFound("no route for /x"), new_request_id())
    (404, 'route_not_found: no route for /x')

    A fastgate error becomes an HTTP answer through the denial-response extension: the upstream's own refusal
    unchanged, or the usual JSON error. A policy refusal (``WebSocketException``), or any error when the server
    lacks the extension, accepts and closes at once, so the client sees the close code rather than a bare 403.
    """
    try:
        if isinstance(exc, FastgateError) and DENIAL_EXTENSION in scope.get("extensions", {}):
            if isinstance(exc, UpstreamRefused):
                headers = response_headers(exc.headers)
                await send({"type": "websocket.http.response.start", "status": exc.status_code, "headers": headers})
                await send({"type": "websocket.http.response.body", "body": exc.body})
            else:
                await error_response(_denial(send), exc, request_id)
            return exc.status_code, f"{exc.code}: {exc.detail}"
        code, reason = close_for(exc)
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": _clip(reason)})
        return 101, f"closed with {code}: {reason}"
    except OSError:  # the client went away meanwhile (ASGI 2.4 servers raise on send after a disconnect)
        return 499, "client disconnected"


async def refuse_websocket_answer(scope: Scope, send: Send, answer: Answer, request_id: bytes) -> tuple[int, str]:
    """Send a plugin's :class:`Answer` to a handshake: through the denial-response extension when the server has it,
    else as an accept and an immediate close (1008 for a 4xx, 1011 otherwise). Returns the status and why."""
    try:
        if DENIAL_EXTENSION in scope.get("extensions", {}):
            headers = answer.raw_headers(request_id)
            await send({"type": "websocket.http.response.start", "status": answer.status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": answer.body})
            return answer.status, ""
        code = 1008 if 400 <= answer.status < 500 else 1011
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": f"refused with {answer.status}"})
        return 101, ""
    except OSError:
        return 499, "client disconnected"


def _denial(send: Send) -> Send:
    async def send_denial(message: Message) -> None:
        message["type"] = "websocket." + message["type"]  # http.response.* -> websocket.http.response.*
        await send(message)

    return send_denial


def _accept_headers(raw: Iterable[tuple[str, str]]) -> Headers:
    headers = response_headers([(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in raw])
    return [pair for pair in headers if pair[0] not in HANDSHAKE_HEADERS and pair[0] != b"content-length"]


class _Session:
    """An accepted client and an open upstream, relayed until one side ends (see the module docstring)."""

    __slots__ = ("ending", "group", "last_activity", "options", "receive", "send", "upstream")

    def __init__(self, receive: Receive, send: Send, upstream: ClientConnection, options: WebSocketForwardOptions):
        self.receive = receive
        self.send = send
        self.upstream = upstream
        self.options = options
        self.ending: _Ending | None = None
        self.group = anyio.CancelScope()
        self.last_activity = 0.0

    def expire(self) -> None:
        """Its config was retired by a reload ``server.drain_timeout`` ago: both sides get 1001 (going away)."""
        self._end(_Ending((1001, "gateway reloaded"), (1001, "gateway reloaded"), EXPIRED))

    def _end(self, ending: _Ending) -> None:
        if self.ending is None:
            self.ending = ending
        self.group.cancel()

    async def run(self) -> str:
        upstream = self.upstream
        assert upstream.response is not None
        accept: Message = {
            "type": "websocket.accept",
            "headers": _accept_headers(upstream.response.headers.raw_items()),
        }
        if upstream.subprotocol:
            accept["subprotocol"] = upstream.subprotocol
        try:
            await self.send(accept)
        except OSError:
            self.ending = _Ending(None, (1001, "client went away"), "client disconnected before the accept")
        else:
            self.last_activity = anyio.current_time()
            sessions = self.options.sessions
            async with anyio.create_task_group() as group:
                self.group = group.cancel_scope
                sessions.add(self)
                try:
                    group.start_soon(self._client_to_upstream)
                    if self.options.idle_timeout is not None:
                        group.start_soon(self._watch_idle, self.options.idle_timeout)
                    await self._upstream_to_client()
                finally:
                    sessions.discard(self)
        ending = self.ending or _Ending((1011, "internal_error"), (1001, "gateway error"), "relay ended")
        # Shielded, so that a shutdown or a cancelled session still closes both sides, and bounded, since either
        # send can wait forever on a peer that stopped reading (its TCP window full): the client's, under Uvicorn's
        # flow control, and the upstream's, in websockets' drain(). Both sides close at once, within
        # close_timeout; then the upstream is aborted (``forward_websocket``) and the client's connection is left
        # to Uvicorn, which closes it when the app returns.
        with anyio.move_on_after(self.options.target.close_timeout, shield=True):
            async with anyio.create_task_group() as group:
                if ending.client is not None:
                    group.start_soon(self._close_client, *ending.client)
                if ending.upstream is not None:
                    code, reason = ending.upstream
                    group.start_soon(upstream.close, code, _clip(reason))
        return ending.note

    async def _close_client(self, code: int, reason: str) -> None:
        with contextlib.suppress(OSError):
            await self.send({"type": "websocket.close", "code": code, "reason": _clip(reason)})

    async def _client_to_upstream(self) -> None:
        # Here, not at import: websockets is loaded by a worker's first WebSocket (upstream/websocket.py's dial).
        from websockets.exceptions import ConnectionClosed

        receive = self.receive
        upstream = self.upstream
        limit = self.options.max_message_size
        idle = self.options.idle_timeout is not None
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    data: bytes = text.encode() if text is not None else (message.get("bytes") or b"")
                    if len(data) > limit:
                        raise WebSocketException(1009, f"message of {len(data)} bytes is above the {limit} limit")
                    if idle:
                        self.last_activity = anyio.current_time()
                    await upstream.send(data, text=text is not None)
                elif kind == "websocket.disconnect":
                    code: int = message.get("code", 1005)
                    if code == 1005 and "reason" not in message:
                        code = 1006  # how Uvicorn reports a dropped connection, as opposed to an empty close frame
                    reason = message.get("reason") or ("client went away" if code == 1006 else "")
                    self._end(_Ending(None, (upstream_close_code(code), reason), f"client closed with {code}"))
                    return
        except WebSocketException as exc:
            self._end(_Ending((exc.code, exc.reason), (1001, "client broke policy"), f"{exc.code}: {exc.reason}"))
        except ConnectionClosed as exc:  # the upstream ended while we sent to it
            self._end(_upstream_ended(exc))
        except Exception as exc:
            error_logger.exception("WebSocket relay to upstream %s failed", self.options.target.name)
            code, reason = close_for(exc)
            self._end(_Ending((code, reason), (1001, "gateway error"), f"relay error: {exc!r}"))

    async def _upstream_to_client(self) -> None:
        from websockets.exceptions import ConnectionClosed

        upstream = self.upstream
        send = self.send
        idle = self.options.idle_timeout is not None
        try:
            while True:
                data = await upstream.recv()
                if idle:
                    self.last_activity = anyio.current_time()
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                else:
                    await send({"type": "websocket.send", "bytes": data})
        except ConnectionClosed as exc:
            self._end(_upstream_ended(exc))
        except OSError:  # the client's connection is gone (ASGI 2.4 servers raise on send after a disconnect)
            self._end(_Ending(None, (1001, "client went away"), "client disconnected"))
        except Exception as exc:
            error_logger.exception("WebSocket relay from upstream %s failed", self.options.target.name)
            code, reason = close_for(exc)
            self._end(_Ending((code, reason), (1001, "gateway error"), f"relay error: {exc!r}"))

    async def _watch_idle(self, idle: float) -> None:
        # The deadline moves with every message: one sleep per idle period instead of a timer per message.
        while (remaining := self.last_activity + idle - anyio.current_time()) > 0:  # noqa: ASYNC110
            await anyio.sleep(remaining)
        self._end(_Ending((1001, "idle timeout"), (1001, "idle timeout"), f"idle for {idle}s"))
