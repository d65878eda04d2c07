"""gRPC semantics over the exchange core: which requests are gRPC, their deadline, and the gateway's own answers.
Pure, no I/O.

gRPC is HTTP/2 with ``content-type: application/grpc`` (or ``application/grpc+proto``, ``+json``...) and its status
in trailers (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md). When the gateway answers a gRPC
request itself (no route, refused by a plugin, upstream down, deadline passed), the answer is a gRPC one, never the
JSON body: a *Trailers-Only* response, HTTP 200 with ``grpc-status`` and ``grpc-message`` in its head and no body
(over HTTP/2, one HEADERS frame with END_STREAM). gRPC-Web (``application/grpc-web*``) is not gRPC here: a route
with ``grpc_web: true`` translates it (``proxy/grpcweb.py``) before the core sees it.

:func:`grpc_status_for` maps fastgate's errors by class first (issue 18's table), then by HTTP status as the gRPC
spec's "HTTP to gRPC status code mapping" does (doc/http-grpc-status-mapping.md), except that 429 is
``RESOURCE_EXHAUSTED`` (a rate limit, as Envoy's ``local_ratelimit`` answers gRPC) rather than the spec's
``UNAVAILABLE``.

``grpc-timeout`` (``<1-8 digits><H|M|S|m|u|n>``): a value that does not parse is ignored, as Envoy does
(``Grpc::Common::getGrpcTimeout`` yields no timeout); grpc-go's server refuses the call instead. fastgate passes
the header upstream unchanged (Envoy does too, unless ``grpc_timeout_header_offset`` is set).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from http import HTTPStatus

from ..exceptions import (
    FastgateError,
    Overloaded,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    RouteNotFound,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamOverflow,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# https://grpc.github.io/grpc/core/md_doc_statuscodes.html
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

GRPC_CONTENT_TYPE = b"application/grpc"

# By class, most specific first (a subclass before its base).
_BY_CLASS: tuple[tuple[type[FastgateError], int], ...] = (
    (RouteNotFound, UNIMPLEMENTED),
    (RateLimited, RESOURCE_EXHAUSTED),
    (UpstreamOverflow, RESOURCE_EXHAUSTED),  # a circuit breaker's threshold
    (RequestTooLarge, RESOURCE_EXHAUSTED),  # as gRPC answers a message over its receive limit
    (RequestTimeout, DEADLINE_EXCEEDED),
    (UpstreamConnectTimeout, UNAVAILABLE),  # nothing was sent: a connect failure
    (UpstreamTimeout, DEADLINE_EXCEEDED),
    (UpstreamConnectError, UNAVAILABLE),
    (UpstreamUnavailable, UNAVAILABLE),  # no healthy target, pool exhausted
    (Overloaded, UNAVAILABLE),
    (UpstreamError, UNAVAILABLE),  # a protocol error, the connection dropped: 502, UNAVAILABLE in the spec
)

# The gRPC spec's HTTP -> gRPC table (429: see the module docstring); any other status is UNKNOWN.
_BY_HTTP_STATUS = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    429: RESOURCE_EXHAUSTED,
    500: INTERNAL,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}

_TIMEOUT_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}

# grpc-message: percent-encode every byte outside printable ASCII, and '%' itself (PROTOCOL-HTTP2.md).
_UNRESERVED = frozenset(range(0x20, 0x7F)) - {ord("%")}
_MAX_MESSAGE_CHARS = 1024


def is_grpc(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request with these headers (names lowercase) is gRPC: ``application/grpc`` or
    ``application/grpc+<codec>`` (parameters allowed), not gRPC-Web.

    >>> is_grpc([(b"content-type", b"application/grpc+proto")]), is_grpc([(b"content-type", b"application/grpc-web")])
    (True, False)
    """
    for name, value in headers:
        if name == b"content-type":
            return is_grpc_type(value)
    return False


def is_grpc_type(value: bytes) -> bool:
    media = value.split(b";", 1)[0].strip().lower()
    return media == GRPC_CONTENT_TYPE or media.startswith(b"application/grpc+")


def header(headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> bytes | None:
    """The first value of ``wanted`` (lowercase) among ``headers``, or None."""
    for name, value in headers:
        if name == wanted:
            return value
    return None


def parse_timeout(value: bytes) -> float | None:
    """A ``grpc-timeout`` value in seconds; None when it does not parse (ignored, as Envoy does).

    >>> parse_timeout(b"250m"), parse_timeout(b"1S"), parse_timeout(b"123456789S"), parse_timeout(b"-1S")
    (0.25, 1.0, None, None)
    """
    if not 2 <= len(value) <= 9:
        return None
    digits, unit = value[:-1], value[-1]
    scale = _TIMEOUT_UNITS.get(unit)
    if scale is None or not digits.isdigit():  # isdigit on bytes: ASCII 0-9 only
        return None
    return int(digits) * scale


def encode_message(text: str) -> bytes:
    """``grpc-message``: the UTF-8 bytes percent-encoded outside printable ASCII (and ``%``).

    >>> encode_message("no route for /a.B/C: 100% ✓")
    b'no route for /a.B/C: 100%25 %E2%9C%93'
    """
    raw = text[:_MAX_MESSAGE_CHARS].encode("utf-8")
    return b"".join(bytes((byte,)) if byte in _UNRESERVED else b"%%%02X" % byte for byte in raw)


def decode_message(value: bytes) -> str:
    """The text of a percent-encoded ``grpc-message`` (bad escapes kept as they are, bad UTF-8 replaced)."""
    out = bytearray()
    index = 0
    while index < len(value):
        byte = value[index]
        if byte == 0x25 and _hex(value[index + 1 : index + 3]):
            out.append(int(value[index + 1 : index + 3], 16))
            index += 3
            continue
        out.append(byte)
        index += 1
    return out.decode("utf-8", "replace")


def _hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def grpc_status_for(exc: FastgateError) -> int:
    """The gRPC status of a gateway error: by class (issue 18's table), else by its HTTP status.

    >>> grpc_status_for(RouteNotFound("no route")), grpc_status_for(UpstreamTimeout("read"))
    (12, 4)
    """
    for cls, status in _BY_CLASS:
        if isinstance(exc, cls):
            return status
    return grpc_status_for_http(exc.status_code)


def grpc_status_for_http(status: int) -> int:
    """The gRPC spec's mapping of an HTTP status (429 aside, see the module docstring).

    >>> grpc_status_for_http(401), grpc_status_for_http(403), grpc_status_for_http(418)
    (16, 7, 2)
    """
    return _BY_HTTP_STATUS.get(status, UNKNOWN)


def trailers_only(
    status: int, message: str, request_id: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    """The head of a Trailers-Only answer (sent with HTTP status 200 and no body).

    ``extra``: more fields (a plugin's ``www-authenticate``, CORS headers, ``retry-after``); their framing
    headers and any ``content-type`` or ``grpc-*`` field are dropped.

    >>> trailers_only(14, "upstream down", b"r1")[1:3]
    [(b'grpc-status', b'14'), (b'grpc-message', b'upstream down')]
    """
    head = [(b"content-type", GRPC_CONTENT_TYPE), (b"grpc-status", b"%d" % status)]
    if message:
        head.append((b"grpc-message", encode_message(message)))
    head.append((b"x-request-id", request_id))
    for name, value in extra:
        name = name.lower()
        if name in _NOT_IN_TRAILERS_ONLY or name.startswith(b"grpc-"):
            continue
        head.append((name, value))
    return head


_NOT_IN_TRAILERS_ONLY = frozenset(
    {b"content-type", b"content-length", b"transfer-encoding", b"connection", b"x-request-id"}
)


def error_answer(exc: FastgateError, request_id: bytes) -> list[tuple[bytes, bytes]]:
    """The Trailers-Only head answering ``exc`` on a gRPC request (``exc.headers``, such as Retry-After, kept)."""
    return trailers_only(grpc_status_for(exc), exc.detail or exc.code, request_id, exc.headers)


def answer_message(status: int, body: bytes) -> str:
    """The ``grpc-message`` for a plugin's :class:`~fastgate.plugins.base.Answer` turned into a gRPC one: its JSON
    body's ``detail`` (fastgate's error shape, the auth plugins' refusals), else its short text, else the reason.

    >>> answer_message(401, b'{"error":"unauthorized","detail":"missing API key"}')
    'missing API key'
    """
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            for key in ("detail", "message", "error"):
                if isinstance(parsed.get(key), str) and parsed[key]:
                    return str(parsed[key])
        elif parsed is None and len(body) <= 200:
            text = body.decode("utf-8", "replace").strip()
            if text:
                return text
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def status_of(fields: Sequence[tuple[bytes, bytes]]) -> int | None:
    """The ``grpc-status`` among response fields (head or trailers, names in any case), None when absent or bad.

    >>> status_of([(b"Grpc-Status", b"5")]), status_of([(b"grpc-status", b"x")])
    (5, None)
    """
    for name, value in fields:
        if len(name) == 11 and name.lower() == b"grpc-status":
            value = value.strip()
            return int(value) if value.isdigit() and len(value) <= 3 else None
    return None
