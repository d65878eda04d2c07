"""The running config as JSON for ``GET /config``, decided field by field from the config's schema; pure.

>>> redacted_config(config)["admin"]["token"]
'***'

Redaction shows what is known to be safe, not what a name pattern happened to spare. Every field of every config
model is classified in :data:`FIELDS` (``tests/admin/test_redaction.py`` fails when a model gains a field that is
not, so a new key cannot be added unclassified; at run time an unclassified field is shown as ``"***"``):

- ``PUBLIC``: shown as it is (numbers, switches, names, paths, header *names*, matcher patterns);
- ``SECRET``: ``"***"`` (``admin.token``);
- ``URL``: rendered by :func:`~fastgate.observability.safe_url.safe_url`: no userinfo, no query values, no
  fragment (``redis.url``, upstream URLs, ``tracing.otlp_endpoint``, ``health_check.path``, origins);
- ``VALUES``: a name -> value map whose names are shown and whose every value is ``"***"`` (header and query
  matchers, ``request_headers``/``response_headers`` ``set`` and ``add``);
- ``NESTED``: another model (or a list or map of them), walked by the same table;
- ``PLUGINS``: a route's ``plugins``: the options of a built-in plugin are classified in :data:`PLUGIN_OPTIONS`
  (an option not in it is ``"***"``); a plugin of yours shows only the options its class lists in a
  ``public_options`` attribute (names of options), every other option value is ``"***"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from pydantic import BaseModel

from .. import config as models
from ..config import GatewayConfig, PluginSpec
from ..observability.safe_url import REDACTED, safe_url
from ..plugins import BUILTIN_PLUGINS, resolve_plugin

__all__ = ["FIELDS", "PLUGIN_OPTIONS", "REDACTED", "Kind", "redacted_config"]


class Kind(Enum):
    PUBLIC = "public"
    SECRET = "secret"
    URL = "url"
    VALUES = "values"
    NESTED = "nested"
    PLUGINS = "plugins"


PUBLIC, SECRET, URL, VALUES, NESTED, PLUGINS = Kind

# Every field of every model reachable from GatewayConfig, classified. A test checks this covers them all.
FIELDS: dict[type[BaseModel], dict[str, Kind]] = {
    models.GatewayConfig: {
        "server": NESTED,
        "upstreams": NESTED,
        "routes": NESTED,
        "metrics": NESTED,
        "tracing": NESTED,
        "redis": NESTED,
        "admin": NESTED,
    },
    models.Http2Config: {
        "enabled": PUBLIC,
        "max_concurrent_streams": PUBLIC,
        "initial_stream_window_bytes": PUBLIC,
        "initial_connection_window_bytes": PUBLIC,
        "max_header_list_bytes": PUBLIC,
        "max_frame_bytes": PUBLIC,
    },
    models.ServerConfig: {
        "host": PUBLIC,
        "port": PUBLIC,
        "workers": PUBLIC,
        "log_level": PUBLIC,
        "log_config": PUBLIC,  # a file path
        "access_log": PUBLIC,
        "access_log_format": PUBLIC,
        "graceful_timeout": PUBLIC,
        "drain_timeout": PUBLIC,
        "max_header_bytes": PUBLIC,
        "max_header_field_bytes": PUBLIC,
        "max_uri_bytes": PUBLIC,
        "header_timeout": PUBLIC,
        "keepalive_timeout": PUBLIC,
        "send_timeout": PUBLIC,
        "min_request_body_rate": NESTED,
        "max_requests_per_connection": PUBLIC,
        "max_connections": PUBLIC,
        "lingering_time": PUBLIC,
        "lingering_timeout": PUBLIC,
        "max_lingering_bytes": PUBLIC,
        "underscores_in_headers": PUBLIC,
        "request_buffer_memory_bytes": PUBLIC,
        "request_prebuffer_bytes": PUBLIC,
        "response_buffer_memory_bytes": PUBLIC,
        "response_buffer_file_bytes": PUBLIC,
        "max_body_bytes": PUBLIC,
        "ws_client_max_size": PUBLIC,
        "ws_client_ping_interval": PUBLIC,
        "ws_client_ping_timeout": PUBLIC,
        "ws_per_message_deflate": PUBLIC,
        "merge_slashes": PUBLIC,
        "http2": NESTED,
        "tls": NESTED,
        "trusted_proxies": PUBLIC,  # the proxies' CIDR blocks, no secret
    },
    models.BodyRate: {"bytes_per_second": PUBLIC, "grace_period": PUBLIC},
    models.TlsConfig: {"key_file": PUBLIC, "cert_file": PUBLIC},  # paths, not the key
    models.UpstreamConfig: {
        "url": URL,
        "targets": NESTED,
        "balancer": PUBLIC,
        "hash_on": PUBLIC,  # header:NAME, cookie:NAME or client_ip: a name
        "health_check": NESTED,
        "outlier_detection": NESTED,
        "retries": NESTED,
        "timeouts": NESTED,
        "limits": NESTED,
        "circuit_breaker": NESTED,
        "transport": PUBLIC,
        "ca_file": PUBLIC,
        "preserve_host": PUBLIC,
        "forwarded": PUBLIC,
        "max_response_header_bytes": PUBLIC,
        "websocket": NESTED,
        "protocol": PUBLIC,
        "http2": NESTED,
    },
    models.UpstreamHttp2: {"max_concurrent_streams": PUBLIC, "keepalive_interval": PUBLIC},
    models.UpstreamTarget: {"url": URL, "weight": PUBLIC},
    models.HealthCheck: {
        "path": URL,  # a path whose query may carry a token
        "interval": PUBLIC,
        "timeout": PUBLIC,
        "unhealthy_threshold": PUBLIC,
        "healthy_threshold": PUBLIC,
        "expected_status": PUBLIC,
        "type": PUBLIC,
        "service": PUBLIC,
    },
    models.OutlierDetection: {
        "consecutive_failures": PUBLIC,
        "base_ejection_time": PUBLIC,
        "max_ejection_time": PUBLIC,
        "max_ejection_percent": PUBLIC,
    },
    models.RetryPolicy: {
        "max_retries": PUBLIC,
        "retry_on": PUBLIC,
        "per_try_timeout": PUBLIC,
        "backoff": NESTED,
        "budget_percent": PUBLIC,
        "min_retry_concurrency": PUBLIC,
        "non_idempotent": PUBLIC,
        "replay_buffer_bytes": PUBLIC,
    },
    models.Backoff: {"base": PUBLIC, "max": PUBLIC},
    models.Timeouts: dict.fromkeys(("connect", "read", "write", "pool", "stream_idle"), PUBLIC),
    models.RouteTimeouts: dict.fromkeys(("connect", "read", "write", "pool", "stream_idle"), PUBLIC),
    models.PoolLimits: dict.fromkeys(("max_connections", "max_keepalive_connections", "keepalive_expiry"), PUBLIC),
    models.CircuitBreakerConfig: dict.fromkeys(
        ("max_connections", "max_pending_requests", "max_requests", "max_retries"), PUBLIC
    ),
    models.WebSocketOptions: {
        "ping_interval": PUBLIC,
        "ping_timeout": PUBLIC,
        "idle_timeout": PUBLIC,
        "close_timeout": PUBLIC,
        "max_message_size": PUBLIC,
        "allowed_origins": URL,
    },
    models.RouteConfig: {
        "name": PUBLIC,
        "host": PUBLIC,
        "prefix": PUBLIC,
        "path": PUBLIC,
        "regex": PUBLIC,
        "methods": PUBLIC,
        "headers": VALUES,  # a matcher's value is often the credential itself (x-internal-key: ...)
        "query": VALUES,
        "upstream": PUBLIC,
        "strip_prefix": PUBLIC,
        "rewrite": NESTED,
        "request_headers": NESTED,
        "response_headers": NESTED,
        "timeouts": NESTED,
        "retries": NESTED,
        "plugins": PLUGINS,
        "priority": PUBLIC,
        "request_buffering": PUBLIC,
        "rate_limit": NESTED,
        "max_body_bytes": PUBLIC,
        "grpc_web": PUBLIC,
    },
    models.Rewrite: {"regex": PUBLIC, "replacement": PUBLIC, "path": PUBLIC},
    models.HeaderRules: {"set": VALUES, "add": VALUES, "remove": PUBLIC},
    models.PluginSpec: {"use": PUBLIC, "options": SECRET},  # options: walked by PLUGIN_OPTIONS instead
    models.RateLimitConfig: {"rate": PUBLIC, "per": PUBLIC, "burst": PUBLIC, "key": PUBLIC, "store": PUBLIC},
    models.RedisConfig: {
        "url": URL,
        "on_error": PUBLIC,
        "timeout": PUBLIC,
        "retry_interval": PUBLIC,
        "max_connections": PUBLIC,
    },
    models.TracingConfig: {"otlp_endpoint": URL, "service_name": PUBLIC, "sample_ratio": PUBLIC},
    models.MetricsConfig: {"enabled": PUBLIC},
    models.AdminConfig: {"listen": PUBLIC, "token": SECRET},
}

# The options of every built-in plugin (every parameter of its class, or the model its **options validate into).
PLUGIN_OPTIONS: dict[str, dict[str, Kind]] = {
    "request_headers": FIELDS[models.HeaderRules],
    "response_headers": FIELDS[models.HeaderRules],
    "rewrite": FIELDS[models.Rewrite],
    "rate_limit": {**FIELDS[models.RateLimitConfig], "name": PUBLIC, "namespace": PUBLIC, "redis": SECRET},
    "api_key": {"keys_file": PUBLIC, "header": PUBLIC, "strip": PUBLIC, "identity_header": PUBLIC},
    "jwt": {
        "jwks_file": PUBLIC,
        "jwks_url": URL,
        "issuer": PUBLIC,
        "audience": PUBLIC,
        "algorithms": PUBLIC,
        "leeway": PUBLIC,
        "required_claims": PUBLIC,
        "identity_claim": PUBLIC,
        "realm": PUBLIC,
        "strip": PUBLIC,
        "identity_header": PUBLIC,
        "cache_ttl": PUBLIC,
        "min_refresh_interval": PUBLIC,
        "timeout": PUBLIC,
        "ca_file": PUBLIC,
        "token_cache_size": PUBLIC,
        "token_cache_ttl": PUBLIC,
    },
    "basic_auth": {
        "users_file": PUBLIC,
        "realm": PUBLIC,
        "strip": PUBLIC,
        "identity_header": PUBLIC,
        "cache_ttl": PUBLIC,
        "cache_size": PUBLIC,
    },
    "forward_auth": {
        "url": URL,
        "copy_headers": PUBLIC,
        "timeout": PUBLIC,
        "max_body": PUBLIC,
        "ca_file": PUBLIC,
        "identity_header_from": PUBLIC,
    },
    "cors": {
        "allow_origins": URL,
        "allow_methods": PUBLIC,
        "allow_headers": PUBLIC,
        "expose_headers": PUBLIC,
        "max_age": PUBLIC,
        "allow_credentials": PUBLIC,
    },
}

_BUILTIN_NAMES = {path: name for name, path in BUILTIN_PLUGINS.items()}  # "fastgate.plugins.cors:Cors" -> "cors"


def redacted_config(config: GatewayConfig) -> dict[str, Any]:
    """``config`` as plain JSON data in which only what its schema says is safe is shown as it is."""
    return _model(config)


def _model(model: BaseModel) -> dict[str, Any]:
    kinds = FIELDS.get(type(model), {})
    data: dict[str, Any] = model.model_dump(mode="json")  # the models' own serializers decide which keys appear
    return {key: _field(kinds.get(key, SECRET), getattr(model, key, None), value) for key, value in data.items()}


def _field(kind: Kind, attribute: Any, dumped: Any) -> Any:
    if dumped is None:
        return None
    if kind is PUBLIC:
        return dumped
    if kind is URL:
        return _urls(dumped)
    if kind is VALUES and isinstance(dumped, Mapping):
        return dict.fromkeys(dumped, REDACTED)
    if kind is NESTED:
        return _nested(attribute, dumped)
    if kind is PLUGINS:
        return [_plugin(spec) for spec in attribute]
    return _secret(dumped)


def _nested(attribute: Any, dumped: Any) -> Any:
    if isinstance(attribute, BaseModel):
        return _model(attribute)
    if isinstance(attribute, Mapping):
        return {key: _nested(item, dumped[key]) for key, item in attribute.items()}
    if isinstance(attribute, list | tuple):
        return [_nested(item, value) for item, value in zip(attribute, dumped, strict=True)]
    return _secret(dumped)  # a field classified NESTED that holds no model: show nothing of it


def _plugin(spec: PluginSpec) -> dict[str, Any]:
    kinds = PLUGIN_OPTIONS.get(_BUILTIN_NAMES.get(spec.use, spec.use))
    if kinds is None:
        kinds = dict.fromkeys(_public_options(spec.use), PUBLIC)
    dumped: dict[str, Any] = spec.model_dump(mode="json")["options"]  # JSON data, whatever a library user passed
    options = {key: _option(kinds.get(key, SECRET), value) for key, value in dumped.items()}
    return {"use": spec.use, "options": options}


def _option(kind: Kind, value: Any) -> Any:
    """A plugin option from the config file (plain data, not a model)."""
    if value is None:
        return None
    if kind is PUBLIC:
        return value
    if kind is URL:
        return _urls(value)
    if kind is VALUES and isinstance(value, Mapping):
        return dict.fromkeys(value, REDACTED)
    return _secret(value)


def _public_options(use: str) -> tuple[str, ...]:
    """The ``public_options`` a plugin of yours declares (option names whose values are safe to show)."""
    try:
        names = getattr(resolve_plugin(use), "public_options", ())
    except ValueError:
        return ()
    if isinstance(names, str) or not isinstance(names, list | tuple | set | frozenset):
        return ()
    return tuple(name for name in names if isinstance(name, str))


def _urls(value: Any) -> Any:
    if isinstance(value, str):
        return safe_url(value)
    if isinstance(value, list | tuple):
        return [_urls(item) for item in value]
    return _secret(value)


def _secret(value: Any) -> Any:
    """``"***"``, or the value itself when it is empty (an empty string, list or map says nothing)."""
    return value if isinstance(value, str | list | dict | tuple) and not value else REDACTED
