"""fastgate: an async HTTP and WebSocket reverse proxy and API gateway for Python, on Uvicorn."""

from typing import TYPE_CHECKING as _TYPE_CHECKING

from .app import Gateway
from .config import (
    AdminConfig,
    BodyRate,
    GatewayConfig,
    Http2Config,
    PoolLimits,
    RouteConfig,
    ServerConfig,
    Timeouts,
    UpstreamConfig,
    UpstreamHttp2,
    WebSocketOptions,
    load_config,
)
from .exceptions import (
    BadRequest,
    ClientDisconnected,
    ClientError,
    ConfigError,
    FastgateError,
    HeadersTooLarge,
    Overloaded,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    RouteNotFound,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamOverflow,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
    UriTooLong,
    VersionNotSupported,
)
from .plugins import Answer, Exchange, HeaderList, Plugin, RequestContext, ResponseHead

if _TYPE_CHECKING:
    from .integrations.cancel import cancel_on_disconnect
    from .integrations.client import UpstreamClient
    from .integrations.fastapi import ProxyApp, Upstreams, forward, forward_websocket, upstream_client

# Library-use names load on first access: the standalone gateway never pays for httpx and Starlette's request
# machinery (about 4 MB per worker).
_LAZY = {
    "ProxyApp": "fastapi",
    "UpstreamClient": "client",
    "Upstreams": "fastapi",
    "cancel_on_disconnect": "cancel",
    "forward": "fastapi",
    "forward_websocket": "fastapi",
    "upstream_client": "fastapi",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastgate' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".integrations.{module}", __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AdminConfig",
    "Answer",
    "BadRequest",
    "BodyRate",
    "ClientDisconnected",
    "ClientError",
    "ConfigError",
    "Exchange",
    "FastgateError",
    "Gateway",
    "GatewayConfig",
    "HeaderList",
    "HeadersTooLarge",
    "Http2Config",
    "Overloaded",
    "Plugin",
    "PoolLimits",
    "ProxyApp",
    "RateLimited",
    "RequestContext",
    "RequestTimeout",
    "RequestTooLarge",
    "ResponseHead",
    "RouteConfig",
    "RouteNotFound",
    "ServerConfig",
    "Timeouts",
    "UpstreamClient",
    "UpstreamConfig",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamError",
    "UpstreamHttp2",
    "UpstreamOverflow",
    "UpstreamProtocolError",
    "UpstreamRefused",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "Upstreams",
    "UriTooLong",
    "VersionNotSupported",
    "WebSocketOptions",
    "__version__",
    "cancel_on_disconnect",
    "forward",
    "forward_websocket",
    "load_config",
    "upstream_client",
]
