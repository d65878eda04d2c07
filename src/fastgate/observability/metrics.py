"""Prometheus metrics: the collectors, the per-exchange ``observe``, and the ``/metrics`` ASGI app.

How this works
--------------
One :class:`Metrics` per worker, built at lifespan startup. The request path costs one dict lookup and a few
pre-bound child calls: ``observe(record)`` finds the label children for (route, upstream, method, code) in its
own cache, creating them with ``.labels()`` only the first time a combination is seen. Every label value is
bounded: routes and upstreams come from the config, methods are the standard ones or ``other``, codes are status
codes the gateway answered (or a fastgate error code for an upstream try that got no status).

In a single process every family is plain numbers rendered at scrape time (``local_metrics.py``): the same
exposition for a third of prometheus-client's cost on the request path, and prometheus-client is not imported
until the first scrape (its package brings its HTTP exposition server: ~2.8 MB of an idle worker's RSS).

With ``--workers N`` the workers are separate processes, so prometheus-client's multiprocess mode is used: the
manager sets ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the workers start
(:func:`prepare_multiprocess_dir`); each worker's values live in mmap'ed files there, and a scrape answered by
any worker reads them all (``MultiProcessCollector``). The mode is chosen when prometheus-client is first
imported, from that variable, which is why the manager sets it and the workers (spawned, not forked) inherit
it. Gauges say how to combine workers (``multiprocess_mode``): connections and sessions add up over live
workers; a target is healthy only if every live worker finds it so. A worker that exits drops its live gauges
(:meth:`Metrics.close`); a worker that was killed is pruned at the next scrape. Process metrics (CPU, memory,
file descriptors) are read per worker and combined the same way.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio.to_thread

from .._types import Receive, Scope, Send
from ..policies.breaker import MAX_CONNECTIONS, MAX_PENDING_REQUESTS, MAX_REQUESTS, MAX_RETRIES
from .local_metrics import LocalCollector, LocalCounter, LocalFamily, LocalGauge, LocalHistogram
from .record import STANDARD_METHODS, ExchangeRecord, route_label

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..config import GatewayConfig

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BREAKER_THRESHOLDS = (MAX_CONNECTIONS, MAX_PENDING_REQUESTS, MAX_REQUESTS, MAX_RETRIES)
# A proxy adds little itself but fronts anything from 1 ms caches to 30 s reports.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ReloadResult = Literal["success", "error"]
_Mode = Literal["livesum", "livemax", "livemin"]
_GaugeMode = Literal["livesum", "livemax", "livemin", "max"]
# Process metrics in multiprocess mode: how each combines over workers.
_PROCESS_GAUGES: dict[str, tuple[str, _Mode]] = {
    "process_virtual_memory_bytes": ("Virtual memory size in bytes, summed over live workers.", "livesum"),
    "process_resident_memory_bytes": ("Resident memory size in bytes, summed over live workers.", "livesum"),
    "process_open_fds": ("Open file descriptors, summed over live workers.", "livesum"),
    "process_max_fds": ("Maximum number of open file descriptors of a worker.", "livemax"),
    "process_start_time_seconds": ("Start time of the oldest live worker since the Unix epoch.", "livemin"),
}


def multiprocess_active() -> bool:
    """Whether prometheus-client writes values to ``PROMETHEUS_MULTIPROC_DIR`` in this process.

    prometheus-client chooses when it is first imported, from that variable: not imported yet, the variable says
    what it will choose.
    """
    if "prometheus_client" not in sys.modules:
        return bool(os.environ.get(MULTIPROC_ENV))
    from prometheus_client import values

    active = bool(getattr(values.ValueClass, "_multiprocess", False))
    if not active and os.environ.get(MULTIPROC_ENV):
        raise RuntimeError(
            f"{MULTIPROC_ENV} was set after prometheus_client was imported: set it before the process starts"
        )
    return active


class _Exchange:
    """The children one (route, upstream, method, code) combination updates."""

    __slots__ = ("requests", "duration", "retries")

    def __init__(self, requests: Any, duration: Any, retries: Any) -> None:
        self.requests = requests
        self.duration = duration
        self.retries = retries


class _LocalFamilies:
    """Makes the single-process families (local_metrics.py) and lists them in the order they render."""

    def __init__(self) -> None:
        self.made: list[LocalFamily] = []

    def counter(self, name: str, documentation: str, labels: list[str]) -> LocalCounter:
        family = LocalCounter(name, documentation, labels)
        self.made.append(family)
        return family

    def histogram(self, name: str, documentation: str, labels: list[str]) -> LocalHistogram:
        family = LocalHistogram(name, documentation, labels, DURATION_BUCKETS)
        self.made.append(family)
        return family

    def gauge(self, name: str, documentation: str, labels: list[str], mode: _GaugeMode) -> LocalGauge:
        family = LocalGauge(name, documentation, labels)
        self.made.append(family)
        return family


class _MultiprocessFamilies:
    """Makes prometheus-client's own metrics, registered nowhere: their values go to the multiprocess files."""

    def counter(self, name: str, documentation: str, labels: list[str]) -> Any:
        from prometheus_client import Counter

        return Counter(name, documentation, labels, registry=None)

    def histogram(self, name: str, documentation: str, labels: list[str]) -> Any:
        from prometheus_client import Histogram

        return Histogram(name, documentation, labels, buckets=DURATION_BUCKETS, registry=None)

    def gauge(self, name: str, documentation: str, labels: list[str], mode: _GaugeMode) -> Any:
        from prometheus_client import Gauge

        return Gauge(name, documentation, labels, registry=None, multiprocess_mode=mode)


_Families = _LocalFamilies | _MultiprocessFamilies


class Metrics:
    """Every fastgate collector, with cached label children; one per worker process.

    >>> metrics = Metrics.from_config(config)
    >>> metrics.observe(record)  # in forward_http's finally, beside the access line

    ``registry``: where to register in single-process mode (by default a new one, made at the first scrape, never
    the global registry, so several gateways in one process do not collide). ``process_metrics``: add
    CPU/memory/fd metrics.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None, process_metrics: bool = True) -> None:
        self.multiprocess = multiprocess_active()
        # In a single process every family is local (local_metrics.py): plain numbers rendered at scrape time, no
        # lock, no Python bucket walk, and prometheus-client not imported until then. With workers, values must
        # reach the multiprocess files on every update: prometheus-client's classes, registered nowhere (the
        # registry holds only the collector that reads every worker's files; registering the metrics too would
        # expose this worker's values twice).
        families: _Families = _MultiprocessFamilies() if self.multiprocess else _LocalFamilies()
        self._families = families
        self._registry: CollectorRegistry | None = None
        self._process_metrics = process_metrics
        self.requests: Any = families.counter(
            "fastgate_requests",
            "Requests answered, by route, upstream, method and status code.",
            ["route", "upstream", "method", "code"],
        )
        self.duration: Any = families.histogram(
            "fastgate_request_duration_seconds",
            "Time from a request's start to its response's last byte, by route and upstream.",
            ["route", "upstream"],
        )
        self.upstream_requests: Any = families.counter(
            "fastgate_upstream_requests",
            "Upstream tries, by upstream, target and status code (or fastgate error code when none came).",
            ["upstream", "target", "code"],
        )
        self.retries: Any = families.counter(
            "fastgate_retries", "Upstream tries beyond the first, by upstream.", ["upstream"]
        )
        self.connect_errors: Any = families.counter(
            "fastgate_upstream_connect_errors",
            "Failed connection attempts to an upstream target.",
            ["upstream", "target"],
        )
        self.connections: Any = families.gauge(
            "fastgate_upstream_connections",
            "Upstream connections by state (active: in an exchange; idle: kept alive in the pool).",
            ["upstream", "target", "state"],
            "livesum",
        )
        self.health: Any = families.gauge(
            "fastgate_health_status",
            "1 when an upstream target is healthy (for every worker), 0 when not.",
            ["upstream", "target"],
            "livemin",
        )
        self.ejections: Any = families.counter(
            "fastgate_ejections",
            "Targets taken out of rotation by health checks or outlier detection.",
            ["upstream", "target"],
        )
        self.websocket_sessions: Any = families.gauge(
            "fastgate_websocket_sessions", "Open WebSocket sessions, by upstream.", ["upstream"], "livesum"
        )
        breaker_gauges = (
            ("requests", "Requests in flight through an upstream's circuit breaker (max_requests)."),
            ("pending_requests", "Requests waiting for an upstream connection (max_pending_requests)."),
            ("connections", "Connections open to an upstream's targets together (max_connections)."),
            ("retries", "Retries in flight to an upstream (the circuit breaker's max_retries)."),
        )
        self.breaker: dict[str, Any] = {
            # each worker has its own breaker: the sum is the gateway's
            what: families.gauge(f"fastgate_circuit_breaker_{what}", help_text, ["upstream"], "livesum")
            for what, help_text in breaker_gauges
        }
        self.overflows: Any = families.counter(
            "fastgate_upstream_overflow",
            "Requests and retries refused by an upstream's circuit breaker, by threshold.",
            ["upstream", "threshold"],
        )
        self.grpc_responses: Any = families.counter(
            "fastgate_grpc_responses",
            'gRPC requests answered, by route, upstream and grpc-status ("none": the exchange ended without one).',
            ["route", "upstream", "grpc_status"],
        )
        self.config_reloads: Any = families.counter(
            "fastgate_config_reload", "Configuration reloads, by result.", ["result"]
        )
        self.config_last_reload: Any = families.gauge(
            "fastgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
            [],
            "max",
        )
        self._reload_children = {result: self.config_reloads.labels(result) for result in ("success", "error")}
        self.config_last_reload.set(time.time())
        self._exchanges: dict[tuple[str, str, str, int], _Exchange] = {}
        self._tries: dict[tuple[str, str, int | str], Any] = {}
        self._refreshers: dict[object, Callable[[], None]] = {}
        self._process: _ProcessMetrics | None = None
        if self.multiprocess:
            from prometheus_client import CollectorRegistry
            from prometheus_client.multiprocess import MultiProcessCollector

            self._registry = CollectorRegistry()
            MultiProcessCollector(self._registry)  # type: ignore[no-untyped-call]
            if process_metrics:
                self._process = _ProcessMetrics()
        elif registry is not None:
            self._register(registry)

    @property
    def registry(self) -> CollectorRegistry:
        """What a scrape renders: in a single process a registry of this gateway's own, made on first use (never
        the global registry, so several gateways in one process do not collide), unless one was given."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._register(CollectorRegistry())
        assert self._registry is not None
        return self._registry

    def _register(self, registry: CollectorRegistry) -> None:
        assert isinstance(self._families, _LocalFamilies)
        LocalCollector(self._families.made, registry)
        if self._process_metrics:
            from prometheus_client.process_collector import ProcessCollector

            ProcessCollector(registry=registry)
        self._registry = registry

    def __repr__(self) -> str:
        mode = "multiprocess" if self.multiprocess else "single process"
        return f"<Metrics {mode} exchanges={len(self._exchanges)} tries={len(self._tries)}>"

    @classmethod
    def from_config(cls, config: GatewayConfig, **kwargs: Any) -> Metrics:
        """Metrics with every route's and target's children created up front (they show as 0 at once)."""
        metrics = cls(**kwargs)
        metrics.bind_config(config)
        return metrics

    def bind_config(self, config: GatewayConfig) -> None:
        """Create the children of ``config``'s routes and targets (at start, and for a reloaded config)."""
        self.bind_routes((route_label(index, route.name), route.upstream) for index, route in enumerate(config.routes))
        for name, upstream in config.upstreams.items():
            self.bind_targets(name, [target.target for target in upstream.targets])
            if upstream.circuit_breaker is not None:
                self.bind_breaker(name)

    def bind_breaker(self, upstream: str) -> None:
        """Create the circuit-breaker children of ``upstream`` (gauges, and the overflow counter per threshold)."""
        for gauge in self.breaker.values():
            gauge.labels(upstream)
        for threshold in BREAKER_THRESHOLDS:
            self.overflows.labels(upstream, threshold)

    def set_breaker(self, upstream: str, requests: int, pending: int, connections: int, retries: int) -> None:
        """This worker's circuit-breaker counts for ``upstream`` (from ``GuardedCluster.breaker_stats()``)."""
        breaker = self.breaker
        breaker["requests"].labels(upstream).set(requests)
        breaker["pending_requests"].labels(upstream).set(pending)
        breaker["connections"].labels(upstream).set(connections)
        breaker["retries"].labels(upstream).set(retries)

    def overflowed(self, upstream: str, threshold: str, count: int) -> None:
        """Count ``count`` circuit-breaker refusals of ``upstream`` over ``threshold``."""
        self.overflows.labels(upstream, threshold).inc(count)

    def bind_routes(self, routes: Iterable[tuple[str, str]]) -> None:
        """Create the duration children of (route, upstream) pairs."""
        for route, upstream in routes:
            self.duration.labels(route, upstream)
            self.retries.labels(upstream)
            self.websocket_sessions.labels(upstream)

    def bind_targets(self, upstream: str, targets: Iterable[str]) -> None:
        """Create the per-target children of ``upstream`` (connections, health, connect errors, ejections)."""
        for target in targets:
            self.connections.labels(upstream, target, "active")
            self.connections.labels(upstream, target, "idle")
            self.connect_errors.labels(upstream, target)
            self.ejections.labels(upstream, target)

    def _exchange(self, key: tuple[str, str, str, int]) -> _Exchange:
        route, upstream, method, code = key
        exchange = _Exchange(
            self.requests.labels(route, upstream, method, str(code)),
            self.duration.labels(route, upstream),
            self.retries.labels(upstream),
        )
        self._exchanges[key] = exchange
        return exchange

    def observe(self, record: ExchangeRecord) -> None:
        """Count one finished exchange (WebSocket sessions count as requests, not in the duration histogram)."""
        method = record.method
        key = (record.route, record.upstream, method if method in STANDARD_METHODS else "other", record.logged_status)
        exchange = self._exchanges.get(key) or self._exchange(key)
        exchange.requests.inc()
        if not record.websocket:
            exchange.duration.observe(record.duration_s)
        if record.retries:
            exchange.retries.inc(record.retries)
        if record.grpc:
            code = record.grpc_status
            self.grpc_responses.labels(record.route, record.upstream, "none" if code is None else str(code)).inc()

    def upstream_try(self, upstream: str, target: str, code: int | str) -> None:
        """Count one upstream try: its status code, or the fastgate error code (``upstream_timeout``) it ended in."""
        key = (upstream, target, code)
        child = self._tries.get(key)
        if child is None:
            child = self._tries[key] = self.upstream_requests.labels(upstream, target, str(code))
        child.inc()

    def connect_error(self, upstream: str, target: str) -> None:
        self.connect_errors.labels(upstream, target).inc()

    def set_upstream_connections(self, upstream: str, target: str, active: int, idle: int) -> None:
        """This worker's connections to ``target`` (from the pool's ``stats()``: busy and idle)."""
        self.connections.labels(upstream, target, "active").set(active)
        self.connections.labels(upstream, target, "idle").set(idle)

    def set_health(self, upstream: str, target: str, healthy: bool) -> None:
        self.health.labels(upstream, target).set(1 if healthy else 0)

    def inc_ejection(self, upstream: str, target: str) -> None:
        self.ejections.labels(upstream, target).inc()

    def websocket_opened(self, upstream: str) -> None:
        self.websocket_sessions.labels(upstream).inc()

    def websocket_closed(self, upstream: str) -> None:
        self.websocket_sessions.labels(upstream).dec()

    def reload(self, result: ReloadResult) -> None:
        """Count a configuration reload; a success also stamps ``..._last_reload_success_timestamp_seconds``."""
        self._reload_children[result].inc()
        if result == "success":
            self.config_last_reload.set(time.time())

    def add_refresher(self, key: object, refresh: Callable[[], None]) -> None:
        """Call ``refresh`` before each render (and on ``refresh()``): gauges read from state, not per request.

        ``key`` names it, so a later ``add_refresher`` with the same key replaces it and ``remove_refresher`` drops it.
        """
        self._refreshers[key] = refresh

    def remove_refresher(self, key: object, *, last: bool = False) -> None:
        """Drop the refresher named ``key``; with ``last``, run it once more first (counters it advances)."""
        refresh = self._refreshers.pop(key, None)
        if last and refresh is not None:
            refresh()

    def refresh(self) -> None:
        """Run the refreshers: this worker's gauges (connections, health) from its pools and health state."""
        for refresh in list(self._refreshers.values()):
            refresh()

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header: (body, content type). Blocking (reads files): use a thread."""
        self.refresh()
        if self.multiprocess:
            prune_dead_processes()
            if self._process is not None:
                self._process.refresh()
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def close(self) -> None:
        """At worker exit: drop this process's live gauges (multiprocess mode), as gunicorn's child_exit would."""
        if self.multiprocess:
            path = os.environ.get(MULTIPROC_ENV)
            if path and Path(path).is_dir():
                from prometheus_client.multiprocess import mark_process_dead

                mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]


class _ProcessMetrics:
    """This worker's process metrics written as multiprocess gauges (ProcessCollector cannot be shared)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge
        from prometheus_client.process_collector import ProcessCollector

        self._source = ProcessCollector(registry=None)
        self._gauges = {
            name: Gauge(name, help_text, registry=None, multiprocess_mode=mode)
            for name, (help_text, mode) in _PROCESS_GAUGES.items()
        }
        self._cpu = Counter("process_cpu_seconds", "CPU time of all workers in seconds.", registry=None)
        self._cpu_seen = 0.0

    def refresh(self) -> None:
        for family in self._source.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total":
                    if sample.value > self._cpu_seen:
                        self._cpu.inc(sample.value - self._cpu_seen)
                        self._cpu_seen = sample.value
                elif (gauge := self._gauges.get(sample.name)) is not None:
                    gauge.set(sample.value)


def prune_dead_processes(path: str | None = None) -> None:
    """Drop the live gauges of workers that died without :meth:`Metrics.close` (killed, crashed)."""
    directory = Path(path or os.environ.get(MULTIPROC_ENV, ""))
    if not directory.is_dir():
        return
    from prometheus_client.multiprocess import mark_process_dead

    for file in directory.glob("gauge_live*_*.db"):
        pid = file.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_multiprocess_dir(environ: dict[str, str] | None = None) -> Callable[[], None]:
    """In the manager, before workers start: an empty ``PROMETHEUS_MULTIPROC_DIR`` in the environment.

    >>> cleanup = prepare_multiprocess_dir()   # server.run(), when workers > 1
    >>> try: uvicorn.run(...)
    ... finally: cleanup()

    A directory given in the environment is emptied of ``*.db`` files and kept; otherwise a temporary one is
    made, and removed by the returned cleanup.
    """
    env: Any = os.environ if environ is None else environ
    given = env.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        for file in directory.glob("*.db"):
            file.unlink(missing_ok=True)
        return lambda: None
    made = tempfile.mkdtemp(prefix="fastgate-metrics-")
    env[MULTIPROC_ENV] = made

    def cleanup() -> None:
        if env.get(MULTIPROC_ENV) == made:
            del env[MULTIPROC_ENV]
        shutil.rmtree(made, ignore_errors=True)

    return cleanup


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class MetricsApp:
    """ASGI app answering ``GET /metrics`` (Prometheus text, or OpenMetrics when ``Accept`` asks for it).

    >>> app = metrics_app(metrics)   # mounted on the admin listener
    """

    def __init__(self, metrics: Metrics, path: str = "/metrics") -> None:
        self.metrics = metrics
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != self.path:
            await _plain(send, 404, b"not found\n")
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _plain(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
            return
        body, content_type = await anyio.to_thread.run_sync(self.metrics.render, _header(scope, b"accept"))
        headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


async def _plain(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


def metrics_app(metrics: Metrics, path: str = "/metrics") -> MetricsApp:
    """The ``/metrics`` ASGI app for ``metrics``."""
    return MetricsApp(metrics, path)


def metrics_mapping(text: str) -> Mapping[str, float]:
    """``{'name{labels}': value}`` from a text exposition: a small helper for tests and the admin API."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out
