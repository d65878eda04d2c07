"""Configuration: a validated, immutable description of a gateway.

``load_config(path)`` turns a YAML or JSON file into a :class:`GatewayConfig`; library users build the same
objects in Python. Nothing here opens a socket: runtime objects are built by :class:`fastgate.Gateway` when its
lifespan starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .exceptions import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Model):
    """Upstream timeouts in seconds; ``None`` disables one.

    >>> Timeouts(connect=2.0, read=30.0)
    Timeouts(connect=2.0, read=30.0, write=60.0, pool=5.0, stream_idle=None)

    ``read`` bounds the wait for the response headers; ``stream_idle`` bounds the silence between two body
    chunks in either direction and is off by default, so long streams and SSE are never cut unless asked.
    """

    connect: float | None = Field(5.0, gt=0)
    read: float | None = Field(60.0, gt=0)
    write: float | None = Field(60.0, gt=0)
    pool: float | None = Field(5.0, gt=0)
    stream_idle: float | None = Field(None, gt=0)


class PoolLimits(_Model):
    """Connection pool limits for one upstream (httpx's names).

    >>> PoolLimits(max_connections=100)
    PoolLimits(max_connections=100, max_keepalive_connections=128, keepalive_expiry=4.0)

    ``keepalive_expiry`` defaults below Uvicorn's 5 s idle timeout so we drop an idle connection before the
    upstream does.
    """

    max_connections: int = Field(512, ge=1)
    max_keepalive_connections: int = Field(128, ge=0)
    keepalive_expiry: float = Field(4.0, ge=0)


class WebSocketOptions(_Model):
    """How WebSocket sessions to one upstream are kept alive, bounded and admitted.

    >>> WebSocketOptions(idle_timeout=300, allowed_origins=["https://app.example"]).allowed_origins
    ('https://app.example',)

    ``ping_interval``/``ping_timeout`` drive keep-alive pings on the upstream hop (``None`` turns them off; the
    client hop is pinged by Uvicorn). ``idle_timeout`` closes both sides with 1001 after that long without a
    message either way (off by default). ``close_timeout`` is how long the upstream gets to answer our close
    frame (or to drop the connection after a ping went unanswered) before its socket is aborted. A message
    above ``max_message_size`` bytes closes the session with 1009. ``allowed_origins`` (exact
    ``scheme://host[:port]`` values) refuses other browser origins with 1008; ``None`` admits every origin,
    and a handshake without an Origin header (not a browser) is always admitted.
    """

    ping_interval: float | None = Field(20.0, gt=0)
    ping_timeout: float | None = Field(20.0, gt=0)
    idle_timeout: float | None = Field(None, gt=0)
    close_timeout: float = Field(5.0, gt=0)
    max_message_size: int = Field(16 * 1024 * 1024, ge=1)
    allowed_origins: tuple[str, ...] | None = None

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        for origin in value:
            parts = urlsplit(origin)
            if not parts.scheme or not parts.netloc or parts.path or parts.query or parts.fragment:
                raise ValueError(f"must be origins like 'https://app.example:8443', got {origin!r}")
        return tuple(origin.lower() for origin in value)


class UpstreamConfig(_Model):
    """One upstream service: where it is and how we talk to it.

    >>> UpstreamConfig(url="http://127.0.0.1:9000/api")
    """

    url: str
    timeouts: Timeouts = Timeouts()
    limits: PoolLimits = PoolLimits()
    transport: Literal["fastgate", "httpx"] = "fastgate"
    ca_file: str | None = None
    preserve_host: bool = True
    forwarded: bool = False
    # The response head (status line, headers, interim 1xx responses) may not grow past this: an upstream that
    # streams header lines would otherwise grow the process until the read timeout. Then 502, as nginx does.
    max_response_header_bytes: int = Field(65536, ge=1024)
    websocket: WebSocketOptions = WebSocketOptions()

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no such file: {value!r}")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        if not parts.hostname:
            raise ValueError(f"has no host: {value!r}")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError(f"has an invalid port: {value!r}") from None
        if parts.query or parts.fragment:
            raise ValueError(f"may not carry a query or fragment: {value!r}")
        return value

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def target(self) -> str:
        """``host:port`` as failures name it (``[::1]:9000`` for an IPv6 host), the port always given."""
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def path_prefix(self) -> bytes:
        """The URL's path without a trailing slash: ``/api/`` and ``/api`` both give ``b"/api"``."""
        return urlsplit(self.url).path.rstrip("/").encode("ascii")

    @property
    def authority(self) -> bytes:
        parts = urlsplit(self.url)
        default = 443 if parts.scheme == "https" else 80
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        return (host if self.port == default else f"{host}:{self.port}").encode("ascii")


class RouteConfig(_Model):
    """Requests whose path starts with ``prefix`` go to ``upstream``."""

    prefix: str = "/"
    upstream: str
    strip_prefix: bool = False
    request_buffering: bool = False

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must start with '/', got {value!r}")
        return value


class BodyRate(_Model):
    """The slowest request body accepted once ``grace_period`` seconds have passed (Kestrel's MinRequestBodyDataRate).

    >>> BodyRate(bytes_per_second=240, grace_period=5)
    """

    bytes_per_second: float = Field(240.0, gt=0)
    grace_period: float = Field(5.0, ge=0)


class ServerConfig(_Model):
    """The listener and the client side of every connection: limits, deadlines, logging, workers.

    Deadlines (seconds; ``None`` turns one off): ``header_timeout`` for a whole request head (then 408 and close),
    ``keepalive_timeout`` for an idle kept-alive connection (then a quiet close), ``send_timeout`` for a client
    that takes no response bytes (then the connection is cut), ``min_request_body_rate`` for uploads (then 408).
    """

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    log_config: str | None = None
    access_log: bool = True
    graceful_timeout: float = Field(30.0, ge=0)
    max_header_bytes: int = Field(65536, ge=1024)
    max_header_field_bytes: int = Field(32768, ge=256)
    max_uri_bytes: int = Field(8192, ge=256)
    header_timeout: float | None = Field(10.0, gt=0)
    keepalive_timeout: float | None = Field(75.0, gt=0)
    send_timeout: float | None = Field(60.0, gt=0)
    min_request_body_rate: BodyRate | None = BodyRate()
    max_requests_per_connection: int | None = Field(1000, ge=1)
    max_connections: int | None = Field(10000, ge=1)
    underscores_in_headers: bool = False
    request_buffer_memory_bytes: int = Field(1024 * 1024, ge=0)
    # The client hop of WebSocket sessions (Uvicorn's ws_* settings); the upstream hop is UpstreamConfig.websocket.
    ws_client_max_size: int = Field(16 * 1024 * 1024, ge=1)
    ws_client_ping_interval: float | None = Field(20.0, gt=0)
    ws_client_ping_timeout: float | None = Field(20.0, gt=0)
    ws_per_message_deflate: bool = False


class GatewayConfig(_Model):
    """A whole gateway: server settings, named upstreams and the routes to them."""

    server: ServerConfig = ServerConfig()
    upstreams: dict[str, UpstreamConfig]
    routes: list[RouteConfig]

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        if not self.routes:
            raise ValueError("routes: at least one route is required")
        for index, route in enumerate(self.routes):
            if route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none"
                raise ValueError(f"routes[{index}].upstream: unknown upstream {route.upstream!r} (known: {known})")
        return self

    @classmethod
    def single(cls, url: str, *, server: ServerConfig | None = None, **upstream: Any) -> GatewayConfig:
        """Everything to one upstream, as ``fastgate proxy --to URL`` does."""
        return build_config(
            {
                "server": (server or ServerConfig()).model_dump(),
                "upstreams": {"default": {"url": url, **upstream}},
                "routes": [{"prefix": "/", "upstream": "default"}],
            }
        )


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)


def build_config(data: Any) -> GatewayConfig:
    """Validate plain data into a :class:`GatewayConfig`, raising :class:`ConfigError` with key paths."""
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read a YAML or JSON config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return build_config(data)
