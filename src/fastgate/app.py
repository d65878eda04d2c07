"""The gateway as an ASGI application.

>>> gateway = Gateway(GatewayConfig.single("http://127.0.0.1:9000"))
>>> uvicorn.run(gateway)  # or mount it, entering ``gateway.lifespan()`` in the host app's lifespan

The upstream transports (and their pools) are created when the lifespan starts, inside the worker process that
serves, and closed when it ends: never at import, never per request. Each route's plugins are built once, here in
``__init__`` (a plugin that rejects its options is a :class:`ConfigError`); their ``startup`` hooks run when the
lifespan starts, after the transports open, and their ``shutdown`` hooks when it ends, in reverse order.

Reload (``gateway.reload()``; SIGHUP and ``POST /reload`` when served by ``fastgate run``): the new config is
validated, the transports of new or changed upstreams open and the new plugin chains start, then the request-time
:class:`~fastgate.snapshot.Snapshot` is swapped in one assignment. Requests in flight finish on the snapshot they
took; the old one's chains shut down and its transports that no newer snapshot shares close once they end, or once
its ``server.drain_timeout`` has passed: then its WebSockets close with 1001 and its streams are cut off.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import copy_context
from typing import Literal

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._context import in_context
from ._types import Receive, Scope, Send
from .config import GatewayConfig
from .exceptions import ClientError, ConfigError, FastgateError, RouteNotFound, UpstreamUnavailable
from .observability.exchange import Observability
from .observability.logging import access_logger, apply_log_level, error_logger
from .observability.metrics import Metrics
from .plugins.chain import PluginChain
from .process_signals import on_shutdown_signal, reload_on_sighup
from .proxy.asgi import AsgiDownstream, request_target
from .proxy.downstream import Downstream
from .proxy.errors import answer_error
from .proxy.grpcweb import GrpcWebDownstream, grpc_web_type
from .proxy.headers import new_request_id
from .proxy.http import ForwardOptions, exchange
from .proxy.paths import PATH_KEY, plain_target, resolve_target
from .proxy.websocket import forward_websocket, refuse_websocket
from .reloading import ConfigSource, check_reloadable, diff_upstreams
from .routing import Route, RouteTable
from .serving.limits import ServerLimits
from .snapshot import HeldTransport, Snapshot
from .upstream.transport import Transport

# Whether the gateway serves: "starting" until the lifespan opened everything, "draining" once SIGTERM/SIGINT came.
# "asgi": fastgate's server serves the gateway through the ASGI adapter rather than calling Gateway.handle directly.
DRIVER_ENV = "FASTGATE_DRIVER"

Readiness = Literal["starting", "ready", "draining"]


class Gateway:
    """The gateway ASGI app. ``source``: the file it was started from, for :meth:`reload` without an argument."""

    def __init__(
        self, config: GatewayConfig, *, source: ConfigSource | None = None, observability: Observability | None = None
    ) -> None:
        self.server_limits = ServerLimits.from_config(config.server)  # read by fastgate's server protocol
        self.source = source
        # Access line, metrics, tracing and live stats of this gateway (the admin API reads it); built from the
        # config unless given (a library user's own tracer provider, a test's in-memory exporter). The metrics and
        # tracing sections need a restart, so one object serves every reloaded config.
        self.observability = observability if observability is not None else Observability.from_config(config)
        self._snapshot = Snapshot(config, self.observability)
        self._group: TaskGroup | None = None
        self._snapshots: set[Snapshot] = set()  # started and not yet shut down (the current one, draining ones)
        self._reload_lock: anyio.Lock | None = None
        self.readiness: Readiness = "starting"
        # What fastgate's HTTP/1.1 server calls for each request (the exchange core, driven with no ASGI). None makes
        # it serve the gateway as an ASGI app, through the adapter (FASTGATE_DRIVER=asgi: the tests run both).
        self.fastgate_handler: Callable[[Downstream], Awaitable[None]] | None = (
            None if os.environ.get(DRIVER_ENV) == "asgi" else self.handle
        )

    @property
    def metrics(self) -> Metrics | None:
        """The Prometheus metrics (``None`` when ``metrics.enabled`` is false)."""
        return self.observability.metrics

    @property
    def config(self) -> GatewayConfig:
        """The running config (the current snapshot's)."""
        return self._snapshot.config

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def routes(self) -> RouteTable:
        return self._snapshot.routes

    @property
    def transports(self) -> dict[str, Transport]:
        """The current snapshot's open transports by upstream name; empty outside the lifespan."""
        return self._snapshot.transports

    @property
    def _options(self) -> dict[str, ForwardOptions]:
        return self._snapshot.options

    @property
    def plugin_chains(self) -> list[PluginChain]:
        """The plugin chains of the routes that have plugins, in route order."""
        return self._snapshot.plugin_chains

    def __repr__(self) -> str:
        state = "running" if self._snapshot.options else "stopped"
        return f"<Gateway {state} upstreams={sorted(self.config.upstreams)}>"

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[dict[str, Transport]]:
        """Open one transport per upstream for as long as the context is entered; yields them by name.

        Served by ``fastgate run`` (a ``source``), the gateway also reloads on SIGHUP. With ``admin:`` the admin
        listener serves for as long, on this loop.
        """
        self.readiness = "starting"
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                self._reload_lock = anyio.Lock()
                snapshot = self._snapshot
                try:
                    await self._open(snapshot, None)
                    async with contextlib.AsyncExitStack() as stack:
                        await stack.enter_async_context(self.observability.running({}))  # clusters: HeldTransport
                        if self.source is not None:
                            stack.enter_context(reload_on_sighup(group, self._reload_quietly))
                        if self.config.admin is not None:
                            from .admin.listener import serve_admin

                            stack.enter_context(on_shutdown_signal(self._begin_draining))
                            await stack.enter_async_context(serve_admin(self, self.config.admin))
                        self.readiness = "ready"
                        yield dict(self.transports)
                finally:
                    self.readiness = "draining"
                    self._snapshot.retire()
                    for each in list(self._snapshots):  # the server has drained its connections: close everything now
                        each.retire()
                        if each.drained is not None:
                            each.drained.set()
                    self._group = None
        except BaseExceptionGroup as group_error:
            # The task group wraps what the body raised; callers expect the error itself (a plugin's startup).
            if len(group_error.exceptions) == 1:
                raise group_error.exceptions[0] from group_error.exceptions[0].__cause__
            raise

    async def _open(self, snapshot: Snapshot, running: Snapshot | None) -> None:
        """Bind ``snapshot`` to transports (reusing ``running``'s where the upstream is unchanged) and start it."""
        assert self._group is not None
        try:
            for name, upstream in snapshot.config.upstreams.items():
                held = running.held.get(name) if running is not None else None
                if held is None or held.config != upstream:
                    held = HeldTransport(name, upstream, self.observability)
                    await self._group.start(held.run)
                snapshot.bind(name, held)
            self._snapshots.add(snapshot)
            await self._group.start(self._run_snapshot, snapshot)
        except BaseException:
            snapshot.release()
            raise

    async def _run_snapshot(self, snapshot: Snapshot, *, task_status: TaskStatus[None]) -> None:
        try:
            await snapshot.run(task_status=task_status)
        finally:
            self._snapshots.discard(snapshot)

    async def reload(self, config: GatewayConfig | None = None) -> str:
        """Swap in ``config`` (default: the source file read again) for new requests; returns what changed.

        Raises :class:`ConfigError` (logged once, counted as ``result="error"``) and keeps the running config when
        the new one is invalid, changes a key that needs a restart, or its plugins or transports fail to start.
        """
        if self._group is None or self._reload_lock is None:
            raise ConfigError("reload: the gateway is not running (its lifespan has not started)")
        async with self._reload_lock:
            running = self._snapshot
            try:
                if config is None:
                    if self.source is None:
                        raise ConfigError("reload: no config file (the gateway was not started with fastgate run FILE)")
                    config = self.source.load()
                check_reloadable(running.config, config)
                if config.server.tls is not None:
                    # The certificate files are read again (a bad pair refuses the reload, the live one stays).
                    from .serving.tls import reload_certificates

                    reload_certificates(config)
                snapshot = Snapshot(config, self.observability)
                try:
                    await self._open(snapshot, running)
                except ConfigError:
                    raise
                except Exception as exc:
                    raise ConfigError(f"reload: the new config failed to start: {exc}") from exc
            except ConfigError as exc:
                self.reload_refused(exc)
                raise
            changes = diff_upstreams(running.config, config)
            if self.metrics is not None:
                self.metrics.bind_config(config)
            self._snapshot = snapshot  # the swap: requests from now on take the new snapshot
            running.retire()
            self._apply_process_settings(config)
            self._count_reload("success")
            error_logger.info("config reloaded (worker %d): %d routes; %s", os.getpid(), len(config.routes), changes)
            return str(changes)

    def validate(self) -> GatewayConfig:
        """Read the source file and check it as :meth:`reload` would, without swapping anything (ConfigError)."""
        if self.source is None:
            raise ConfigError("reload: no config file (the gateway was not started with fastgate run FILE)")
        config = self.source.load()
        check_reloadable(self.config, config)
        Snapshot(config)  # builds every plugin: options a plugin rejects fail here
        return config

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(ConfigError):  # logged and counted by reload()
            await self.reload()

    def _begin_draining(self) -> None:
        self.readiness = "draining"  # /readyz: 503 while Uvicorn drains the connections

    def reload_refused(self, exc: ConfigError) -> None:
        """One log line naming the key and the problem, and ``fastgate_config_reload_total{result="error"}``."""
        error_logger.error("config reload refused (worker %d), keeping the running config: %s", os.getpid(), exc.detail)
        self._count_reload("error")

    def _count_reload(self, result: Literal["success", "error"]) -> None:
        if self.metrics is not None:
            self.metrics.reload(result)

    def _apply_process_settings(self, config: GatewayConfig) -> None:
        apply_log_level(config.server.log_level)
        access_logger.disabled = not config.server.access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle_http(scope, receive, send)
        elif kind == "websocket":
            await self.handle_websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    @staticmethod
    def _route(
        snapshot: Snapshot, headers: list[tuple[bytes, bytes]], method: bytes, target: bytes
    ) -> tuple[Route, bytes, bytes]:
        """The route for a request, the target to send upstream and the canonical path the route matched (kept for
        ``X-Forwarded-Uri``); raises a :class:`ClientError` (400, 404).

        proxy/paths.py decides: the route the canonical path picks, the target as sent when every reading of the
        path picks that route too, the canonical path (query kept) when the readings differed only by RFC 3986
        normalisation, else 400.
        """
        routes = snapshot.routes
        host = b""
        if routes.uses_host:
            for name, value in headers:
                if name == b"host":
                    host = value
                    break
        if plain_target(target) is None:  # one reading and no query: what resolve_target would do, a call less
            route, path = routes.match(method, host, target, headers, b""), target
        else:
            route, target, path, _ = resolve_target(target, routes, method, host, headers, snapshot.merge_slashes)
        if route is None:
            raise RouteNotFound(f"no route for {target[:200].decode('latin-1')}")
        return route, route.upstream_target(target, path), path

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An ASGI HTTP request: the exchange core driven through the ASGI adapter."""
        await self.handle(AsgiDownstream(scope, receive, send))

    async def handle(self, down: Downstream) -> None:
        """One HTTP request from any driver (fastgate's HTTP/1.1 server calls this directly, with no ASGI)."""
        snapshot = self._snapshot  # taken once: a reload meanwhile does not change this request's config
        try:
            route, target, down.matched_path = self._route(snapshot, down.headers, down.method.encode(), down.target)
        except ClientError as exc:
            await answer_error(down, exc, new_request_id())
            return
        if route.config.grpc_web and (web_type := grpc_web_type(down.headers)) is not None:
            down = GrpcWebDownstream(down, web_type)  # the core sees gRPC; the client gets gRPC-Web back
        options = snapshot.options.get(route.upstream)
        if options is None:
            error_logger.error("request before the gateway's lifespan started (mounted without entering it?)")
            await answer_error(down, UpstreamUnavailable("gateway is not running", route.upstream), new_request_id())
            return
        snapshot.inflight += 1  # its transports and plugins stay up until this request ends
        route_options = snapshot.route_options[route.index]
        try:
            if route_options.plugins is None or isinstance(down, AsgiDownstream):
                await exchange(down, options, target, route=route_options)
            else:
                # fastgate's server runs a connection's requests in one task: what a plugin sets in a context
                # variable stays with its request, as it would in a task of its own (_context.py).
                await in_context(exchange(down, options, target, route=route_options), copy_context())
        except Exception:
            # A bug of ours: the traceback goes to the log, the client gets a short JSON 500 (or, when the response
            # had already started, an aborted connection).
            request_id = new_request_id()
            error_logger.exception("internal error on %s %s (request_id %s)", down.method, down.path, request_id)
            with contextlib.suppress(Exception):
                await answer_error(down, FastgateError("internal error"), request_id)
        finally:
            snapshot.leave()

    async def handle_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        snapshot = self._snapshot  # the session keeps its snapshot (and so its upstream's transport) to the end
        refusal: FastgateError
        try:
            route, target, scope[PATH_KEY] = self._route(snapshot, scope["headers"], b"GET", request_target(scope))
        except ClientError as exc:
            refusal = exc
        else:
            if route.upstream in snapshot.options:
                options = snapshot.websocket_options[route.upstream]
                route_options = snapshot.route_options[route.index]
                snapshot.inflight += 1
                try:
                    await forward_websocket(
                        scope,
                        receive,
                        send,
                        options,
                        target,
                        plugins=route_options.plugins,
                        route=route_options.label,
                        route_index=route.index,
                    )
                finally:
                    snapshot.leave()
                return
            # As for HTTP: no session before the lifespan opened the upstreams.
            error_logger.error("WebSocket before the gateway's lifespan started (mounted without entering it?)")
            refusal = UpstreamUnavailable("gateway is not running", route.upstream)
        if (await receive())["type"] == "websocket.connect":
            await refuse_websocket(scope, send, refusal, new_request_id())

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        started = False
        try:
            async with self.lifespan():
                await send({"type": "lifespan.startup.complete"})
                started = True
                message = await receive()
                assert message["type"] == "lifespan.shutdown"
        except Exception as exc:
            await send(
                {"type": "lifespan.shutdown.failed" if started else "lifespan.startup.failed", "message": str(exc)}
            )
            raise
        await send({"type": "lifespan.shutdown.complete"})
