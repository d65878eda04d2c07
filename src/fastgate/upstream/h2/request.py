"""The request head as HTTP/2 header fields, and the response head back; pure.

RFC 9113 §8.2.2: connection-specific fields (``connection``, ``keep-alive``, ``proxy-connection``,
``transfer-encoding``, ``upgrade``) must not be sent, and ``te`` only as ``trailers``; names are lowercase.
The Host header becomes ``:authority`` (§8.3.1) and is not sent besides it.
"""

from __future__ import annotations

from ..transport import CHUNKED, UpstreamRequest

CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})


def request_headers(
    request: UpstreamRequest, *, scheme: bytes, path_prefix: bytes, default_authority: bytes
) -> list[tuple[bytes, bytes]]:
    """The HEADERS of ``request``: pseudo-header fields first, then its fields, lowercased and filtered.

    >>> request_headers(UpstreamRequest(b"GET", b"/x", [(b"host", b"api")]), scheme=b"http", path_prefix=b"/v1",
    ...                 default_authority=b"10.0.0.1:80")[:4]
    [(b':method', b'GET'), (b':scheme', b'http'), (b':authority', b'api'), (b':path', b'/v1/x')]
    """
    authority: bytes | None = None
    fields: list[tuple[bytes, bytes]] = []
    for name, value in request.headers:
        name = name.lower()
        if name == b"host":
            if authority is None:
                authority = value
            continue
        if name in CONNECTION_SPECIFIC or name == b"content-length":
            continue
        if name == b"te" and value.strip().lower() != b"trailers":
            continue
        fields.append((name, value))
    length = request.body_length
    if length is not None and length != CHUNKED:
        fields.append((b"content-length", b"%d" % length))
    return [
        (b":method", request.method),
        (b":scheme", scheme),
        (b":authority", authority or default_authority),
        (b":path", path_prefix + request.target),
        *fields,
    ]


def response_head(headers: list[tuple[bytes, bytes]]) -> tuple[int, list[tuple[bytes, bytes]]]:
    """``(status, fields)`` of a response HEADERS block (the codec has validated it: one ``:status``, first).

    >>> response_head([(b":status", b"204"), (b"server", b"x")])
    (204, [(b'server', b'x')])
    """
    status = 0
    fields = []
    for name, value in headers:
        if name == b":status":
            status = int(value)
        elif not name.startswith(b":"):
            fields.append((name, value))
    return status, fields
