"""The one "exchange finished" record: what the access log, the metrics and the tracer each read.

``forward_http`` and ``forward_websocket`` fill one :class:`ExchangeRecord` as the exchange goes and hand it to
``access.format_text``/``format_json``, ``Metrics.observe`` and ``ExchangeTrace.end`` in their ``finally``. The
fields are plain values (str, int, float) so each consumer formats without decoding bytes again.
"""

from __future__ import annotations

from dataclasses import dataclass

CLIENT_CLOSED_STATUS = 499  # nginx's code for "the client went away before the response was complete"


@dataclass(slots=True)
class ExchangeRecord:
    """One finished HTTP exchange or WebSocket session.

    >>> record = ExchangeRecord(route="0", upstream="api", method="GET", target="/x", status=200)
    >>> record.logged_status
    200

    ``status`` is what the client was answered (0 when nothing was), ``outcome`` a short note when the exchange
    did not end normally (``"client disconnected"``, ``"upstream_timeout: ..."``); for HTTP an outcome that starts
    with ``client`` is logged and counted as 499 (a WebSocket session keeps its 101). ``route`` is the route's
    name, or its index as a string, never the path. ``duration_s`` is seconds from the request's start to its
    last byte (for WebSocket: the session's end). ``grpc`` marks a gRPC request; ``grpc_status`` is the status
    its client was given (the upstream's, relayed from a Trailers-Only head or the trailers, or the gateway's own
    answer), None when the exchange ended without one.
    """

    route: str = ""
    upstream: str = ""
    upstream_address: str = ""
    method: str = "GET"
    target: str = ""
    http_version: str = "1.1"
    client: str = "-"
    status: int = 0
    bytes_sent: int = 0
    duration_s: float = 0.0
    request_id: str = "-"
    trace_id: str = ""
    retries: int = 0
    outcome: str = ""
    websocket: bool = False
    grpc: bool = False  # a gRPC request (content-type application/grpc*)
    grpc_status: int | None = None  # its grpc-status as the client got it (head or trailers); None: none seen

    @property
    def logged_status(self) -> int:
        """``status``, or 499 when an HTTP client went away first (today's access-log rule)."""
        if not self.websocket and self.outcome.startswith("client"):
            return CLIENT_CLOSED_STATUS
        return self.status


def route_label(index: int, name: str | None = None) -> str:
    """The ``route`` label of a route: its name when it has one, else its index in ``routes``.

    >>> route_label(0), route_label(3, "users")
    ('0', 'users')
    """
    return name or str(index)


def client_label(client: tuple[str, int] | list[object] | None) -> str:
    """``"ip:port"`` from an ASGI scope's ``client``, ``"-"`` when the server gives none."""
    return f"{client[0]}:{client[1]}" if client else "-"


# RFC 9110 section 9 plus PATCH (RFC 5789): the values a method label may take, besides "other".
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def method_label(method: str) -> str:
    """``method`` when it is a standard one, else ``"other"``: a client cannot grow the label set.

    >>> method_label("GET"), method_label("BREW")
    ('GET', 'other')
    """
    return method if method in STANDARD_METHODS else "other"
