"""Serve a gateway with Uvicorn: one process, or ``--workers N`` under Uvicorn's own process manager.

Each worker builds its :class:`Gateway` from the config passed in the environment (``FASTGATE_CONFIG_JSON``),
so every worker owns its pools, opened in its own lifespan. Uvicorn replaces a worker that dies and drains
in-flight requests on SIGTERM within ``server.graceful_timeout``.
"""

from __future__ import annotations

import gc
import importlib.util
import os
from typing import Any

import uvicorn

from ._protocol import FastgateHttpProtocol
from ._ws_protocol import FastgateWebSocketProtocol
from .app import Gateway
from .config import GatewayConfig
from .observability.logging import LOGGING_CONFIG, access_logger, apply_log_level
from .serving import tls

CONFIG_ENV = "FASTGATE_CONFIG_JSON"

# fastgate's server protocols under public names, for apps that embed fastgate and run on Uvicorn themselves:
#   uvicorn app:app --http fastgate.server:HttpProtocol --ws fastgate.server:WebSocketProtocol
# They give forward() a disconnect callback instead of a watcher task, and WebSocket denials no false ERROR.
HttpProtocol = FastgateHttpProtocol
WebSocketProtocol = FastgateWebSocketProtocol


def create_app() -> Gateway:
    """Uvicorn's app factory, run in each worker process."""
    config = GatewayConfig.model_validate_json(os.environ[CONFIG_ENV])
    apply_log_level(config.server.log_level)
    access_logger.disabled = not config.server.access_log
    gateway = Gateway(config)
    # Everything imported so far lives as long as the process. Freezing it keeps the collector's full passes
    # (which otherwise walk these ~100k objects) off the request path: measured p99 at 64 connections went
    # from ~17 ms to ~7 ms.
    gc.collect()
    gc.freeze()
    return gateway


def uvicorn_options(config: GatewayConfig) -> dict[str, Any]:
    server = config.server
    return {
        "host": server.host,
        "port": server.port,
        "workers": server.workers,
        "http": FastgateHttpProtocol,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "ws": FastgateWebSocketProtocol,
        # The client hop of WebSocket sessions; the upstream hop's pings and limits are per upstream.
        "ws_max_size": server.ws_client_max_size,
        "ws_ping_interval": server.ws_client_ping_interval,
        "ws_ping_timeout": server.ws_client_ping_timeout,
        "ws_per_message_deflate": server.ws_per_message_deflate,
        "lifespan": "on",
        "log_config": server.log_config or LOGGING_CONFIG,
        "log_level": server.log_level,
        "access_log": False,  # fastgate writes its own access line, with upstream, bytes and request id
        "proxy_headers": False,  # we append the peer to X-Forwarded-For; never trust a client's copy of it
        "server_header": False,  # Server and Date come from the upstream
        "date_header": False,
        "timeout_graceful_shutdown": server.graceful_timeout,
        **tls.uvicorn_options(server.tls),  # HTTPS/WSS: fastgate's own SSLContext (TLS 1.2 minimum)
    }


def run(config: GatewayConfig) -> None:
    """Serve until SIGINT/SIGTERM. Exits 3 when the server cannot start (port in use, say)."""
    os.environ[CONFIG_ENV] = config.model_dump_json()
    uvicorn.run("fastgate.server:create_app", factory=True, **uvicorn_options(config))
