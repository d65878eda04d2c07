"""The gateway as an ASGI application.

>>> gateway = Gateway(GatewayConfig.single("http://127.0.0.1:9000"))
>>> uvicorn.run(gateway)  # or mount it, entering ``gateway.lifespan()`` in the host app's lifespan

The upstream transports (and their pools) are created when the lifespan starts, inside the worker process that
serves, and closed when it ends: never at import, never per request. Each route's plugins are built once, here in
``__init__`` (a plugin that rejects its options is a :class:`ConfigError`); their ``startup`` hooks run when the
lifespan starts, after the transports open, and their ``shutdown`` hooks when it ends, in reverse order.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

from ._types import Receive, Scope, Send
from .config import GatewayConfig, RouteConfig
from .exceptions import FastgateError, RouteNotFound, UpstreamUnavailable
from .observability.logging import error_logger
from .plugins.chain import PluginChain
from .plugins.registry import route_plugins
from .proxy.errors import error_response
from .proxy.headers import new_request_id
from .proxy.http import ForwardOptions, RouteOptions, forward_http, request_target
from .proxy.paths import PathAboveRoot, normalize_path
from .proxy.websocket import WebSocketForwardOptions, forward_websocket, refuse_websocket
from .routing import Route, RouteTable
from .serving.limits import ServerLimits
from .upstream.cluster import Cluster
from .upstream.transport import Transport, create_transport


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.routes = RouteTable(config.routes)
        self._merge_slashes = config.server.merge_slashes
        self.server_limits = ServerLimits.from_config(config.server)  # read by fastgate's server protocol
        self.transports: dict[str, Transport] = {}
        self._route_options = [self._route_options_for(index, route) for index, route in enumerate(config.routes)]
        self._options: dict[str, ForwardOptions] = {}
        self._websocket_options = {
            name: WebSocketForwardOptions.from_config(name, upstream, config.server)
            for name, upstream in config.upstreams.items()
        }

    def _route_options_for(self, index: int, route: RouteConfig) -> RouteOptions:
        upstream = self.config.upstreams[route.upstream]
        return RouteOptions(
            index=index,
            plugins=route_plugins(route, index, self.config.redis),
            timeouts=route.effective_timeouts(upstream) if route.timeouts.model_fields_set else None,
            retry=route.retry_policy(upstream) if route.retries is not None else None,
            buffer_body=self.config.server.request_buffer_memory_bytes if route.request_buffering else None,
        )

    @property
    def plugin_chains(self) -> list[PluginChain]:
        """The plugin chains of the routes that have plugins, in route order."""
        return [options.plugins for options in self._route_options if options.plugins is not None]

    def __repr__(self) -> str:
        state = "running" if self._options else "stopped"
        return f"<Gateway {state} upstreams={sorted(self.config.upstreams)}>"

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[dict[str, Transport]]:
        """Open one transport per upstream for as long as the context is entered; yields them by name."""
        async with contextlib.AsyncExitStack() as stack:
            server = self.config.server
            for name, upstream in self.config.upstreams.items():
                transport = await stack.enter_async_context(create_transport(name, upstream))
                self.transports[name] = transport
                self._options[name] = ForwardOptions.from_config(name, transport, upstream, server)
                if isinstance(transport, Cluster) and len(upstream.targets) > 1:  # WebSockets pick targets there too
                    self._websocket_options[name] = replace(self._websocket_options[name], cluster=transport)
            try:
                for chain in self.plugin_chains:
                    await chain.startup()
                    stack.push_async_callback(chain.shutdown)
                yield dict(self.transports)
            finally:
                self._options.clear()
                self.transports.clear()
                for name, options in self._websocket_options.items():
                    self._websocket_options[name] = replace(options, cluster=None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle_http(scope, receive, send)
        elif kind == "websocket":
            await self.handle_websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    def _route(self, scope: Scope, method: bytes, target: bytes) -> tuple[Route, bytes]:
        """The route for a request and the target to send upstream; raises a :class:`ClientError` (400, 404)."""
        raw_path, _, query = target.partition(b"?")
        path = normalize_path(raw_path, merge_slashes=self._merge_slashes)  # PathAboveRoot: 400
        routes = self.routes
        host = b""
        if routes.uses_host:
            for name, value in scope["headers"]:
                if name == b"host":
                    host = value
                    break
        route = routes.match(method, host, path, scope["headers"], query)
        if route is None:
            raise RouteNotFound(f"no route for {target[:200].decode('latin-1')}")
        return route, route.upstream_target(target, path)

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = request_target(scope)
        try:
            route, target = self._route(scope, scope["method"].encode("ascii"), target)
        except (RouteNotFound, PathAboveRoot) as exc:
            await error_response(send, exc, new_request_id())
            return
        options = self._options.get(route.upstream)
        if options is None:
            error_logger.error("request before the gateway's lifespan started (mounted without entering it?)")
            await error_response(send, UpstreamUnavailable("gateway is not running", route.upstream), new_request_id())
            return
        try:
            await forward_http(scope, receive, send, options, target, route=self._route_options[route.index])
        except Exception:
            # A bug of ours: the traceback goes to the log, the client gets a short JSON 500 (or, when the response
            # had already started, an aborted connection).
            request_id = new_request_id()
            error_logger.exception(
                "internal error on %s %s (request_id %s)", scope["method"], scope["path"], request_id
            )
            with contextlib.suppress(Exception):
                await error_response(send, FastgateError("internal error"), request_id)

    async def handle_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal: FastgateError
        try:
            route, target = self._route(scope, b"GET", request_target(scope))
        except (RouteNotFound, PathAboveRoot) as exc:
            refusal = exc
        else:
            if route.upstream in self._options:
                options = self._websocket_options[route.upstream]
                plugins = self._route_options[route.index].plugins
                await forward_websocket(scope, receive, send, options, target, plugins=plugins)
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
