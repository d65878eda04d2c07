"""Response trailers: which upstream trailer fields a client may get, and whether it asked for any. Pure, no I/O.

How this works
--------------
An upstream's trailer section (the fields after a chunked body, RFC 9112 §7.1.2) is never merged into the response
head: by the time it arrives the head is gone, and promoting it would let the end of a body set a cookie or a
framing header the client trusted at the start (RFC 9110 §6.5.1). It is kept apart (``UpstreamResponse.trailers``,
bounded by the upstream's ``max_response_header_bytes``) and relayed as trailers only to a client that said it
accepts them (``TE: trailers``, RFC 9110 §10.1.4) through a server that can send them; everyone else gets none.

What is relayed passes :func:`response_trailers`: fields that cannot be evaluated after the content (RFC 9110
§6.5.1: framing, routing, authentication, request modifiers, response controls, content format) and connection
options are dropped. The list is Go's ``httpguts.ValidTrailerHeader`` (which net/http and x/net/http2 apply), with
``If-*``, plus ``Set-Cookie`` (state the client must see before the content; browsers read it from the head only),
``Upgrade``, ``Location``, ``Retry-After``, ``Vary``, ``Expires``, ``Age``, ``Date``, ``Content-Language`` and
``Content-Location`` (response controls and content metadata), and every name the response head's ``Connection``
listed. gRPC's ``grpc-status``, ``grpc-message``, ``grpc-status-details-bin`` and custom metadata pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Lower-case names never relayed as trailers.
DROPPED_TRAILERS = frozenset(
    {
        # Go's httpguts.badTrailer
        b"authorization",
        b"cache-control",
        b"connection",
        b"content-encoding",
        b"content-length",
        b"content-range",
        b"content-type",
        b"expect",
        b"host",
        b"keep-alive",
        b"max-forwards",
        b"pragma",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"range",
        b"realm",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"www-authenticate",
        # ours: state, hop-by-hop, response controls and content metadata a client acts on before the content
        b"set-cookie",
        b"upgrade",
        b"location",
        b"retry-after",
        b"vary",
        b"expires",
        b"age",
        b"date",
        b"content-language",
        b"content-location",
    }
)


def response_trailers(
    raw: Iterable[tuple[bytes, bytes]], head: Sequence[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    """The trailer fields of ``raw`` (names in any case) a client may get, names lower-cased, order kept.

    ``head`` is the upstream's response head: the names its ``Connection`` header lists are hop-by-hop here too.

    >>> response_trailers([(b"Grpc-Status", b"0"), (b"Set-Cookie", b"session=attacker")])
    [(b'grpc-status', b'0')]
    """
    connection: set[bytes] = set()
    for name, value in head:
        if len(name) == 10 and name.lower() == b"connection":
            connection.update(token.strip().lower() for token in value.split(b","))
    out: list[tuple[bytes, bytes]] = []
    for name, value in raw:
        name = name.lower()
        if name in DROPPED_TRAILERS or name.startswith(b"if-") or name in connection:
            continue
        out.append((name, value))
    return out


def accepts_trailers(values: Iterable[bytes]) -> bool:
    """Whether the ``TE`` header values ``values`` accept trailers (the ``trailers`` token, any case, RFC 9110 §10.1.4).

    >>> accepts_trailers([b"gzip, Trailers"])
    True
    """
    for value in values:
        for token in value.split(b","):
            if token.split(b";", 1)[0].strip().lower() == b"trailers":
                return True
    return False
