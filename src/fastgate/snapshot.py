"""One config's request-time view of the gateway, swapped whole on reload.

A :class:`Snapshot` holds everything a request reads (route table, route options, forward options, WebSocket
options, plugin chains) for one config. The gateway keeps one current snapshot; each request takes it once at its
start and counts itself in it (``inflight``), so a reload never changes a request midway. A retired snapshot is
``drained`` once its last request (or WebSocket session) ends: then its plugin chains shut down and it lets go of
its transports. A retired snapshot waits ``server.drain_timeout`` (its own config's) for that; then it ends what
is left (:meth:`Snapshot.expire`: WebSockets close with 1001, streaming responses are cut off), so a long stream
cannot hold a retired config's transports, health probes and plugin clients for as long as it lasts.

Transports are shared between snapshots: a :class:`HeldTransport` counts the snapshots holding it and closes when
the last one lets go, so an upstream whose config did not change keeps its pools across any number of reloads.
"""

from __future__ import annotations

from dataclasses import replace

import anyio
from anyio.abc import TaskStatus

from .config import GatewayConfig, RouteConfig, UpstreamConfig
from .observability.exchange import Observability
from .observability.record import route_label
from .plugins.auth._common import asserted_headers
from .plugins.chain import PluginChain
from .plugins.registry import route_plugins
from .proxy.http import ForwardOptions, RouteOptions
from .proxy.websocket import WebSocketForwardOptions
from .routing import RouteTable
from .upstream.cluster import Cluster
from .upstream.transport import Transport, create_transport


class HeldTransport:
    """An upstream's transport, open while at least one snapshot holds it.

    Opened and closed by :meth:`run`, one task in the gateway's lifespan task group, so the transport's own task
    groups (health probes) enter and exit in the same task.
    """

    def __init__(self, name: str, config: UpstreamConfig, observability: Observability | None = None) -> None:
        self.name = name
        self.config = config
        self.transport: Transport = create_transport(name, config)
        self._observability = observability
        self.holders = 0
        self._closing = anyio.Event()
        self.closed = anyio.Event()

    def __repr__(self) -> str:
        state = "closed" if self.closed.is_set() else f"holders={self.holders}"
        return f"<HeldTransport {self.name} {state}>"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with self.transport:
                watched = {self.name: self.transport}
                if self._observability is not None:
                    self._observability.watch(watched)  # per-try metrics and spans, pool gauges at scrape time
                try:
                    task_status.started()
                    await self._closing.wait()
                finally:
                    if self._observability is not None:
                        self._observability.unwatch(watched)
        finally:
            self.closed.set()

    def hold(self) -> None:
        self.holders += 1

    def release(self) -> None:
        self.holders -= 1
        if self.holders <= 0:
            self._closing.set()


class Snapshot:
    """The request-time state built from one config (see the module docstring)."""

    __slots__ = (
        "config",
        "routes",
        "merge_slashes",
        "route_options",
        "options",
        "websocket_options",
        "held",
        "inflight",
        "retired",
        "drained",
        "observability",
        "_retiring",
        "stripped_headers",
    )

    def __init__(self, config: GatewayConfig, observability: Observability | None = None) -> None:
        """Routes and plugins for ``config``; a plugin that rejects its options raises ConfigError here.

        ``observability``: what the exchanges report to (the gateway's, kept across reloads).
        """
        self.config = config
        self.observability = observability if observability is not None else Observability()
        self.routes = RouteTable(config.routes)
        self.merge_slashes = config.server.merge_slashes
        self.route_options = [_route_options(config, index, route) for index, route in enumerate(config.routes)]
        # every identity header a plugin of this config asserts: removed from every request on every route
        self.stripped_headers = asserted_headers(plugin for chain in self.plugin_chains for _, plugin in chain.plugins)
        self.options: dict[str, ForwardOptions] = {}  # filled by bind(), once the transports are open
        self.websocket_options = {
            name: WebSocketForwardOptions.from_config(
                name, upstream, config.server, observability=self.observability, strip=self.stripped_headers
            )
            for name, upstream in config.upstreams.items()
        }
        self.held: dict[str, HeldTransport] = {}
        self.inflight = 0
        self.retired = False
        self.drained: anyio.Event | None = None
        self._retiring: anyio.Event | None = None

    def __repr__(self) -> str:
        state = "retired" if self.retired else "current"
        return f"<Snapshot {state} inflight={self.inflight} upstreams={sorted(self.config.upstreams)}>"

    @property
    def plugin_chains(self) -> list[PluginChain]:
        """The plugin chains of the routes that have plugins, in route order."""
        return [options.plugins for options in self.route_options if options.plugins is not None]

    @property
    def transports(self) -> dict[str, Transport]:
        return {name: held.transport for name, held in self.held.items()}

    def bind(self, name: str, held: HeldTransport) -> None:
        """Forward ``name``'s requests through ``held`` (which this snapshot now holds)."""
        held.hold()
        self.held[name] = held
        upstream = self.config.upstreams[name]
        transport = held.transport
        self.options[name] = ForwardOptions.from_config(
            name, transport, upstream, self.config.server, observability=self.observability, strip=self.stripped_headers
        )
        if isinstance(transport, Cluster) and len(upstream.targets) > 1:  # WebSockets pick targets there too
            self.websocket_options[name] = replace(self.websocket_options[name], cluster=transport)

    def leave(self) -> None:
        """A request that took this snapshot ended."""
        self.inflight -= 1
        if self.retired and not self.inflight and self.drained is not None:
            self.drained.set()

    def retire(self) -> None:
        """No new request takes this snapshot; ``drained`` fires when the last one in flight ends."""
        self.retired = True
        if self._retiring is not None:
            self._retiring.set()
        if not self.inflight and self.drained is not None:
            self.drained.set()

    def expire(self) -> int:
        """End every request and WebSocket still on this snapshot (``drain_timeout`` passed); returns how many.

        Each logs its own line (``forward_http``, ``forward_websocket``) and leaves the snapshot as it ends.
        """
        ended = 0
        for options in self.options.values():
            for exchange in list(options.exchanges):
                exchange.expire()
                ended += 1
        for websocket in self.websocket_options.values():
            for session in list(websocket.sessions):
                session.expire()
                ended += 1
        return ended

    def release(self) -> None:
        """Let go of the transports (once): each closes when no other snapshot holds it."""
        for held in self.held.values():
            held.release()
        self.held.clear()
        self.options.clear()
        for name, options in self.websocket_options.items():
            self.websocket_options[name] = replace(options, cluster=None)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the plugin chains, serve until retired and drained, then shut them down and release transports."""
        self.drained = anyio.Event()
        self._retiring = anyio.Event()
        self.retired = False
        stop = anyio.Event()
        try:
            async with anyio.create_task_group() as group:
                try:
                    await group.start(self._run_plugins, stop)
                    task_status.started()
                    await self._retiring.wait()
                    with anyio.move_on_after(self.config.server.drain_timeout):
                        await self.drained.wait()
                    while not self.drained.is_set():
                        # Once a second, for a request that was between two steps (a WebSocket still dialing) at
                        # the last.
                        self.expire()
                        with anyio.move_on_after(1):
                            await self.drained.wait()
                finally:
                    stop.set()
        except BaseExceptionGroup as group_error:
            # The task group wraps a plugin's startup failure; callers expect the error itself, as app.py does.
            if len(group_error.exceptions) == 1:
                raise group_error.exceptions[0] from group_error.exceptions[0].__cause__
            raise
        finally:
            self.release()

    async def _run_plugins(self, stop: anyio.Event, *, task_status: TaskStatus[None]) -> None:
        """The plugin chains' life in one task, shielded from its start. A plugin's startup may enter a task group (an
        outbound client's transport, the JWKS refresher) that its shutdown exits, which anyio allows only in the same
        task and scope nesting: a shield entered later, in a ``finally``, broke it ("Attempted to exit a cancel scope
        that isn't the current task's current cancel scope" at every shutdown with a ``jwks_url``). Shielded, the
        chains shut down in full when the gateway is cancelled; their startup is not cancelled either (fastgate's
        own plugins bound theirs by their timeouts)."""
        started: list[PluginChain] = []
        with anyio.CancelScope(shield=True):
            try:
                for chain in self.plugin_chains:
                    await chain.startup()
                    started.append(chain)
                task_status.started()
                await stop.wait()
            finally:
                for chain in reversed(started):
                    await chain.shutdown()


def _route_options(config: GatewayConfig, index: int, route: RouteConfig) -> RouteOptions:
    """What the route adds to its upstream, from the values resolved at validation (``RouteConfig.resolved``).

    Timeouts and retry policy equal to the upstream's are left ``None`` (the transport's own, precomputed): the
    choice is made by value, so it is the same whichever keys the file wrote and however the config was handed on.
    """
    upstream = config.upstreams[route.upstream]
    timeouts = route.effective_timeouts(upstream)
    retry = route.retry_policy(upstream)
    return RouteOptions(
        index=index,
        label=route_label(index, route.name),
        plugins=route_plugins(route, index, config.redis),
        timeouts=None if timeouts == upstream.timeouts else timeouts,
        retry=None if retry == upstream.retries else retry,
        buffer_body=config.server.request_buffer_memory_bytes if route.request_buffering else None,
        max_body=route.body_limit(config.server),
    )
