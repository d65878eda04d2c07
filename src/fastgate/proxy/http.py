"""One HTTP exchange through the gateway: the exchange core, which knows no ASGI and no wire format.

How this works
--------------
:func:`exchange` runs one request given its client side as a :class:`~fastgate.proxy.downstream.Downstream`: the
request head as the driver holds it, the body through ``read_body``, the response through ``send_head`` /
``send_body`` / ``send_trailers``, the disconnect through ``disconnect_scope``. fastgate's HTTP/1.1 server drives it
directly (``serving/cycle.py``: head and bytes, no scope or message dicts); :func:`forward_http` drives it through
the ASGI adapter (``proxy/asgi.py``) for the library and other servers. One implementation, two drivers.

1. The request head is checked and rewritten (``headers.request_headers``); bad input is answered 400/431 here
   and never reaches the upstream. A route with plugins (``RouteOptions.plugins``) then runs their ``on_request``
   hooks, before any body byte is read: an early answer ends the exchange here. A route without plugins has no
   chain and takes none of the plugin steps (bench/plugins.py measures both).
2. The body's first ``request_prebuffer_bytes`` are read (``buffering.prebuffer``: no upstream connection for a
   body that trickles in); then the transport sends the head and the body (the rest from ``read_body()`` as it
   arrives; over HTTP/2 the body goes on while the response comes down, and is closed with it), then waits for the
   response head. Errors up to here become a JSON 502/503/504
   (``errors.error_response``).
3. The plugins' ``on_response`` hooks may change the status and headers; then the response head goes to the
   client, then body pieces as the upstream produces them. While the client keeps up, ``send`` never waits. Once
   fastgate's server says the client is behind (``write_paused``), ``readahead.relay_ahead`` reads the upstream
   ahead of it into a bounded spool and frees the upstream connection when its body ends; past the spool's bounds,
   and under other ASGI servers, ``send`` waits while the client is slow and nobody reads the upstream socket.
   The upstream's trailers (``response.trailers``, never merged into the head) follow the body as an ASGI
   ``http.response.trailers`` message when the client sent ``TE: trailers`` and the server offers the
   ``http.response.trailers`` extension (fastgate's does, Uvicorn's do not); otherwise they are dropped, and the
   upstream is not told ``TE: trailers`` (``proxy/trailers.py`` says which fields pass).
4. The upstream response is closed in ``finally`` under a shielded scope, whatever happened: back to the pool
   when it was read to its end, dropped otherwise. Last, the plugins' ``on_finish`` hooks get the ``Exchange``
   record, and the exchange's ``ExchangeRecord`` goes to ``Observability.finish`` (span, metrics, live stats,
   access line). Every request goes upstream with a ``traceparent`` (``Observability.begin``, right after the
   header rules): the client's, or a new trace's.

Client disconnects cancel the exchange at once, through an anyio cancel scope (``proxy/disconnect.py``), never a
raw ``Task.cancel``. fastgate's server runs a connection's requests in one task inside one cancel scope and cancels
it from ``connection_lost`` (``ConnectionScope``): the cancellation leaves the exchange, which records it and runs
its plugins' ``on_finish`` hooks shielded on the way out. Through the ASGI adapter the exchange has a cancel scope of
its own, cancelled by the server's callback under fastgate's server (``HookScope``) or by a watcher task reading
``receive()`` for ``http.disconnect`` under any other (``WatcherScope``). Either way the upstream connection is
aborted in the ``finally``, and the upstream sees it close. Sends after a disconnect are tolerated in both ASGI
flavours: spec 2.3 servers ignore them, 2.4 servers raise ``OSError``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import anyio

from .._types import Receive, Scope, Send
from ..config import (
    REQUEST_PREBUFFER_BYTES,
    RESPONSE_BUFFER_FILE_BYTES,
    RESPONSE_BUFFER_MEMORY_BYTES,
    RetryPolicy,
    ServerConfig,
    Timeouts,
    UpstreamConfig,
)
from ..exceptions import ClientDisconnected, FastgateError, UpstreamError, UpstreamOverflow
from ..observability.exchange import Observability
from ..observability.logging import error_logger
from ..observability.record import ExchangeRecord
from ..observability.tracing import ExchangeTrace
from ..plugins.base import Answer, Exchange, HeaderList, RequestContext, ResponseHead, request_context
from ..plugins.chain import PluginChain, PluginError
from ..upstream.transport import CHUNKED, Transport, UpstreamRequest, UpstreamResponse
from .asgi import AsgiDownstream
from .bodylimit import declared_too_large, request_body
from .buffering import BufferedBody, prebuffer
from .downstream import DisconnectScope, Downstream
from .errors import answer_error, error_parts, grpc_answer
from .grpc import is_grpc
from .grpcstream import GrpcDownstream
from .headers import VIA, VIA_H2, HeaderRules, new_request_id, response_headers
from .readahead import ReadAheadLimits, ResponseSpool, relay_ahead
from .trailers import response_trailers


@dataclass(slots=True)
class ForwardOptions:
    """How requests are forwarded to one upstream: its name, its transport, its header rules, and the
    observability (access line, metrics, tracing) its exchanges report to (propagation and access line only by
    default). ``trailers``: the transport sees the upstream's trailers (the ``httpx`` one drops them, so its
    upstream is never told ``TE: trailers``). ``prebuffer_bytes`` and ``read_ahead`` keep slow clients from holding
    upstream connections (``proxy/buffering.py``, ``proxy/readahead.py``; ``read_ahead`` None: off)."""

    name: str
    transport: Transport
    rules: HeaderRules
    observability: Observability = field(default_factory=Observability)
    exchanges: set[Any] = field(default_factory=set)  # in flight; expire() ends them (drain_timeout)
    trailers: bool = True
    prebuffer_bytes: int = REQUEST_PREBUFFER_BYTES
    read_ahead: ReadAheadLimits | None = ReadAheadLimits(RESPONSE_BUFFER_MEMORY_BYTES, RESPONSE_BUFFER_FILE_BYTES)

    @classmethod
    def from_config(
        cls,
        name: str,
        transport: Transport,
        upstream: UpstreamConfig,
        server: ServerConfig | None = None,
        *,
        observability: Observability | None = None,
        strip: Iterable[bytes] = (),
    ) -> ForwardOptions:
        """The options for ``upstream`` (reached through ``transport``) under ``server``'s header limits and trusted
        proxies; ``strip``: the identity headers removed from every request (``HeaderRules``)."""
        rules = HeaderRules.from_config(upstream, server, strip=strip)
        trailers = upstream.transport != "httpx"
        if observability is None:
            options = cls(name, transport, rules, trailers=trailers)
        else:
            options = cls(name, transport, rules, observability, trailers=trailers)
        if server is not None:
            options.prebuffer_bytes = server.request_prebuffer_bytes
            memory, file = server.response_buffer_memory_bytes, server.response_buffer_file_bytes
            options.read_ahead = ReadAheadLimits(memory, file) if memory or file else None
        return options


@dataclass(frozen=True, slots=True)
class RouteOptions:
    """What one route adds to its upstream's forwarding, built once with the gateway.

    ``plugins`` is None for a route without any (its requests skip every plugin step); ``timeouts`` and ``retry``
    are None unless the route overrides the upstream's (they travel on ``UpstreamRequest``); ``buffer_body`` is
    ``request_buffering``'s memory limit, None when off; ``max_body`` is ``max_body_bytes`` (None: no limit).
    ``label`` is the route's ``route`` label in metrics and logs (its name, or its index).
    """

    index: int = -1
    plugins: PluginChain | None = None
    timeouts: Timeouts | None = None
    retry: RetryPolicy | None = None
    buffer_body: int | None = None
    label: str = ""
    max_body: int | None = None


NO_ROUTE = RouteOptions()


def _releaser(response: UpstreamResponse) -> Callable[[], Awaitable[object]] | None:
    """How read-ahead gives ``response``'s connection back as soon as its body is read: ``aclose`` when it cannot
    suspend; None for a transport whose close waits (it is closed in ``forward_http``'s shielded ``finally``)."""
    return None if response.aclose_waits else response.aclose


def _upstream_at(name: str, exc: FastgateError) -> str:
    """``api at 10.0.0.7:9000`` for the log: the upstream's name, and the target that failed when known."""
    target = getattr(exc, "target", "")
    return f"{name} at {target}" if target else name


def _host(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's Host header (for the SERVER span's ``server.address``), ``b""`` without one."""
    for name, value in headers:
        if name == b"host":
            return bytes(value)
    return b""


def _ended_by(disconnect: DisconnectScope, method: str, target: bytes, request_id: bytes) -> str:
    """The outcome of an exchange its driver ended (the client went, or ``server.drain_timeout`` passed), else ""."""
    if disconnect.expired:
        error_logger.warning(
            "%s %s: ended, its config was retired by a reload over server.drain_timeout ago (request_id %s)",
            method,
            target.decode("latin-1"),
            request_id.decode("latin-1"),
        )
        return "ended by server.drain_timeout"
    return "client disconnected" if disconnect.disconnected else ""


async def _close_body(piped: AsyncIterator[bytes] | None, body: AsyncGenerator[bytes] | None) -> None:
    """Close the request body's generators: after the transport's ``send`` failed, or once its response is closed
    (an HTTP/2 upstream sends the body on while the response comes down, a bidirectional gRPC stream)."""
    if piped is not None and piped is not body:
        aclose = getattr(piped, "aclose", None)
        if aclose is not None:
            await aclose()
    if body is not None:
        await body.aclose()


async def send_answer(
    down: Downstream, answer: Answer, request_id: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a plugin's early :class:`Answer` (content-length and x-request-id added; ``headers``: those as changed
    by the plugins' early hooks). On a gRPC request, a Trailers-Only answer instead (``errors.grpc_answer``)."""
    if headers is None:
        headers = answer.raw_headers(request_id)
    if is_grpc(down.headers):
        await grpc_answer(down, answer, headers, request_id)
        return
    await down.send_head(answer.status, headers, defer=True)
    await down.send_body(answer.body, False)


async def _early_head(
    chain: PluginChain,
    context: RequestContext,
    status: int,
    headers: list[tuple[bytes, bytes]],
    request_id: bytes,
) -> list[tuple[bytes, bytes]]:
    """An early answer's headers after the response hooks of the plugins before the answering one (cors, say).

    The status stays (the answer is the answering plugin's); a hook that fails leaves the headers as they were and
    logs its line.
    """
    head = ResponseHead(status, HeaderList(list(headers)))
    try:
        await chain.early_response(context, head)
    except FastgateError as exc:
        if isinstance(exc, PluginError):
            log_plugin_error(exc, context.method, context.target, request_id)
        return headers
    return head.headers.raw


def _refused_by_plugin(exc: FastgateError, method: str, target: bytes, request_id: bytes) -> tuple[int, str]:
    """A plugin answered with an error, or failed: the status and outcome to log (a failure logs its one line)."""
    if isinstance(exc, PluginError):
        log_plugin_error(exc, method, target, request_id)
        return exc.status_code, f"plugin {exc.plugin} failed"
    return exc.status_code, f"{exc.code}: {exc.detail}"


def _first_of_burst(transport: Transport, exc: UpstreamOverflow) -> bool:
    """Whether a circuit-breaker refusal logs its own line (the first of a burst; the burst's size comes after)."""
    log = getattr(transport, "overflow_log", None)
    return log is None or bool(log.refused(exc.threshold))


def log_plugin_error(exc: PluginError, method: str, target: bytes, request_id: bytes) -> None:
    """The one ``fastgate.error`` line a failing plugin gets (its name, phase, exception and where it was raised)."""
    error_logger.error(
        "%s %s -> 500: %s (request_id %s)",
        method,
        target.decode("latin-1"),
        exc.describe(),
        request_id.decode("latin-1"),
    )


async def forward_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    options: ForwardOptions,
    target: bytes,
    *,
    buffer_body: int | None = None,
    route: RouteOptions = NO_ROUTE,
) -> None:
    """Forward one ASGI HTTP request to ``options``'s upstream at ``target`` and relay its response: :func:`exchange`
    driven through the ASGI adapter (``proxy/asgi.py``)."""
    await exchange(AsgiDownstream(scope, receive, send, target), options, target, buffer_body=buffer_body, route=route)


async def exchange(
    down: Downstream,
    options: ForwardOptions,
    target: bytes,
    *,
    buffer_body: int | None = None,
    route: RouteOptions = NO_ROUTE,
) -> None:
    """Forward one HTTP request (``down``: its client side, from any driver) to ``options``'s upstream at ``target``
    and relay its response.

    ``buffer_body``: read the whole request body first (that many bytes in memory, the rest in a temporary file), so
    no upstream connection is taken while a client is still sending (``proxy/buffering.py``). ``route``: the
    route's plugins, timeouts and retry policy (``RouteOptions``); its ``buffer_body`` applies when given.

    Phases: request head (fastgate's header rules, then the plugins' ``on_request``, before any body byte is read
    and before an upstream connection is taken), the upstream exchange, response head (the plugins'
    ``on_response`` before the head goes out), body relay, finish (the plugins' ``on_finish``, then
    ``Observability.finish``: span, metrics, live stats, access line).
    """
    started_at = perf_counter()
    status = 0
    sent = 0
    request_id = b"-"
    outcome = ""
    failed_at = ""
    answered_by = ""
    chain = route.plugins
    context: RequestContext | None = None
    observability = options.observability
    method = down.method
    client = down.client
    # positional, as everything built per request here
    record = ExchangeRecord(
        route.label,
        options.name,
        "",
        method,
        "",
        down.http_version,
        f"{client[0]}:{client[1]}" if client else "-",
    )
    trace: ExchangeTrace | None = None
    request: UpstreamRequest | None = None
    cancelled = False  # the client went and the driver's cancellation is on its way out: finish shielded
    if route.buffer_body is not None:
        buffer_body = route.buffer_body
    grpc_down: GrpcDownstream | None = None
    if method == "POST" and is_grpc(down.headers):
        # gRPC: the status and the deadline watched (proxy/grpcstream.py); the body streams message by message, so
        # neither request_buffering nor the prebuffer may hold it back (a bidi client may wait for the server first).
        down = grpc_down = GrpcDownstream(down)
        buffer_body = None
    address = client[0].encode("latin-1") if client else b"unknown"
    try:
        try:
            head = options.rules.apply(
                down.headers,
                client=address,
                scheme=down.scheme.encode("ascii"),
                via=VIA if down.http_version[0] == "1" else VIA_H2,
            )
        except FastgateError as exc:
            status = exc.status_code
            outcome = f"{exc.code}: {exc.detail}"
            request_id = new_request_id()
            await answer_error(down, exc, request_id)
            return
        request_id = head.request_id
        if grpc_down is not None:
            grpc_down.request_id = request_id
        if head.client is not None:  # from a trusted proxy: the client its X-Forwarded-For names (port unknown: 0)
            client = (head.client, 0)
            record.client = f"{head.client}:0"
            address = head.client.encode("latin-1")
        relay_trailers = False
        if head.trailers:
            relay_trailers = options.trailers and down.offers_trailers
            if not relay_trailers:
                head.headers.remove((b"te", b"trailers"))  # we would drop them: the upstream must not count on them
        if observability.tracing:
            record.target = target.decode("latin-1")
            trace = observability.begin(head.headers, record, scheme=down.scheme, host=_host(down.headers))
        else:  # the traceparent (client's or new) and the trace id for the log only
            observability.begin(head.headers, record)
        if route.max_body is not None and (too_large := declared_too_large(head.body_length, route.max_body)):
            status, outcome = too_large.status_code, f"{too_large.code}: {too_large.detail}"
            await answer_error(down, too_large, request_id)
            return
        # positional: a few dozen ns cheaper than keywords, on every request
        request = UpstreamRequest(
            method.encode("ascii"),
            target,
            head.headers,
            head.body_length,
            address,
            route.timeouts,
            route.retry,
        )
        if observability.tracing:
            request.trace = trace
        disconnect = down.disconnect_scope(options.exchanges)
        try:
            async with disconnect:
                if disconnect.disconnected:
                    return
                if chain is not None:
                    # positional, and the scope's own values as they are: this runs on every request of a plugin route
                    context = request_context(
                        method,
                        target,
                        head.headers,
                        down.path,
                        client,
                        request_id.decode("latin-1"),
                        options.name,
                        route.index,
                        bool(head.body_length),
                        down.scope,
                    )
                    try:
                        answered = await chain.request(context)
                    except FastgateError as exc:
                        status, outcome = _refused_by_plugin(exc, method, target, request_id)
                        parts = error_parts(exc, request_id)
                        if chain.has_early and context.answered_at > 0:
                            parts = (await _early_head(chain, context, exc.status_code, parts[0], request_id), parts[1])
                        await answer_error(down, exc, request_id, parts)
                        return
                    if answered is not None:
                        answer = answered[1]
                        status = answer.status
                        outcome = f"answered by {answered[0]}"
                        if chain.has_early and context.answered_at > 0:
                            early = answer.raw_headers(request_id)
                            early = await _early_head(chain, context, status, early, request_id)
                            await send_answer(down, answer, request_id, early)
                        else:
                            await send_answer(down, answer, request_id)
                        sent = len(answer.body) if grpc_down is None else 0  # gRPC: a Trailers-Only answer
                        return
                    target = request.target = context.target
                    request.headers = context.headers.raw
                body: AsyncGenerator[bytes] | None = None
                piped: AsyncIterator[bytes] | None = None
                sent_to: UpstreamResponse | None = None
                read_whole = buffer_body is not None
                try:
                    if head.body_length and buffer_body is not None:
                        buffered = await BufferedBody.read(
                            down.read_body, memory_bytes=buffer_body, max_bytes=route.max_body
                        )
                        request.body_length = buffered.length
                        body = buffered.pieces()
                    elif head.body_length:
                        # counted against max_body_bytes only when chunked: the server's framing holds a Content-Length
                        limit = route.max_body if head.body_length == CHUNKED else None
                        # no upstream connection until the body's first bytes are here (gRPC: none, it streams)
                        if options.prebuffer_bytes and grpc_down is None:
                            first = await prebuffer(down.read_body, options.prebuffer_bytes, limit)
                            if first.complete:  # the whole body: upstream in one piece (framed as the client framed it)
                                read_whole = True
                                body = first.then()
                            else:
                                rest = limit - first.length if limit is not None else None
                                body = first.then(request_body(down.read_body, disconnect, rest))
                        else:
                            body = request_body(down.read_body, disconnect, limit)
                    if body is None or read_whole:
                        disconnect.watch()
                    piped = body
                    if body is not None and chain is not None and chain.wants_body:
                        assert context is not None
                        piped = chain.body(context, body)
                    response = await options.transport.send(request, piped)
                    sent_to = response
                    answered_by = response.target
                except ClientDisconnected:
                    outcome = "client disconnected"
                    return
                except PluginError as exc:
                    status = exc.status_code
                    outcome = f"plugin {exc.plugin} failed"
                    log_plugin_error(exc, method, target, request_id)
                    if not disconnect.disconnected:
                        await answer_error(down, exc, request_id)
                    return
                except FastgateError as exc:
                    status = exc.status_code
                    outcome = f"{exc.code}: {exc.detail}"
                    failed_at = getattr(exc, "target", "")
                    if not isinstance(exc, UpstreamOverflow) or _first_of_burst(options.transport, exc):
                        error_logger.warning(
                            "%s %s -> %d %s: %s (upstream %s, request_id %s)",
                            method,
                            target.decode("latin-1"),
                            status,
                            exc.code,
                            exc.detail,
                            _upstream_at(options.name, exc),
                            request_id.decode("latin-1"),
                        )
                    if not disconnect.disconnected:
                        await answer_error(down, exc, request_id)
                    return
                finally:
                    if sent_to is None and body is not None:  # else closed with the response (full duplex)
                        await _close_body(piped, body)
                try:
                    status = response.status
                    headers = response_headers(response.headers)
                    if chain is not None and chain.has_response:
                        assert context is not None
                        response_head = ResponseHead(status, HeaderList(headers))
                        try:
                            await chain.response(context, response_head)
                        except FastgateError as exc:  # nothing was sent yet: the client gets this error instead
                            status, outcome = _refused_by_plugin(exc, method, target, request_id)
                            await answer_error(down, exc, request_id)
                            return
                        status, headers = response_head.status, response_head.headers.raw
                    # A body that is already here goes out with the head: under fastgate's protocol, in one write.
                    data, done = response.read_buffered()
                    await down.send_head(status, headers, trailers=relay_trailers, defer=bool(data or done))
                    if data or done:
                        sent += len(data)
                        await down.send_body(data, not done)
                    if not done:
                        read_ahead = options.read_ahead
                        while chunk := await response.read():
                            if read_ahead is not None and down.write_paused:
                                # The client is behind: read the upstream ahead of it and free the upstream when done.
                                spool = ResponseSpool(read_ahead)
                                try:
                                    await relay_ahead(response, down, chunk, spool, _releaser(response))
                                finally:
                                    sent += spool.received
                                break
                            sent += len(chunk)
                            await down.send_body(chunk, True)
                        await down.send_body(b"", False)
                    if relay_trailers:
                        fields = response.trailers
                        await down.send_trailers(response_trailers(fields, response.headers) if fields else [])
                    disconnect.finish()
                except UpstreamError as exc:
                    outcome = f"{exc.code} after the response started: {exc.detail}"
                    failed_at = exc.target
                    error_logger.warning(
                        "%s %s: upstream %s broke off the response after %d bytes: %s (request_id %s)",
                        method,
                        target.decode("latin-1"),
                        _upstream_at(options.name, exc),
                        sent,
                        exc.detail,
                        request_id.decode("latin-1"),
                    )
                    down.abort()
                except OSError:
                    disconnect.disconnected = True  # ASGI spec 2.4 servers raise on send after a disconnect
                finally:
                    if response.aclose_waits:
                        # No disconnect may cancel us from here (a disconnect after ``finish`` cancels nothing).
                        disconnect.finish()
                        with anyio.CancelScope(shield=True):
                            await response.aclose()
                            if body is not None:
                                await _close_body(piped, body)
                    else:
                        await response.aclose()  # returns without suspending: cancellation cannot interrupt it
                        if body is not None:
                            await _close_body(piped, body)
        except BaseException:
            # A driver that cancels the connection's task (fastgate's server) lets the cancellation out of the block:
            # the exchange ended the same way, and the finish below runs shielded.
            cancelled = disconnect.disconnected or disconnect.expired
            if cancelled:
                outcome = _ended_by(disconnect, method, target, request_id)
            raise
        outcome = _ended_by(disconnect, method, target, request_id) or outcome
    finally:
        if grpc_down is not None:
            status = grpc_down.status or status  # a gRPC error answer goes out as a 200
            record.grpc_status = grpc_down.grpc_status
            record.grpc = True
            if grpc_down.deadline_exceeded:
                outcome = outcome or "grpc-timeout expired"
        record.duration_s = perf_counter() - started_at
        record.target = target.decode("latin-1")
        record.status = status
        record.bytes_sent = sent
        record.request_id = request_id.decode("latin-1")
        record.outcome = outcome
        record.upstream_address = answered_by or failed_at
        if request is not None and request.tries > 1:
            record.retries = request.tries - 1
        if context is not None and chain is not None and chain.has_finish:
            finishing = chain.finish(
                context,
                Exchange(
                    route.index,
                    options.name,
                    method,
                    record.target,
                    record.logged_status,
                    sent,
                    record.duration_s,
                    record.request_id,
                    failed_at,
                    record.retries,
                    outcome,
                ),
            )
            if cancelled:
                with anyio.CancelScope(shield=True):  # the hooks run to their end, as after any other exchange
                    await finishing
            else:
                await finishing
        observability.finish(record, trace)
