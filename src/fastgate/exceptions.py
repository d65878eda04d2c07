"""Every exception fastgate raises.

    FastgateError
      ConfigError                 bad configuration; the CLI prints it and exits 2
      ClientError                 4xx, raised before anything goes upstream
        BadRequest                400
        RouteNotFound             404
        RequestTimeout            408 (head not complete in time, request body too slow)
        RequestTooLarge           413 (a body over max_body_bytes)
        RateLimited               429 (with Retry-After and the RateLimit header fields)
        UriTooLong                414
        HeadersTooLarge           431
        VersionNotSupported       505
      Overloaded                  503 before any routing (too many client connections)
      ClientDisconnected          the client went away; nothing is sent to it
      UpstreamError               carries the upstream name and the target (host:port) that failed
        UpstreamConnectError      502 (refused, unreachable, DNS)
        UpstreamProtocolError     502 (malformed or truncated response, connection dropped)
        UpstreamUnavailable       503 (pool exhausted past its wait)
          UpstreamOverflow        503 (over a circuit_breaker threshold; x-fastgate-overflow names it)
        UpstreamTimeout           504 (connect, read, write)
          UpstreamConnectTimeout  504 (no connection within the connect timeout: nothing was sent)
        UpstreamRefused           the upstream's own non-101 answer to a WebSocket handshake, relayed as it is

Each HTTP-facing class has a ``status_code`` and a stable ``code`` for the JSON error body
``{"error": code, "detail": text, "request_id": id}``, and a ``close_code`` for a WebSocket that is already
open: 1008 policy (client errors), 1011 internal, 1013 try again later (unavailable, timeout), 1014 bad gateway.
"""

from __future__ import annotations


class FastgateError(Exception):
    status_code: int = 500
    code: str = "internal_error"
    close_code: int = 1011

    headers: tuple[tuple[bytes, bytes], ...] = ()
    """Extra response headers for the JSON error answer (``Retry-After``, ``WWW-Authenticate``, ``RateLimit``...)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigError(FastgateError):
    """A configuration value is missing or wrong; ``str()`` is ``"<key path>: <problem>"``."""

    code = "config_error"


class ClientError(FastgateError):
    status_code = 400
    code = "bad_request"
    close_code = 1008


class BadRequest(ClientError):
    pass


class RouteNotFound(ClientError):
    status_code = 404
    code = "route_not_found"


class HeadersTooLarge(ClientError):
    status_code = 431
    code = "headers_too_large"


class RequestTimeout(ClientError):
    status_code = 408
    code = "request_timeout"


class RequestTooLarge(ClientError):
    """A request body over ``max_body_bytes``: declared (Content-Length) or grown past it while streaming."""

    status_code = 413
    code = "payload_too_large"


class RateLimited(ClientError):
    """Over a route's rate limit: 429, and ``headers`` carry Retry-After, RateLimit-Policy and RateLimit.

    >>> RateLimited("rate limit exceeded", headers=[(b"retry-after", b"1")]).headers
    ((b'retry-after', b'1'),)
    """

    status_code = 429
    code = "rate_limited"

    def __init__(self, detail: str = "", headers: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]] = ()):
        super().__init__(detail)
        self.headers = tuple(headers)


class UriTooLong(ClientError):
    status_code = 414
    code = "uri_too_long"


class VersionNotSupported(ClientError):
    status_code = 505
    code = "http_version_not_supported"


class Overloaded(FastgateError):
    """The gateway refuses work it cannot take (a worker's client connection limit), before any routing."""

    status_code = 503
    code = "overloaded"
    close_code = 1013


class ClientDisconnected(FastgateError):
    """The downstream client closed its connection; there is nobody to answer."""

    status_code = 499
    code = "client_disconnected"


class UpstreamError(FastgateError):
    """An upstream failed. ``upstream`` is its configured name, ``target`` the address that failed.

    >>> exc = UpstreamConnectError("connection refused", "api", target="10.0.0.7:9000")
    >>> exc.upstream, exc.target
    ('api', '10.0.0.7:9000')

    ``target`` (``host:port``, empty when unknown) lets passive health checks blame one target of an upstream.
    """

    status_code = 502
    code = "upstream_error"
    close_code = 1014

    def __init__(self, detail: str = "", upstream: str = "", target: str = "") -> None:
        super().__init__(detail)
        self.upstream = upstream
        self.target = target


class UpstreamConnectError(UpstreamError):
    status_code = 502
    code = "upstream_connect_error"


class UpstreamProtocolError(UpstreamError):
    status_code = 502
    code = "upstream_protocol_error"


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    code = "upstream_unavailable"
    close_code = 1013


class UpstreamOverflow(UpstreamUnavailable):
    """Over one of an upstream's ``circuit_breaker`` thresholds: refused at once, never queued.

    >>> exc = UpstreamOverflow("max_pending_requests", "api", target="10.0.0.7:9000")
    >>> exc.threshold, exc.headers
    ('max_pending_requests', ((b'x-fastgate-overflow', b'max_pending_requests'),))
    """

    code = "upstream_overflow"

    def __init__(self, threshold: str, upstream: str = "", target: str = "", limit: int | None = None) -> None:
        over = f" ({limit})" if limit is not None else ""
        super().__init__(
            f"upstream {upstream or '?'} is over its circuit breaker's {threshold}{over}", upstream, target
        )
        self.threshold = threshold
        self.headers = ((b"x-fastgate-overflow", threshold.encode("ascii")),)


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"
    close_code = 1013


class UpstreamConnectTimeout(UpstreamTimeout):
    """No connection within the connect timeout: like a refused connection, nothing was sent, so a retry is safe."""


class UpstreamRefused(UpstreamError):
    """The upstream answered a WebSocket handshake with ``status_code`` instead of 101.

    >>> exc = UpstreamRefused("401 from upstream", "api", status=401, headers=[], body=b"login first")
    >>> exc.status_code, exc.body
    (401, b'login first')

    The client gets the same status, headers and body (see ``proxy/websocket.py``); under a server without the
    ASGI denial-response extension, a close with ``close_code``: 1008 for a 4xx, 1014 otherwise.
    """

    code = "upstream_refused"

    def __init__(
        self,
        detail: str,
        upstream: str,
        *,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        target: str = "",
    ) -> None:
        super().__init__(detail, upstream, target)
        self.status_code = status
        self.close_code = 1008 if 400 <= status < 500 else 1014
        self.headers = tuple(headers)
        self.body = body
