"""Serve a gateway with Uvicorn: one process, or ``--workers N`` under Uvicorn's process manager.

Each worker builds its :class:`Gateway` from the config passed in the environment (``FASTGATE_CONFIG_JSON``),
or, started by ``fastgate run FILE``, from that file read again (``FASTGATE_CONFIG_FILE``), so every worker owns
its pools, opened in its own lifespan. Uvicorn replaces a worker that dies and drains in-flight requests on
SIGTERM within ``server.graceful_timeout``. On Linux each worker accepts on a ``SO_REUSEPORT`` listener of its own,
bound by the manager before the workers start, so the kernel spreads new connections over them
(serving/listeners.py); elsewhere they share one socket.

Reload: SIGHUP to a single process reloads its file (the gateway's lifespan handles it); with workers the manager
passes SIGHUP on to every worker (:class:`Supervisor`) instead of Uvicorn's restart of them all, and ``--watch``
sends the process SIGHUP whenever the file changes.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from ._protocol import FastgateHttpProtocol
from .app import DRIVER_ENV, Gateway
from .config import GatewayConfig
from .exceptions import ConfigError
from .handoff import export_validated, import_validated
from .observability.logging import access_logger, apply_log_level, error_logger, logging_config
from .process_signals import MANAGER_PID_ENV
from .reloading import ConfigSource, check_reloadable
from .serving import listeners, tls

CONFIG_ENV = "FASTGATE_CONFIG_JSON"

# fastgate's server protocols under public names, for apps that embed fastgate and run on Uvicorn themselves:
#   uvicorn app:app --http fastgate.server:HttpProtocol --ws fastgate.server:WebSocketProtocol
# They give forward() a disconnect callback instead of a watcher task, and WebSocket denials no false ERROR.
# WebSocketProtocol is fastgate._ws_protocol.FastgateWebSocketProtocol, imported on first access (__getattr__).
HttpProtocol = FastgateHttpProtocol


def __getattr__(name: str) -> object:
    if name == "WebSocketProtocol":
        from ._ws_protocol import FastgateWebSocketProtocol

        return FastgateWebSocketProtocol
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def websocket_protocol(**kwargs: Any) -> asyncio.Protocol:
    """Uvicorn's ``ws_protocol_class`` for the gateway: a :class:`~fastgate._ws_protocol.FastgateWebSocketProtocol`,
    its module imported on the worker's first WebSocket upgrade. ``websockets`` (with ``importlib.metadata`` and
    ``zipfile``, which it imports) is ~1.6 MB of RSS that a worker never seeing a WebSocket does not pay
    (tests/test_lazy_imports.py)."""
    from ._ws_protocol import FastgateWebSocketProtocol

    return FastgateWebSocketProtocol(**kwargs)


def create_app() -> Gateway:
    """Uvicorn's app factory, run in each worker process."""
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the lifespan handles it: never die of an early one
    config = import_validated() or GatewayConfig.model_validate_json(os.environ[CONFIG_ENV])
    source = ConfigSource.from_environ()
    if source is not None and not source.unchanged_since_export():
        config = _current_file(source, config)
    apply_log_level(config.server.log_level)
    access_logger.disabled = not config.server.access_log
    gateway = Gateway(config, source=source)
    if gateway.fastgate_handler is None:
        error_logger.info(
            "%s=asgi: the gateway is served through its ASGI adapter (worker %d)", DRIVER_ENV, os.getpid()
        )
    # Everything imported so far lives as long as the process. Freezing it keeps the collector's full passes
    # (which otherwise walk these ~100k objects) off the request path: measured p99 at 64 connections went
    # from ~17 ms to ~7 ms.
    gc.collect()
    gc.freeze()
    return gateway


def _current_file(source: ConfigSource, started: GatewayConfig) -> GatewayConfig:
    """The file as it is now (a worker replaced after reloads serves what the others do), else the startup config."""
    try:
        config = source.load()
        check_reloadable(started, config)
        return config
    except ConfigError as exc:
        error_logger.error("worker %d keeps the config the gateway started with: %s", os.getpid(), exc.detail)
        return started


class Supervisor(Multiprocess):
    """Uvicorn's process manager, but SIGHUP reloads the config in every worker instead of replacing them.

    ``own_sockets``: ``sockets`` holds one ``SO_REUSEPORT`` listener per worker (serving/listeners.py); worker *i*
    and every replacement of it get socket *i* alone, a worker added by SIGTTIN a new one on the same address, and
    the socket of a worker removed by SIGTTOU is closed once it exited. Otherwise every worker gets ``sockets``.
    """

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], *, own_sockets: bool = False) -> None:
        super().__init__(config, sockets)
        self.own_sockets = own_sockets

    def sockets_of(self, index: int) -> list[socket.socket]:
        """What worker ``index`` listens on."""
        if not self.own_sockets:
            return self.sockets
        while len(self.sockets) <= index:
            host, port = self.sockets[0].getsockname()[:2]
            self.sockets.append(listeners.reuse_port_listener(host, port))
        return [self.sockets[index]]

    def init_processes(self) -> None:
        for index in range(self.processes_num):
            process = Process(self.config, self.sockets_of(index))
            process.start()
            self.processes.append(process)

    def keep_subprocess_alive(self) -> None:
        # Uvicorn's, but a replacement gets the socket of the worker it replaces.
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: kill it
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                logging.getLogger("uvicorn.error").error(
                    "Child process [%s] failed to start, stopping the parent process.", process.pid
                )
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            logging.getLogger("uvicorn.error").info("Child process [%s] died", process.pid)
            replacement = Process(self.config, self.sockets_of(index))
            replacement.start()
            self.processes[index] = replacement

    def handle_ttin(self) -> None:
        logging.getLogger("uvicorn.error").info("Received SIGTTIN, increasing the number of processes.")
        self.processes_num += 1
        process = Process(self.config, self.sockets_of(len(self.processes)))
        process.start()
        self.processes.append(process)

    def handle_ttou(self) -> None:
        super().handle_ttou()
        if self.own_sockets:
            while len(self.sockets) > max(len(self.processes), 1):
                self.sockets.pop().close()  # its worker has exited; what the kernel still queued there is reset

    def handle_hup(self) -> None:
        pids = [process.pid for process in self.processes if process.pid is not None]
        logging.getLogger("uvicorn.error").info("Received SIGHUP, reloading the config in %d workers.", len(pids))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:  # died meanwhile; its replacement reads the file anew
                continue


def watch_file(path: Path, on_change: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_change`` (in a thread) each time ``path`` is written or replaced; returns the stop function.

    The directory is watched, not the file: editors and config management replace files by renaming.
    """
    import watchfiles

    stop = threading.Event()
    target = path.resolve()

    def run() -> None:
        def only_target(change: watchfiles.Change, changed: str) -> bool:
            return Path(changed).resolve() == target and change != watchfiles.Change.deleted

        for _ in watchfiles.watch(
            target.parent, watch_filter=only_target, stop_event=stop, debounce=200, step=50, rust_timeout=500
        ):
            on_change()

    thread = threading.Thread(target=run, name="fastgate config watch", daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(2)

    return close


def uvicorn_options(config: GatewayConfig) -> dict[str, Any]:
    server = config.server
    return {
        "host": server.host,
        "port": server.port,
        "workers": server.workers,
        "http": FastgateHttpProtocol,
        # uvloop, accepting every queued connection per loop turn (serving/accept.py: libuv accepts one per turn).
        "loop": "fastgate.serving.accept:new_event_loop" if importlib.util.find_spec("uvloop") else "asyncio",
        "ws": websocket_protocol,
        # The client hop of WebSocket sessions; the upstream hop's pings and limits are per upstream.
        "ws_max_size": server.ws_client_max_size,
        "ws_ping_interval": server.ws_client_ping_interval,
        "ws_ping_timeout": server.ws_client_ping_timeout,
        "ws_per_message_deflate": server.ws_per_message_deflate,
        "lifespan": "on",
        "log_config": server.log_config or logging_config(server.access_log_format),
        "log_level": server.log_level,
        "access_log": False,  # fastgate writes its own access line, with upstream, bytes and request id
        "proxy_headers": False,  # we append the peer to X-Forwarded-For; never trust a client's copy of it
        "server_header": False,  # Server and Date come from the upstream
        "date_header": False,
        "timeout_graceful_shutdown": server.graceful_timeout,
        # HTTPS/WSS: fastgate's own SSLContext (TLS 1.2 minimum, ALPN h2 and http/1.1)
        **tls.uvicorn_options(server.tls, http2=server.http2.enabled),
    }


def run(
    config: GatewayConfig,
    *,
    source: ConfigSource | None = None,
    watch: bool = False,
    digest: str | None = None,
    dump: str | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. Exits 3 when the server cannot start (port in use, say).

    ``source``: the file ``config`` came from, reloaded on SIGHUP (and on change with ``watch``). ``digest``: the
    file's :meth:`ConfigSource.digest` taken before ``config`` was loaded from it; workers starting while the file
    still matches it use ``config`` as it is instead of reading the file again. ``dump``: ``config``'s
    ``model_dump_json()`` when the caller has it (the CLI validates apart: handoff.validate_apart).
    """
    # The config is resolved (every route holds the values it inherits: GatewayConfig._resolve_inheritance), so
    # its dump says every decision and a worker validates it back to an equal config (tests/test_config.py).
    os.environ[CONFIG_ENV] = dump if dump is not None else config.model_dump_json()
    cleanup = None
    # Workers, and create_app() of a single process, take the config as it is instead of validating it again.
    remove_handoff = export_validated(config, os.environ)
    if config.server.workers > 1 and config.metrics.enabled:
        # Before the workers start: they inherit PROMETHEUS_MULTIPROC_DIR, so one scrape sees every worker.
        from .observability.metrics import prepare_multiprocess_dir

        cleanup = prepare_multiprocess_dir()
    if source is not None:
        source.export(os.environ, digest)
    options = uvicorn_options(config)
    server_config = uvicorn.Config("fastgate.server:create_app", factory=True, **options)
    server = uvicorn.Server(server_config)
    stop_watching = _signal_self_on_change(source.path) if source is not None and watch else None
    try:
        if server_config.workers > 1:
            os.environ[MANAGER_PID_ENV] = str(os.getpid())
            sockets, own = _worker_sockets(server_config)
            Supervisor(server_config, sockets=sockets, own_sockets=own).run()
        else:
            if hasattr(signal, "SIGHUP") and source is not None:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the lifespan takes it over once the gateway runs
            server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if stop_watching is not None:
            stop_watching()
        if cleanup is not None:
            cleanup()
        remove_handoff()
    if not server.started and server_config.workers == 1:
        sys.exit(STARTUP_FAILURE)


def _worker_sockets(config: uvicorn.Config) -> tuple[list[socket.socket], bool]:
    """The listeners of ``--workers N``, bound before the first worker starts: one ``SO_REUSEPORT`` socket per worker
    where the kernel balances them (serving/listeners.py), else one shared socket. ``(sockets, one per worker)``."""
    if not listeners.balanced_reuse_port():
        os.environ[listeners.SHARED_LISTENER_ENV] = "1"  # the workers bound their greedy accept (serving/accept.py)
        return [config.bind_socket()], False
    try:
        sockets = listeners.worker_listeners(config.host, config.port, config.workers)
    except OSError as exc:
        logging.getLogger("uvicorn.error").error(exc)
        sys.exit(STARTUP_FAILURE)
    host, port = sockets[0].getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on %s://%s:%d (Press CTRL+C to quit); %d workers, a SO_REUSEPORT listener each",
        "https" if config.is_ssl else "http",
        shown,
        port,
        len(sockets),
    )
    return sockets, True


def _signal_self_on_change(path: Path) -> Callable[[], None]:
    def changed() -> None:
        error_logger.info("%s changed: reloading", path)
        os.kill(os.getpid(), signal.SIGHUP)

    return watch_file(path, changed)
