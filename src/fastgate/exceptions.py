"""Every exception fastgate raises.

    FastgateError
      ConfigError                 bad configuration; the CLI prints it and exits 2
      ClientError                 4xx, raised before anything goes upstream
        BadRequest                400
        RouteNotFound             404
        HeadersTooLarge           431
      ClientDisconnected          the client went away; nothing is sent to it
      UpstreamError               carries the upstream name
        UpstreamConnectError      502 (refused, unreachable, DNS)
        UpstreamProtocolError     502 (malformed or truncated response, connection dropped)
        UpstreamUnavailable       503 (pool exhausted past its wait)
        UpstreamTimeout           504 (connect, read, write)

Each HTTP-facing class has a ``status_code`` and a stable ``code`` for the JSON error body
``{"error": code, "detail": text, "request_id": id}``.
"""

from __future__ import annotations


class FastgateError(Exception):
    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigError(FastgateError):
    """A configuration value is missing or wrong; ``str()`` is ``"<key path>: <problem>"``."""

    code = "config_error"


class ClientError(FastgateError):
    status_code = 400
    code = "bad_request"


class BadRequest(ClientError):
    pass


class RouteNotFound(ClientError):
    status_code = 404
    code = "route_not_found"


class HeadersTooLarge(ClientError):
    status_code = 431
    code = "headers_too_large"


class ClientDisconnected(FastgateError):
    """The downstream client closed its connection; there is nobody to answer."""

    status_code = 499
    code = "client_disconnected"


class UpstreamError(FastgateError):
    status_code = 502
    code = "upstream_error"

    def __init__(self, detail: str = "", upstream: str = "") -> None:
        super().__init__(detail)
        self.upstream = upstream


class UpstreamConnectError(UpstreamError):
    status_code = 502
    code = "upstream_connect_error"


class UpstreamProtocolError(UpstreamError):
    status_code = 502
    code = "upstream_protocol_error"


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"
