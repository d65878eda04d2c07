"""fastgate: an async HTTP and WebSocket reverse proxy and API gateway for Python, on Uvicorn."""

from .app import Gateway
from .config import GatewayConfig, PoolLimits, RouteConfig, ServerConfig, Timeouts, UpstreamConfig, load_config
from .exceptions import (
    BadRequest,
    ClientDisconnected,
    ClientError,
    ConfigError,
    FastgateError,
    HeadersTooLarge,
    RouteNotFound,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "ClientDisconnected",
    "ClientError",
    "ConfigError",
    "FastgateError",
    "Gateway",
    "GatewayConfig",
    "HeadersTooLarge",
    "PoolLimits",
    "RouteConfig",
    "RouteNotFound",
    "ServerConfig",
    "Timeouts",
    "UpstreamConfig",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "__version__",
    "load_config",
]
