"""Configuration: a validated, immutable description of a gateway.

``load_config(path)`` turns a YAML or JSON file into a :class:`GatewayConfig`; library users build the same
objects in Python. Nothing here opens a socket: runtime objects are built by :class:`fastgate.Gateway` when its
lifespan starts.
"""

from __future__ import annotations

import json
import re
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .exceptions import ConfigError
from .observability.safe_url import safe_url
from .plugins import resolve_plugin
from .policies.ratelimit import KeyPart, RateLimitPolicy, parse_key, parse_period
from .proxy.client_address import TrustedProxies
from .proxy.paths import PathAboveRoot, normalize_path


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


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
                raise ValueError(f"must be origins like 'https://app.example:8443', got {safe_url(origin)!r}")
        return tuple(origin.lower() for origin in value)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?")
_IPV6 = re.compile(r"\[[0-9a-f:.]+\]")
_REWRITE_CHARS = re.compile(r"[!$&'()*+,;=:@/%\-._~0-9A-Za-z\\]*")
# Framing and hop-by-hop headers: a route's header rules may not touch them (request smuggling, RFC 9112 §6).
_PROTECTED_HEADERS = frozenset(
    {"connection", "content-length", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)


def _valid_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL, got {safe_url(value)!r}")
    if not parts.hostname:
        raise ValueError(f"has no host: {safe_url(value)!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"has an invalid port: {safe_url(value)!r}") from None
    if parts.query or parts.fragment:
        raise ValueError(f"may not carry a query or fragment: {safe_url(value)!r}")
    return value


def _header_name(value: str) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(f"not a valid header name: {value!r}")
    return value.lower()


def _header_value(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `x-version: 2` in YAML
    if not isinstance(value, str):
        raise ValueError(f"header values are strings, got a {type(value).__name__}")  # not the value: a secret
    if any(char in value for char in "\r\n\0"):
        raise ValueError("a header value may not contain CR, LF or NUL")
    if not all(ord(char) <= 0xFF for char in value):
        raise ValueError("a header value must be latin-1 text (percent-encode the rest)")
    return value.strip(" \t")


HeaderName = Annotated[str, BeforeValidator(_header_name)]
HeaderValue = Annotated[str, BeforeValidator(_header_value)]


class UpstreamTarget(_Model):
    """One address of an upstream, with its share of the traffic.

    >>> UpstreamTarget(url="http://10.0.0.2:9000/api", weight=3).authority
    b'10.0.0.2:9000'
    """

    url: str
    weight: StrictInt = Field(1, ge=1, le=1_000_000)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _valid_url(value)

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

    @property
    def address(self) -> str:
        """``host:port`` as failures name it (``[::1]:9000`` for an IPv6 host), the port always given."""
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def _status_ranges(value: str) -> tuple[tuple[int, int], ...]:
    ranges = []
    for part in value.split(","):
        low, sep, high = part.strip().partition("-")
        if not low.strip().isdigit() or (sep and not high.strip().isdigit()):
            raise ValueError(f"must be statuses and ranges like '200-399' or '200,204', got {value!r}")
        first, last = int(low), int(high) if sep else int(low)
        if not 100 <= first <= last <= 599:
            raise ValueError(f"must be statuses from 100 to 599, each range low-high, got {value!r}")
        ranges.append((first, last))
    return tuple(ranges)


class HealthCheck(_Model):
    """Active health checks: ``GET path`` on every target each ``interval`` seconds; with ``type: grpc``, the gRPC
    health protocol's ``Check`` call for ``service`` instead (``upstream/grpc_health.py``).

    >>> HealthCheck(path="/healthz").accepts(204)
    True

    A target is marked down after ``unhealthy_threshold`` failed checks in a row (no answer within ``timeout``, or a
    status outside ``expected_status``; for gRPC, anything but ``SERVING``) and up again after ``healthy_threshold``
    good ones.
    """

    type: Literal["http", "grpc"] = "http"
    path: str = Field("", validate_default=True)  # required for type http, refused for grpc
    service: str = ""  # type grpc: the HealthCheckRequest's service ("": the server as a whole)
    interval: float = Field(10.0, gt=0)
    timeout: float = Field(5.0, gt=0)
    unhealthy_threshold: int = Field(3, ge=1)
    healthy_threshold: int = Field(2, ge=1)
    expected_status: str = "200-399"

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str, info: ValidationInfo) -> str:
        grpc = info.data.get("type") == "grpc"
        if not value:
            if not grpc:
                raise PydanticCustomError("missing", "Field required")  # as before type existed
            return value
        if grpc:
            raise ValueError("only for HTTP checks (a gRPC check calls grpc.health.v1.Health/Check)")
        if not value.startswith("/") or not value.isascii() or any(c.isspace() or c == "#" for c in value):
            raise ValueError(f"must be an ASCII path starting with '/', got {value!r}")
        return value

    @field_validator("service")
    @classmethod
    def _check_service(cls, value: str, info: ValidationInfo) -> str:
        if value and info.data.get("type") != "grpc":
            raise ValueError("only for type: grpc")
        return value

    @field_validator("expected_status", mode="before")
    @classmethod
    def _check_status(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            _status_ranges(value)
            return ",".join(part.replace(" ", "") for part in value.split(","))
        return value

    @property
    def expected_statuses(self) -> tuple[tuple[int, int], ...]:
        """``expected_status`` as inclusive ranges: ``"200-299,404"`` gives ``((200, 299), (404, 404))``."""
        return _status_ranges(self.expected_status)

    def accepts(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.expected_statuses)


class OutlierDetection(_Model):
    """Passive health: a target that fails ``consecutive_failures`` requests in a row is ejected for a while.

    >>> OutlierDetection().max_ejection_percent
    50.0

    The ejection lasts ``base_ejection_time`` times the number of times it was ejected, at most
    ``max_ejection_time`` (Envoy's names and defaults); at most ``max_ejection_percent`` of the targets are out at
    once (50 by default, where Envoy says 10: with fewer than ten targets 10% would eject none; see health_state.py).
    """

    consecutive_failures: int = Field(5, ge=1)
    base_ejection_time: float = Field(30.0, gt=0)
    max_ejection_time: float = Field(300.0, gt=0)
    max_ejection_percent: float = Field(50.0, ge=0, le=100)


# A request_buffering route's body limit when neither it nor the server gives one: the body is spooled to a temporary
# file, so it needs a bound (nginx's client_max_body_size default, 1 MiB). Streamed routes have none by default.
BUFFERED_BODY_LIMIT = 1024 * 1024
# The slow-client defaults (server.request_prebuffer_bytes, response_buffer_memory_bytes, response_buffer_file_bytes),
# named so that proxy/http.py's ForwardOptions takes them without building a ServerConfig (and its validator) in a
# worker handed the manager's config (tests/test_lazy_imports.py).
REQUEST_PREBUFFER_BYTES = 64 * 1024
RESPONSE_BUFFER_MEMORY_BYTES = 64 * 1024
RESPONSE_BUFFER_FILE_BYTES = 16 * 1024 * 1024

RETRY_ON_CONDITIONS = ("connect_error", "timeout", "reset")


def _retry_on_entry(value: object) -> str | int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 400 <= value <= 599:
            return value
        raise ValueError(f"a status to retry on must be from 400 to 599, got {value}")
    if isinstance(value, str) and value in RETRY_ON_CONDITIONS:
        return value
    known = ", ".join(RETRY_ON_CONDITIONS)
    raise ValueError(f"unknown retry condition {value!r} (known: {known}, or a status from 400 to 599)")


RetryOn = Annotated[str | int, BeforeValidator(_retry_on_entry)]


class Backoff(_Model):
    """Fully jittered exponential backoff between tries: ``random(0, min(max, base * 2**try))`` seconds."""

    base: float = Field(0.025, gt=0)
    max: float = Field(0.25, gt=0)

    @model_validator(mode="after")
    def _check_order(self) -> Backoff:
        if self.max < self.base:
            raise ValueError(f"max ({self.max:g}) must be at least base ({self.base:g})")
        return self


class RetryPolicy(_Model):
    """When a failed try is repeated. The default: one retry, on connection errors only.

    >>> RetryPolicy(max_retries=2, retry_on=["connect_error", 503]).retry_on
    ('connect_error', 503)

    ``retry_on`` takes ``connect_error``, ``timeout``, ``reset`` and status codes. ``non_idempotent`` allows
    retrying POST, PATCH, LOCK after the request was sent. At most ``budget_percent`` of the active requests
    may be retries, but ``min_retry_concurrency`` retries are always allowed (Envoy's retry budget). A request body
    that was already sent is replayed on a retry only if it fit in ``replay_buffer_bytes``; larger bodies are never
    buffered for a retry, so their requests are not retried once the body started to go out.
    """

    max_retries: int = Field(1, ge=0)
    retry_on: tuple[RetryOn, ...] = ("connect_error",)
    per_try_timeout: float | None = Field(None, gt=0)
    backoff: Backoff = Field(default_factory=Backoff)
    budget_percent: float = Field(20.0, ge=0, le=100)
    min_retry_concurrency: int = Field(3, ge=0)
    non_idempotent: bool = False
    replay_buffer_bytes: int = Field(65536, ge=0)


class CircuitBreakerConfig(_Model):
    """Envoy's circuit-breaking thresholds for one upstream, across its targets (``policies/breaker.py``).

    >>> CircuitBreakerConfig(max_pending_requests=64).max_requests
    1024

    Over a threshold a request is answered 503 ``upstream_overflow`` at once, with ``x-fastgate-overflow`` naming
    it. Absent (the default), nothing is counted and requests wait for a connection as the pool decides.
    """

    max_connections: int = Field(1024, ge=1)
    max_pending_requests: int = Field(1024, ge=0)
    max_requests: int = Field(1024, ge=1)
    max_retries: int = Field(3, ge=0)


class UpstreamHttp2(_Model):
    """How an ``h2``/``h2c`` upstream's connections are used (``upstream/h2/``).

    >>> UpstreamHttp2(max_concurrent_streams=50).keepalive_interval
    30.0

    A connection takes streams up to the smaller of ``max_concurrent_streams`` and the peer's
    SETTINGS_MAX_CONCURRENT_STREAMS; an idle connection is pinged every ``keepalive_interval`` seconds (``None``:
    never) and closed when the PING is not answered in time.
    """

    max_concurrent_streams: int = Field(100, ge=1, le=2**31 - 1)
    keepalive_interval: float | None = Field(30.0, gt=0)


UpstreamProtocol = Literal["http1", "h2c", "h2"]


Balancer = Literal["round_robin", "least_request", "random", "consistent_hash"]


class UpstreamConfig(_Model):
    """One upstream service: where it is (one ``url`` or several ``targets``) and how we talk to it.

    >>> UpstreamConfig(url="http://127.0.0.1:9000/api").targets[0].weight
    1
    >>> UpstreamConfig(targets=[{"url": "http://a:9000", "weight": 3}, {"url": "http://b:9000"}]).host
    'a'

    ``scheme``, ``host``, ``port``, ``authority`` and ``path_prefix`` are the first target's.
    """

    url: str | None = None
    targets: tuple[UpstreamTarget, ...] = Field((), min_length=1)
    balancer: Balancer = "round_robin"
    hash_on: str | None = None
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection | None = None
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    limits: PoolLimits = Field(default_factory=PoolLimits)
    circuit_breaker: CircuitBreakerConfig | None = None
    transport: Literal["fastgate", "httpx"] = "fastgate"
    ca_file: str | None = None
    preserve_host: bool = True
    forwarded: bool = False
    # The response head (status line, headers, interim 1xx responses) may not grow past this: an upstream that
    # streams header lines would otherwise grow the process until the read timeout. Then 502, as nginx does.
    max_response_header_bytes: int = Field(65536, ge=1024)
    websocket: WebSocketOptions = Field(default_factory=WebSocketOptions)
    # Declared last: the protocol's check reads the URLs and the transport validated before it.
    protocol: UpstreamProtocol = "http1"
    http2: UpstreamHttp2 = Field(default_factory=UpstreamHttp2)

    @field_validator("protocol")
    @classmethod
    def _check_protocol(cls, value: UpstreamProtocol, info: ValidationInfo) -> UpstreamProtocol:
        if value == "http1":
            return value
        if info.data.get("transport") == "httpx":
            raise ValueError(f"{value} needs transport: fastgate (the httpx transport speaks HTTP/1.1 here)")
        urls = [info.data["url"]] if info.data.get("url") else [t.url for t in info.data.get("targets") or ()]
        wanted = "https" if value == "h2" else "http"
        for url in urls:
            if urlsplit(url).scheme != wanted:
                how = "h2 is HTTP/2 over TLS" if value == "h2" else "h2c is HTTP/2 over plain TCP"
                raise ValueError(f"{value} needs {wanted}:// URLs ({how}), got {safe_url(url)!r}")
        return value

    @field_validator("ca_file")
    @classmethod
    def _check_ca_file(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no such file: {value!r}")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else _valid_url(value)

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, value: tuple[UpstreamTarget, ...]) -> tuple[UpstreamTarget, ...]:
        seen: dict[tuple[str, str, int, bytes], int] = {}
        for index, target in enumerate(value):
            key = (target.scheme, target.host.lower(), target.port, target.path_prefix)
            if key in seen:
                first = seen[key]
                raise ValueError(
                    f"targets[{index}] repeats targets[{first}] ({safe_url(target.url)}); raise its weight instead"
                )
            seen[key] = index
        return value

    @field_validator("hash_on")
    @classmethod
    def _check_hash_on(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("balancer") != "consistent_hash":
            raise ValueError("only used by balancer: consistent_hash")
        kind, sep, name = value.partition(":")
        if value == "client_ip":
            return value
        if sep and kind == "header" and _TOKEN.fullmatch(name):
            return f"header:{name.lower()}"
        if sep and kind == "cookie" and _TOKEN.fullmatch(name):
            return value
        raise ValueError(f"must be header:NAME, cookie:NAME or client_ip, got {value!r}")

    @model_validator(mode="after")
    def _one_address_form(self) -> UpstreamConfig:
        # Decided by value, not by which keys were written (a dump writes them all): a given `targets` has at least
        # one entry (min_length), so an empty one was not given.
        if self.url is not None and self.targets:
            raise ValueError("give either url (one target) or targets, not both")
        if self.url is None and not self.targets:
            raise ValueError("needs url (one target) or targets")
        if self.url is not None:
            # The one-target form is the list of one: runtime code reads `targets` whatever the file said. The
            # serializer below leaves it out again, so a dumped config validates back to an equal one.
            object.__setattr__(self, "targets", (UpstreamTarget(url=self.url),))
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.url is not None:
            data.pop("targets", None)
        return data

    @property
    def hash_source(self) -> tuple[Literal["header", "cookie", "client_ip"], str]:
        """What ``consistent_hash`` hashes: ``("header", "x-user")``, ``("cookie", "sid")`` or ``("client_ip", "")``."""
        kind, _, name = (self.hash_on or "client_ip").partition(":")
        if kind == "header":
            return ("header", name)
        if kind == "cookie":
            return ("cookie", name)
        return ("client_ip", "")

    @property
    def scheme(self) -> str:
        return self.targets[0].scheme

    @property
    def host(self) -> str:
        return self.targets[0].host

    @property
    def port(self) -> int:
        return self.targets[0].port

    @property
    def path_prefix(self) -> bytes:
        """The first target's path without a trailing slash: ``/api/`` and ``/api`` both give ``b"/api"``."""
        return self.targets[0].path_prefix

    @property
    def authority(self) -> bytes:
        return self.targets[0].authority

    @property
    def target(self) -> str:
        """The first target's ``host:port``."""
        return self.targets[0].address


def _route_path(value: str, key: str) -> str:
    """A route's ``prefix`` or ``path``: ASCII, starting with '/', in the normal form requests are matched in."""
    if not value.startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    if not value.isascii() or any(char.isspace() or char in "?#" or ord(char) < 32 for char in value):
        raise ValueError(f"must be an ASCII path without spaces, '?' or '#' (percent-encode the rest), got {value!r}")
    try:
        normal = normalize_path(value.encode("ascii")).decode("ascii")
    except PathAboveRoot:
        raise ValueError(f"climbs above '/': {value!r}") from None
    if normal != value:
        raise ValueError(f"requests are matched on the normalised path, so write {key}: {normal!r}, not {value!r}")
    return value


def _compile(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"does not compile: {exc}") from None


class Rewrite(_Model):
    """How a route changes the path it forwards: ``{regex, replacement}`` or a fixed ``{path}``; the query is kept.

    >>> Rewrite(regex="^/old/(.*)", replacement=r"/new/\\1").apply(b"/old/x")
    b'/new/x'
    """

    regex: str | None = None
    replacement: str | None = None
    path: str | None = None

    @field_validator("regex")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value

    @field_validator("replacement", "path")
    @classmethod
    def _check_chars(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not _REWRITE_CHARS.fullmatch(value) or (info.field_name == "path" and "\\" in value):
            raise ValueError(f"must be ASCII path characters (no spaces, '?' or '#'), got {value!r}")
        if info.field_name == "path" and not value.startswith("/"):
            raise ValueError(f"must start with '/', got {value!r}")
        regex = info.data.get("regex")
        if info.field_name == "replacement" and regex is not None:
            try:
                _compile(regex).sub(value, "")  # compiles the template: bad group references fail here
            except re.error as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_form(self) -> Rewrite:
        if self.path is not None and self.regex is None and self.replacement is None:
            return self
        if self.path is None and self.regex is not None and self.replacement is not None:
            return self
        raise ValueError("give {regex, replacement} or {path}")

    def apply(self, path: bytes) -> bytes:
        """The rewritten path; a result that does not start with '/' gets one."""
        if self.path is not None:
            return self.path.encode("ascii")
        assert self.regex is not None and self.replacement is not None
        result = _compile_cached(self.regex).sub(self.replacement, path.decode("latin-1")).encode("latin-1")
        return result if result.startswith(b"/") else b"/" + result


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compile_cached(regex: str) -> re.Pattern[str]:
    pattern = _PATTERNS.get(regex)
    if pattern is None:
        pattern = _PATTERNS[regex] = re.compile(regex)
    return pattern


class HeaderRules(_Model):
    """Header changes on one hop: ``set`` replaces (or adds), ``add`` appends, ``remove`` drops; names lower-cased.

    >>> HeaderRules(set={"X-A": "1"}, remove=["Server"]).remove
    ('server',)
    """

    set: dict[HeaderName, HeaderValue] = {}
    add: dict[HeaderName, HeaderValue] = {}
    remove: tuple[HeaderName, ...] = ()

    @model_validator(mode="after")
    def _check_protected(self) -> HeaderRules:
        for key, names in (("set", self.set), ("add", self.add), ("remove", self.remove)):
            for name in names:
                if name in _PROTECTED_HEADERS:
                    raise ValueError(f"{key}: {name} is a framing or hop-by-hop header; fastgate manages it")
        return self


class PluginSpec(_Model):
    """A plugin on a route: ``use`` is an import path ``pkg.mod:Name`` or a built-in name.

    >>> PluginSpec(use="mypkg.auth:TokenCheck", options={"realm": "api"})  # doctest: +SKIP
    """

    use: str
    options: dict[str, Any] = {}

    @field_validator("use")
    @classmethod
    def _check_use(cls, value: str) -> str:
        resolve_plugin(value)  # the one place user code is imported at load time, so a typo fails `fastgate check`
        return value


def _plugin_entry(value: object) -> object:
    return {"use": value} if isinstance(value, str) else value


class RouteTimeouts(_Model):
    """Per-route overrides of the upstream's :class:`Timeouts`: only the keys given replace the upstream's.

    >>> RouteTimeouts(read=5).over(Timeouts()).read
    5.0
    """

    connect: float | None = Field(None, gt=0)
    read: float | None = Field(None, gt=0)
    write: float | None = Field(None, gt=0)
    pool: float | None = Field(None, gt=0)
    stream_idle: float | None = Field(None, gt=0)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if key in self.model_fields_set}  # unset != null

    def over(self, base: Timeouts) -> Timeouts:
        return base.model_copy(update={key: getattr(self, key) for key in self.model_fields_set})


def _method(value: object) -> object:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(f"not an HTTP method: {value!r}")
    return value.upper()


def _host_pattern(value: str) -> str:
    host = value.lower().removesuffix(".")
    if _IPV6.fullmatch(host):
        return host
    if ":" in host:
        raise ValueError(f"hosts are compared without the port: write {host.rpartition(':')[0]!r}, not {value!r}")
    labels = host.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if not labels:
            raise ValueError("'*' alone is no host: leave host out to match every host")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"must be a host name, optionally with one leading '*.' label, got {value!r}")
    return host


def _period(value: object) -> object:
    return parse_period(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else value


class RateLimitConfig(_Model):
    """A route's rate limit: ``burst`` requests at once, then ``rate`` per ``per``, counted per ``key``.

    >>> RateLimitConfig(rate=100, per="1s", burst=50, key="header:x-api-key,client_ip").policy().interval
    10000

    ``per`` is a duration (``"1s"``, ``"500ms"``, ``"1m"``, ``"1h"``) or seconds; ``burst`` defaults to ``rate``.
    ``key``: ``client_ip``, ``header:NAME``, ``route``, ``identity``, or several joined by ``,``; a missing header or
    identity counts under the client IP. ``store: memory`` is per worker process (N workers: N times looser);
    ``store: redis`` shares the limit through the top-level ``redis``. See docs/security.md.
    """

    rate: StrictInt = Field(ge=1)
    per: Annotated[float, BeforeValidator(_period)] = 1.0
    burst: StrictInt | None = Field(None, ge=1)
    key: str = "client_ip"
    store: Literal["memory", "redis"] = "memory"

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        return ",".join(str(part) for part in parse_key(value))

    @model_validator(mode="after")
    def _check_policy(self) -> RateLimitConfig:
        self.policy()  # rates finer than the limiter resolves fail here, with the reason
        return self

    def policy(self, name: str = "default") -> RateLimitPolicy:
        """The pure policy this config describes; ``name`` labels the RateLimit header fields."""
        return RateLimitPolicy(rate=self.rate, period=self.per, burst=self.burst or self.rate, name=name)

    @property
    def key_parts(self) -> tuple[KeyPart, ...]:
        return parse_key(self.key)


class RedisConfig(_Model):
    """The Redis that ``store: redis`` rate limits share: every worker and every gateway instance on it.

    >>> RedisConfig(url="redis://127.0.0.1:6379/0", on_error="deny").timeout
    0.02

    ``on_error`` decides while Redis fails or is slower than ``timeout`` seconds per decision (time our event loop
    was too busy to read the answer is not counted; see ``stores.LagAwareDeadline``): ``allow`` lets
    requests through (fail open), ``deny`` answers 429 (fail closed). Redis is tried again ``retry_interval`` seconds
    after a failure. ``max_connections`` bounds the pool of each worker.
    """

    url: str
    on_error: Literal["allow", "deny"] = "allow"
    timeout: float = Field(0.02, gt=0, le=10)
    retry_interval: float = Field(0.5, ge=0)
    max_connections: int = Field(64, ge=1)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {safe_url(value)!r}")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError(f"a unix:// URL needs a socket path, got {safe_url(value)!r}")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError(f"has no host: {safe_url(value)!r}")
        return value


class RouteConfig(_Model):
    """Which requests go to ``upstream``, and what changes on the way. See docs/config.md for precedence.

    >>> RouteConfig(host="*.example.com", prefix="/api", methods=["get"], upstream="api").methods
    ('GET',)

    A route matches with one of ``prefix`` (the default, ``/``), ``path`` (exact) or ``regex`` (searched in the
    normalised path), and every one of ``host``, ``methods``, ``headers`` and ``query`` it gives.
    """

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # the route label in metrics and logs
    host: str | None = None
    prefix: str | None = None
    path: str | None = None
    regex: str | None = None
    methods: tuple[Annotated[str, BeforeValidator(_method)], ...] | None = None
    headers: dict[HeaderName, HeaderValue] | None = None
    query: dict[str, HeaderValue] | None = None
    upstream: str
    strip_prefix: bool = False
    rewrite: Rewrite | None = None
    request_headers: HeaderRules = Field(default_factory=HeaderRules)
    response_headers: HeaderRules = Field(default_factory=HeaderRules)
    timeouts: RouteTimeouts = Field(default_factory=RouteTimeouts)
    retries: RetryPolicy | None = None
    plugins: tuple[Annotated[PluginSpec, BeforeValidator(_plugin_entry)], ...] = ()
    priority: int = 0
    request_buffering: bool = False
    rate_limit: RateLimitConfig | None = None
    # Given (even as null, for no limit), it replaces server.max_body_bytes for this route; see body_limit().
    max_body_bytes: int | None = Field(None, ge=0)
    grpc_web: bool = False  # translate gRPC-Web requests to gRPC and back (proxy/grpcweb.py)

    @model_validator(mode="before")
    @classmethod
    def _default_prefix(cls, data: Any) -> Any:
        if isinstance(data, dict) and all(data.get(key) is None for key in ("prefix", "path", "regex")):
            return {**data, "prefix": "/"}
        return data

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        return None if value is None else _host_pattern(value)

    @field_validator("prefix", "path")
    @classmethod
    def _check_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _route_path(value, str(info.field_name))

    @field_validator("regex")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            _compile(value)
        return value

    @field_validator("query")
    @classmethod
    def _check_query(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and "" in value:
            raise ValueError("a query parameter name may not be empty")
        return value

    @field_validator("strip_prefix")
    @classmethod
    def _check_strip(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("regex") is not None:
            raise ValueError("needs prefix or path: a regex route has no prefix to strip")
        return value

    @model_validator(mode="after")
    def _one_path_matcher(self) -> RouteConfig:
        given = [key for key in ("prefix", "path", "regex") if getattr(self, key) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of prefix, path or regex, not {' and '.join(given)}")
        return self

    def retry_policy(self, upstream: UpstreamConfig) -> RetryPolicy:
        """This route's ``retries`` when given (it replaces the upstream's policy whole), else the upstream's."""
        return self.retries if self.retries is not None else upstream.retries

    def body_limit(self, server: ServerConfig) -> int | None:
        """This route's ``max_body_bytes`` when it gives one (null included), else the server's; a
        ``request_buffering`` route that has neither gets :data:`BUFFERED_BODY_LIMIT` (it spools to disk)."""
        if "max_body_bytes" in self.model_fields_set:
            return self.max_body_bytes
        if server.max_body_bytes is None and self.request_buffering:
            return BUFFERED_BODY_LIMIT
        return server.max_body_bytes

    def effective_timeouts(self, upstream: UpstreamConfig) -> Timeouts:
        """The upstream's timeouts with this route's ``timeouts`` keys put over them."""
        return self.timeouts.over(upstream.timeouts)

    def resolved(self, upstream: UpstreamConfig, server: ServerConfig) -> RouteConfig:
        """This route with every value it inherits written into it, as :class:`GatewayConfig` keeps its routes.

        ``max_body_bytes`` becomes :meth:`body_limit`, ``timeouts`` every key of :meth:`effective_timeouts`, and
        ``retries`` :meth:`retry_policy`, each given explicitly. Whether a key was written (``model_fields_set``)
        is read here, once, while the file's own keys are known; a dump of the result says every decision, so
        validating it again (``fastgate run`` hands the config to its worker as JSON) resolves to an equal route
        with the same keys given, and nothing at request time depends on which keys a file happened to write.
        """
        update: dict[str, Any] = {}
        if "max_body_bytes" not in self.model_fields_set:
            update["max_body_bytes"] = self.body_limit(server)
        if self.timeouts.model_fields_set != set(RouteTimeouts.model_fields):
            update["timeouts"] = RouteTimeouts(**self.effective_timeouts(upstream).model_dump())
        if self.retries is None:
            update["retries"] = upstream.retries
        return self.model_copy(update=update) if update else self


class BodyRate(_Model):
    """The slowest request body accepted once ``grace_period`` seconds have passed (Kestrel's MinRequestBodyDataRate).

    >>> BodyRate(bytes_per_second=240, grace_period=5)
    """

    bytes_per_second: float = Field(240.0, gt=0)
    grace_period: float = Field(5.0, ge=0)


class TlsConfig(_Model):
    """HTTPS (and WSS) on the listener: a PEM certificate chain (leaf first) and its private key.

    >>> TlsConfig(cert_file="/etc/fastgate/cert.pem", key_file="/etc/fastgate/key.pem")  # doctest: +SKIP

    TLS 1.2 is the minimum version offered. The pair is loaded here, so a file that is missing, unreadable or not
    a matching certificate and key fails validation (exit 2), and again by
    :func:`fastgate.serving.tls.reload_certificates` on a reload.
    """

    # key_file first: cert_file's check loads the pair, so its error names server.tls.cert_file.
    key_file: str
    cert_file: str

    @field_validator("key_file")
    @classmethod
    def _check_key_file(cls, value: str) -> str:
        if not Path(value).is_file():
            raise ValueError(f"no such file: {value!r}")
        return value

    @field_validator("cert_file")
    @classmethod
    def _check_cert_file(cls, value: str, info: ValidationInfo) -> str:
        if not Path(value).is_file():
            raise ValueError(f"no such file: {value!r}")
        key_file = info.data.get("key_file")
        if key_file is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(value, key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"cannot load {value!r} with key_file {key_file!r} as a certificate chain and its private key "
                    f"({exc.strerror or exc})"
                ) from None
        return value


class Http2Config(_Model):
    """HTTP/2 to clients (``server.http2``): h2 by ALPN over TLS, h2c by prior knowledge on a plain listener.

    ``enabled: false`` answers an HTTP/2 preface with 505 and offers only ``http/1.1`` by ALPN. The settings are
    what each connection tells its client (RFC 9113 §6.5.2); a stream's window is opened only as its bytes are
    written upstream (docs/http2.md).
    """

    enabled: bool = True
    max_concurrent_streams: int = Field(100, ge=1, le=2**31 - 1)
    initial_stream_window_bytes: int = Field(1048576, ge=65535, le=2**31 - 1)
    initial_connection_window_bytes: int = Field(4194304, ge=65535, le=2**31 - 1)
    max_header_list_bytes: int = Field(65536, ge=1024, le=2**31 - 1)
    max_frame_bytes: int = Field(16384, ge=16384, le=16777215)


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
    # text: today's line; json: one object a line with stable field names (observability/access.py).
    access_log_format: Literal["text", "json"] = "text"
    graceful_timeout: float = Field(30.0, ge=0)
    # seconds a config retired by a reload keeps its WebSockets and streams (then 1001 / cut off): docs/config.md
    drain_timeout: float = Field(600.0, gt=0)
    max_header_bytes: int = Field(65536, ge=1024)
    max_header_field_bytes: int = Field(32768, ge=256)
    max_uri_bytes: int = Field(8192, ge=256)
    header_timeout: float | None = Field(10.0, gt=0)
    keepalive_timeout: float | None = Field(75.0, gt=0)
    send_timeout: float | None = Field(60.0, gt=0)
    min_request_body_rate: BodyRate | None = Field(default_factory=BodyRate)
    max_requests_per_connection: int | None = Field(1000, ge=1)
    max_connections: int | None = Field(10000, ge=1)
    # After an answer that leaves request bytes unread (an early 413, 401, 429...): FIN, then what the client still
    # sends is read and dropped until it closes, for at most lingering_time seconds in all, lingering_timeout without
    # a byte, and max_lingering_bytes (nginx's lingering close; 0 s closes at once, nginx's lingering_close off).
    lingering_time: float = Field(30.0, ge=0)
    lingering_timeout: float = Field(5.0, gt=0)
    max_lingering_bytes: int = Field(4 * 1024 * 1024, ge=0)
    underscores_in_headers: bool = False
    request_buffer_memory_bytes: int = Field(1024 * 1024, ge=0)
    # Slow clients hold no upstream connection (proxy/readahead.py, proxy/buffering.py; docs/security.md): a request
    # body is read up to this many bytes before a connection is taken (0: stream from the first byte, as Envoy)...
    request_prebuffer_bytes: int = Field(REQUEST_PREBUFFER_BYTES, ge=0)
    # ...and a response is read ahead of a client that falls behind: this much in memory, then this much in a
    # temporary file, then backpressure (both 0: no read-ahead, the upstream waits for the client).
    response_buffer_memory_bytes: int = Field(RESPONSE_BUFFER_MEMORY_BYTES, ge=0)
    response_buffer_file_bytes: int = Field(RESPONSE_BUFFER_FILE_BYTES, ge=0)
    # Request bodies over this many bytes get 413 (null: no limit, as Envoy and Traefik; see docs/security.md).
    max_body_bytes: int | None = Field(None, ge=0)
    # The client hop of WebSocket sessions (Uvicorn's ws_* settings); the upstream hop is UpstreamConfig.websocket.
    ws_client_max_size: int = Field(16 * 1024 * 1024, ge=1)
    ws_client_ping_interval: float | None = Field(20.0, gt=0)
    ws_client_ping_timeout: float | None = Field(20.0, gt=0)
    ws_per_message_deflate: bool = False
    # Collapse runs of '/' in the path routes are matched against (Envoy's merge_slashes); see proxy/paths.py.
    merge_slashes: bool = False
    # HTTPS and WSS on the listener (serving/tls.py); plain HTTP when absent.
    tls: TlsConfig | None = None
    # HTTP/2 to clients (http2/server.py, docs/http2.md): h2 by ALPN, h2c by prior knowledge.
    http2: Http2Config = Field(default_factory=Http2Config)
    # Peers whose X-Forwarded-For (and X-Real-IP, X-Forwarded-*, Forwarded) are believed (proxy/client_address.py).
    trusted_proxies: tuple[str, ...] = ()

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(network) for network in TrustedProxies(value).networks)


class TracingConfig(_Model):
    """OpenTelemetry spans exported over OTLP/HTTP; tracing is off when the ``tracing`` key is absent.

    >>> TracingConfig(otlp_endpoint="http://collector:4318", sample_ratio=0.1).sample_ratio
    0.1

    Unset keys fall back to the standard environment: ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` (default
    ``http://localhost:4318``), ``OTEL_TRACES_SAMPLER(_ARG)``. ``service_name`` defaults to ``OTEL_SERVICE_NAME``,
    else ``fastgate``. A ``sample_ratio`` applies to new traces; a client's sampled flag is followed.
    """

    otlp_endpoint: str | None = None
    service_name: str | None = None
    sample_ratio: float | None = Field(None, ge=0, le=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError(f"must be an http:// or https:// URL, got {safe_url(value)!r}")
        return value


class MetricsConfig(_Model):
    """Prometheus metrics (observability/metrics.py), served at ``/metrics``; on by default.

    >>> MetricsConfig(enabled=False).enabled
    False
    """

    enabled: bool = True


class AdminConfig(_Model):
    """The admin listener (health, readiness, config, upstreams, stats, reload, metrics); off when absent.

    >>> AdminConfig(listen="127.0.0.1:9901", token="s3cret").port
    9901

    ``listen`` is ``HOST:PORT`` (``[::1]:9901`` for IPv6) and may never be the proxy's port. ``token``: every admin
    request must then carry ``Authorization: Bearer <token>``. It must not be exposed beyond operators: see
    docs/operations.md.
    """

    listen: str
    token: str | None = Field(None, min_length=1)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"must be HOST:PORT with a port from 1 to 65535, got {value!r}")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class GatewayConfig(_Model):
    """A whole gateway: server settings, named upstreams and the routes to them."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    upstreams: dict[str, UpstreamConfig]
    routes: list[RouteConfig]
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tracing: TracingConfig | None = None
    redis: RedisConfig | None = None
    admin: AdminConfig | None = None

    @model_validator(mode="after")
    def _check_admin(self) -> GatewayConfig:
        if self.admin is not None and self.admin.port == self.server.port:
            raise ValueError(
                f"admin.listen: must not be the proxy's port {self.server.port} (the admin API is never on it)"
            )
        return self

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        if not self.routes:
            raise ValueError("routes: at least one route is required")
        labels = {str(index): index for index, route in enumerate(self.routes) if route.name is None}
        for index, route in enumerate(self.routes):
            if route.name is not None:
                other = labels.get(route.name)
                if other is not None:
                    taken = (
                        f"routes[{other}]'s name"
                        if self.routes[other].name
                        else f"the label of unnamed routes[{other}]"
                    )
                    raise ValueError(f"routes[{index}].name: {route.name!r} is already {taken}; names must be unique")
                labels[route.name] = index
        for index, route in enumerate(self.routes):
            if route.upstream not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none"
                raise ValueError(f"routes[{index}].upstream: unknown upstream {route.upstream!r} (known: {known})")
            if route.rate_limit is not None and route.rate_limit.store == "redis" and self.redis is None:
                raise ValueError(
                    f"routes[{index}].rate_limit.store: 'redis' needs a top-level redis: {{url: redis://host:6379/0}}"
                )
            for position, spec in enumerate(route.plugins):
                if spec.use == "rate_limit" and spec.options.get("store") == "redis" and self.redis is None:
                    raise ValueError(
                        f"routes[{index}].plugins[{position}].options.store: 'redis' needs a top-level redis: "
                        "{url: redis://host:6379/0}"
                    )
        return self

    @model_validator(mode="after")
    def _resolve_inheritance(self) -> GatewayConfig:
        # Once, here (after _check_references: every route's upstream exists): each route gets the values it
        # inherits from its upstream and the server written in (RouteConfig.resolved), so the config served is
        # one explicit form that a dump and a new validation give back unchanged (Envoy resolves its config the
        # same way before serving it). Nothing later asks which keys a file wrote.
        routes = [route.resolved(self.upstreams[route.upstream], self.server) for route in self.routes]
        object.__setattr__(self, "routes", routes)
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
            if part == "[key]":  # pydantic's marker for a bad dict key: the key itself is already in the path
                continue
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
    return build_config(read_config_data(path))


def read_config_data(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON config file's data, not validated yet (:class:`ConfigError` when it cannot be read)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    else:
        import yaml  # here only: a process that never reads a YAML file (a `fastgate proxy` worker) never loads it

        try:
            data = yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data
