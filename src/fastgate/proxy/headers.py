"""Header rules for both directions, on raw ``(name, value)`` byte pairs. Pure functions, no I/O.

Requests: hop-by-hop headers go (RFC 9110 §7.6.1: Connection and every header it names, Keep-Alive,
Proxy-Connection, TE, Transfer-Encoding, Upgrade; and Trailer), except ``TE: trailers``, which goes on as just that
when the client's TE has the ``trailers`` token (as Envoy does; ``RequestHead.trailers``: the proxy takes it off again
when it cannot relay trailers, ``proxy/trailers.py``), X-Forwarded-For is appended to,
X-Forwarded-Proto/-Host are set from what we saw, Via is added, and message framing is checked: a request that
could be read two ways (Content-Length with Transfer-Encoding, an obfuscated Transfer-Encoding, a bad
Content-Length) is refused with 400 before anything goes upstream (RFC 9112 §6.3, request smuggling).

Trust (docs/security.md, "Trusted proxies"): the headers an upstream may believe never come from a client as it
sent them. ``x-fastgate-identity`` and every header an auth plugin of the config asserts (``strip``) are removed
from every request, as Envoy removes ``x-envoy-*``. From a peer outside ``server.trusted_proxies`` (everyone, by
default) X-Real-IP, X-Forwarded-Port and X-Forwarded-Prefix are removed, X-Forwarded-Proto/-Host are replaced by
ours, and a client's Forwarded goes on only with ``forwarded: true``, followed by our element. From a trusted peer
they pass on as they came (X-Forwarded-Proto/-Host set by us only when absent, as Traefik does), and the client's
address is read from X-Forwarded-For (``proxy/client_address.py``). All of it is one lookup per header in the one
walk over the headers below; with no trusted proxies nothing else is done.
Responses: the same hop-by-hop rules; everything else, Set-Cookie repeats included, passes unchanged.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..config import ServerConfig, UpstreamConfig
from ..exceptions import BadRequest, HeadersTooLarge
from ..upstream.transport import CHUNKED
from .client_address import TrustedProxies, forwarded_client
from .trailers import accepts_trailers

HOP_BY_HOP_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade", b"trailer"}
)
VIA = b"1.1 fastgate"
VIA_H2 = b"2.0 fastgate"  # RFC 9110 §7.6.3: the protocol the request was received with (an HTTP/2 client's)
IDENTITY_HEADER = b"x-fastgate-identity"
# Set by a proxy in front: believed from a trusted peer only (X-Forwarded-Proto/-Host are ours to set otherwise).
PROXY_HEADERS = frozenset(
    {b"x-real-ip", b"x-forwarded-port", b"x-forwarded-prefix", b"x-forwarded-proto", b"x-forwarded-host"}
)

# What the request loop does with a header it must look at; every other header is copied as it is.
_DROP, _CONNECTION, _LENGTH, _TE, _HOST, _XFF, _XF_OTHER, _VIA, _FORWARDED, _REQUEST_ID, _PROXY, _ACCEPT_TE = range(12)
_BASE_RULES = {
    **dict.fromkeys(HOP_BY_HOP_HEADERS - {b"connection", b"transfer-encoding", b"te"}, _DROP),
    b"te": _ACCEPT_TE,
    b"expect": _DROP,  # the server in front of us already answered 100-continue when we read the body
    b"connection": _CONNECTION,
    b"content-length": _LENGTH,
    b"transfer-encoding": _TE,
    b"host": _HOST,
    b"x-forwarded-for": _XFF,
    **dict.fromkeys(PROXY_HEADERS, _XF_OTHER),
    b"via": _VIA,
    b"forwarded": _FORWARDED,
    b"x-request-id": _REQUEST_ID,
}
# What a header name may never be made to mean by ``strip``: the message's framing and its Host.
_FRAMING_RULES = (_CONNECTION, _LENGTH, _TE, _HOST)


def request_rules(strip: Iterable[bytes] = (), *, trusting: bool = False) -> dict[bytes, int]:
    """The request loop's table: the base rules, ``strip`` (lower-case names) and ``x-fastgate-identity`` dropped,
    and with ``trusting`` the proxy headers kept aside for a trusted peer instead of dropped."""
    rules = dict(_BASE_RULES)
    if trusting:
        rules.update(dict.fromkeys(PROXY_HEADERS, _PROXY))
    for name in (IDENTITY_HEADER, *strip):
        if rules.get(name) not in _FRAMING_RULES:
            rules[name] = _DROP
    return rules


_REQUEST_RULES = request_rules()
_TRUSTING_RULES = request_rules(trusting=True)


@dataclass(frozen=True, slots=True)
class HeaderRules:
    """How request heads to one upstream are rewritten (``request_headers``'s settings), built once from config.

    >>> rules = HeaderRules.from_config(UpstreamConfig(url="http://127.0.0.1:9000/api"))
    >>> head = rules.apply(scope["headers"], client=b"10.0.0.1", scheme=b"http")

    ``strip``: header names removed from every request (the config's asserted identity headers; ``x-fastgate-identity``
    always); ``trusted``: ``server.trusted_proxies`` (None when empty).
    """

    authority: bytes
    path_prefix: bytes = b""
    preserve_host: bool = True
    forwarded: bool = False
    max_bytes: int = 65536
    max_field_bytes: int = 32768
    strip: frozenset[bytes] = frozenset()
    trusted: TrustedProxies | None = None
    table: Mapping[bytes, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        table = request_rules(self.strip, trusting=True) if self.trusted else request_rules(self.strip)
        object.__setattr__(self, "table", table)

    @classmethod
    def from_config(
        cls, upstream: UpstreamConfig, server: ServerConfig | None = None, *, strip: Iterable[bytes] = ()
    ) -> HeaderRules:
        server = server or ServerConfig()
        trusted = TrustedProxies(server.trusted_proxies)
        return cls(
            authority=upstream.authority,
            path_prefix=upstream.path_prefix,
            preserve_host=upstream.preserve_host,
            forwarded=upstream.forwarded,
            max_bytes=server.max_header_bytes,
            max_field_bytes=server.max_header_field_bytes,
            strip=frozenset(strip),
            trusted=trusted if trusted else None,
        )

    def apply(self, raw: list[tuple[bytes, bytes]], *, client: bytes, scheme: bytes, via: bytes = VIA) -> RequestHead:
        return request_headers(
            raw,
            client=client,
            scheme=scheme,
            upstream_authority=self.authority,
            preserve_host=self.preserve_host,
            forwarded=self.forwarded,
            max_bytes=self.max_bytes,
            max_field_bytes=self.max_field_bytes,
            rules=self.table,
            trusted=self.trusted,
            via_self=via,
        )


@dataclass(slots=True)
class RequestHead:
    """What the request rules produced: upstream headers, body framing and the request id; ``client``, the
    client's address read from X-Forwarded-For of a trusted peer (None: the client is the peer); ``trailers``, the
    client accepts response trailers (``TE: trailers``), and ``headers`` carries ``te: trailers``."""

    headers: list[tuple[bytes, bytes]]
    body_length: int | None
    request_id: bytes
    host: bytes
    client: str | None = None
    trailers: bool = False


_ID_PREFIX = os.urandom(4).hex().encode("ascii")
_id_counter = itertools.count(1)


def new_request_id() -> bytes:
    """A process-unique request id: 8 random hex digits fixed per process, then a counter (16 digits in all)."""
    return b"%s%08x" % (_ID_PREFIX, next(_id_counter) & 0xFFFFFFFF)


def _connection_tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",") if token.strip()}


def request_headers(
    raw: list[tuple[bytes, bytes]],
    *,
    client: bytes,
    scheme: bytes,
    upstream_authority: bytes,
    preserve_host: bool = True,
    forwarded: bool = False,
    max_bytes: int = 65536,
    max_field_bytes: int = 32768,
    rules: Mapping[bytes, int] | None = None,
    trusted: TrustedProxies | None = None,
    via_self: bytes = VIA,
) -> RequestHead:
    """Apply the request rules to the ASGI (lower-cased) header list ``raw`` from the TCP peer ``client``.

    ``rules``: :func:`request_rules`'s table (default: no names stripped but ``x-fastgate-identity``, trusting as
    ``trusted`` says); ``trusted``: the trusted proxies, None for none.
    """
    out: list[tuple[bytes, bytes]] = []
    if rules is None:
        rules = _TRUSTING_RULES if trusted else _REQUEST_RULES
    total = 0
    host = b""
    request_id = b""
    connection: set[bytes] | None = None
    lengths: list[bytes] = []
    encodings: list[bytes] = []
    xff: list[bytes] = []
    via: list[bytes] = []
    forwarded_in: list[bytes] = []
    proxied: list[tuple[bytes, bytes]] | None = None  # only with trusted proxies: their headers, kept aside
    te: list[bytes] | None = None
    for pair in raw:
        name, value = pair
        size = len(name) + len(value) + 4
        if size > max_field_bytes:
            raise HeadersTooLarge(f"header {name[:64].decode('latin-1')!r} is {size} bytes (limit {max_field_bytes})")
        total += size
        rule = rules.get(name)
        if rule is None:
            out.append(pair)
        elif rule == _HOST:
            if host:
                raise BadRequest("more than one Host header")
            host = value
        elif rule == _REQUEST_ID:
            if value and not request_id:  # one id per request: the first the client sent (found by a property test)
                request_id = value
                out.append(pair)
        elif rule == _CONNECTION:
            connection = (connection or set()) | _connection_tokens(value)
        elif rule == _LENGTH:
            lengths.append(value)
        elif rule == _TE:
            encodings.append(value)
        elif rule == _XFF:
            xff.append(value)
        elif rule == _VIA:
            via.append(value)
        elif rule == _FORWARDED:
            forwarded_in.append(value)
        elif rule == _PROXY:
            if proxied is None:
                proxied = [pair]
            else:
                proxied.append(pair)
        elif rule == _ACCEPT_TE:
            te = [*te, value] if te else [value]
        # _DROP and _XF_OTHER: not forwarded (with no trusted proxy, X-Real-IP and X-Forwarded-* are ours to set)
    if total > max_bytes:
        raise HeadersTooLarge(f"request headers are {total} bytes (limit {max_bytes})")

    body_length = _body_length(lengths, encodings)
    if connection:
        out = [pair for pair in out if pair[0] not in connection]
        if b"x-request-id" in connection:
            request_id = b""
    if not request_id:
        request_id = new_request_id()
        out.append((b"x-request-id", request_id))

    # a trusted peer: its proxy headers and Forwarded go on, and X-Forwarded-For names the client
    if trusted is None:
        vouched = False
        resolved = None
    else:
        vouched = trusted.trusts(client.decode("latin-1"))
        resolved = forwarded_client(xff, trusted) if vouched and xff else None

    out.insert(0, (b"host", host if preserve_host and host else upstream_authority))
    out.append((b"x-forwarded-for", b", ".join([*xff, client]) if xff else client))  # each hop appends its peer
    if vouched and proxied is not None:
        if connection:
            proxied = [pair for pair in proxied if pair[0] not in connection]
        out += proxied
        names = {name for name, _ in proxied}
        if b"x-forwarded-proto" not in names:
            out.append((b"x-forwarded-proto", scheme))
        if host and b"x-forwarded-host" not in names:
            out.append((b"x-forwarded-host", host))
    else:
        out.append((b"x-forwarded-proto", scheme))
        if host:
            out.append((b"x-forwarded-host", host))
    if forwarded:
        node = b'"[' + client + b']"' if client.find(b":") >= 0 else client
        element = b"for=" + node + b";proto=" + scheme + (b";host=" + _quote(host) if host else b"")
        out.append((b"forwarded", b", ".join([*forwarded_in, element])))
    elif forwarded_in and vouched:
        out.append((b"forwarded", b", ".join(forwarded_in)))
    out.append((b"via", b", ".join([*via, via_self]) if via else via_self))
    if te is not None and accepts_trailers(te):
        out.append((b"te", b"trailers"))  # other codings go: we never ask an upstream for a transfer coding
        return RequestHead(out, body_length, request_id, host, resolved, True)
    return RequestHead(out, body_length, request_id, host, resolved)


def _quote(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _body_length(lengths: list[bytes], encodings: list[bytes]) -> int | None:
    if encodings:
        if lengths:
            raise BadRequest("both Content-Length and Transfer-Encoding are present")
        if len(encodings) != 1 or encodings[0].strip(b" \t").lower() != b"chunked":
            raise BadRequest("unsupported Transfer-Encoding (only a single 'chunked' is accepted)")
        return CHUNKED
    if lengths:
        values = {v.strip(b" \t") for v in lengths}
        if len(values) != 1:
            raise BadRequest("conflicting Content-Length headers")
        value = values.pop()
        if not value.isdigit() or len(value) > 18:
            raise BadRequest(f"invalid Content-Length {value[:32]!r}")
        return int(value)
    return None


def response_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Apply the response rules to the upstream's headers (names in any case)."""
    out: list[tuple[bytes, bytes]] = []
    connection: set[bytes] | None = None
    hop = HOP_BY_HOP_HEADERS
    for pair in raw:
        name = pair[0].lower()
        if name in hop:
            if name == b"connection":
                connection = (connection or set()) | _connection_tokens(pair[1])
            continue
        out.append((name, pair[1]))
    if connection:
        out = [pair for pair in out if pair[0] not in connection]
    out.append((b"via", VIA))
    return out
