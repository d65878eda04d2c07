"""The header rules as pure functions (no sockets)."""

from __future__ import annotations

import pytest

from fastgate.exceptions import BadRequest, HeadersTooLarge
from fastgate.proxy.client_address import TrustedProxies
from fastgate.proxy.headers import (
    HOP_BY_HOP_HEADERS,
    HeaderRules,
    RequestHead,
    request_headers,
    request_rules,
    response_headers,
)
from fastgate.upstream.transport import CHUNKED


def _rewrite(*pairs: tuple[bytes, bytes], **options: object):  # type: ignore[no-untyped-def]
    return request_headers(list(pairs), client=b"10.0.0.9", scheme=b"https", upstream_authority=b"up:9000", **options)


def test_hop_by_hop_set_matches_rfc9110() -> None:
    assert HOP_BY_HOP_HEADERS == {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
    }


def test_connection_named_headers_are_removed_whatever_their_position() -> None:
    head = _rewrite((b"x-a", b"1"), (b"connection", b"X-A , x-b"), (b"x-b", b"2"), (b"x-c", b"3"))
    names = [name for name, _ in head.headers]
    assert b"x-a" not in names and b"x-b" not in names and b"x-c" in names


def test_host_is_first_and_preserved_by_default() -> None:
    head = _rewrite((b"host", b"public.test"))
    assert head.headers[0] == (b"host", b"public.test")
    assert _rewrite((b"host", b"public.test"), preserve_host=False).headers[0] == (b"host", b"up:9000")


def test_missing_host_uses_the_upstream_authority() -> None:
    assert _rewrite().headers[0] == (b"host", b"up:9000")


def test_two_host_headers_are_refused() -> None:
    with pytest.raises(BadRequest):
        _rewrite((b"host", b"a"), (b"host", b"b"))


def test_forwarded_element_quotes_ipv6() -> None:
    head = request_headers([], client=b"::1", scheme=b"http", upstream_authority=b"u", forwarded=True)
    assert (b"forwarded", b'for="[::1]";proto=http') in head.headers


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], None),
        ([(b"content-length", b"0")], 0),
        ([(b"content-length", b"12")], 12),
        ([(b"content-length", b"12"), (b"content-length", b"12")], 12),
        ([(b"transfer-encoding", b"Chunked")], CHUNKED),
    ],
)
def test_body_framing(pairs: list[tuple[bytes, bytes]], expected: int | None) -> None:
    assert _rewrite(*pairs).body_length == expected


def test_header_size_limits() -> None:
    with pytest.raises(HeadersTooLarge):
        _rewrite((b"x", b"a" * 40000))
    with pytest.raises(HeadersTooLarge):
        _rewrite(*[(b"x-%d" % i, b"a" * 1000) for i in range(70)])
    assert _rewrite((b"x", b"a" * 1000), max_field_bytes=2000).headers


def test_response_rules_strip_hop_by_hop_and_keep_repeats() -> None:
    out = response_headers(
        [
            (b"Set-Cookie", b"a=1"),
            (b"Connection", b"close, X-Internal"),
            (b"X-Internal", b"secret"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Set-Cookie", b"b=2"),
            (b"Content-Length", b"5"),
        ]
    )
    assert out == [
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"content-length", b"5"),
        (b"via", b"1.1 fastgate"),
    ]


# Trust (issue 17, items 3 and 4): identity headers never pass; proxy headers only from a trusted peer.

FORGED = [
    (b"host", b"public.test"),
    (b"x-fastgate-identity", b"alice"),
    (b"x-user", b"alice"),
    (b"x-real-ip", b"203.0.113.66"),
    (b"x-forwarded-for", b"203.0.113.7"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"evil.test"),
    (b"x-forwarded-port", b"443"),
    (b"x-forwarded-prefix", b"/admin"),
    (b"forwarded", b"for=203.0.113.66;proto=https"),
    (b"accept", b"*/*"),
]


def _names(head: RequestHead) -> list[bytes]:
    return [name for name, _ in head.headers]


def test_identity_header_is_removed_from_every_request() -> None:
    head = _rewrite((b"x-fastgate-identity", b"alice"), (b"X-Other", b"1"), (b"x-fastgate-identity", b"bob"))
    assert b"x-fastgate-identity" not in _names(head)
    assert (b"X-Other", b"1") in head.headers


def test_configured_identity_headers_are_removed() -> None:
    rules = HeaderRules(b"up:9000", strip=frozenset({b"x-user", b"x-auth-user"}))
    head = rules.apply(list(FORGED) + [(b"x-auth-user", b"root")], client=b"10.0.0.9", scheme=b"http")
    names = _names(head)
    assert b"x-user" not in names and b"x-auth-user" not in names and b"x-fastgate-identity" not in names
    assert (b"accept", b"*/*") in head.headers


def test_strip_never_touches_framing_or_host() -> None:
    rules = request_rules([b"host", b"content-length", b"transfer-encoding", b"connection", b"x-real-ip"])
    head = request_headers(
        [(b"host", b"h"), (b"content-length", b"3")],
        client=b"10.0.0.9",
        scheme=b"http",
        upstream_authority=b"u",
        rules=rules,
    )
    assert head.headers[0] == (b"host", b"h") and head.body_length == 3
    assert rules[b"x-real-ip"] == rules[b"x-fastgate-identity"]


def test_untrusted_peer_proxy_headers() -> None:
    """No trusted proxies (the default): what upstream gets of each forgeable header."""
    head = _rewrite(*FORGED)
    assert head.client is None
    got = dict(head.headers)
    assert got[b"x-forwarded-for"] == b"203.0.113.7, 10.0.0.9"  # appended to: the upstream reads the rightmost
    assert got[b"x-forwarded-proto"] == b"https"  # ours (the scheme we were given), not the client's
    assert got[b"x-forwarded-host"] == b"public.test"  # the Host we saw, not the client's evil.test
    for name in (b"x-real-ip", b"x-forwarded-port", b"x-forwarded-prefix", b"forwarded", b"x-fastgate-identity"):
        assert name not in got, name
    assert [n for n in _names(head) if n.startswith(b"x-forwarded-")] == [
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    ]


def test_untrusted_peer_forwarded_true_appends_ours_to_the_clients() -> None:
    head = _rewrite(*FORGED, forwarded=True)
    assert dict(head.headers)[b"forwarded"] == (
        b'for=203.0.113.66;proto=https, for=10.0.0.9;proto=https;host="public.test"'
    )


def test_peer_outside_the_trusted_range_is_untrusted() -> None:
    untrusted = HeaderRules(b"up:9000", trusted=TrustedProxies(["192.0.2.0/24"]))
    head = untrusted.apply(list(FORGED), client=b"10.0.0.9", scheme=b"http")
    assert head.client is None
    got = dict(head.headers)
    assert got[b"x-forwarded-proto"] == b"http" and got[b"x-forwarded-host"] == b"public.test"
    assert not {b"x-real-ip", b"x-forwarded-port", b"x-forwarded-prefix", b"forwarded"} & set(got)


def test_trusted_peer_passes_proxy_headers_and_names_the_client() -> None:
    trusted = HeaderRules(b"up:9000", trusted=TrustedProxies(["10.0.0.0/8"]))
    head = trusted.apply(list(FORGED), client=b"10.0.0.9", scheme=b"http")
    assert head.client == "203.0.113.7"
    got = dict(head.headers)
    assert got[b"x-forwarded-for"] == b"203.0.113.7, 10.0.0.9"  # still our TCP peer appended
    assert got[b"x-real-ip"] == b"203.0.113.66"
    assert got[b"x-forwarded-proto"] == b"https"  # the client's (its proxy terminated TLS), not our http
    assert got[b"x-forwarded-host"] == b"evil.test"
    assert got[b"x-forwarded-port"] == b"443" and got[b"x-forwarded-prefix"] == b"/admin"
    assert got[b"forwarded"] == b"for=203.0.113.66;proto=https"
    assert b"x-fastgate-identity" not in got  # trusted or not: the identity header is never believed
    assert _names(head).count(b"x-forwarded-proto") == 1 and _names(head).count(b"x-forwarded-host") == 1


def test_trusted_peer_without_proxy_headers_gets_ours() -> None:
    trusted = HeaderRules(b"up:9000", trusted=TrustedProxies(["10.0.0.0/8"]), forwarded=True)
    head = trusted.apply([(b"host", b"h.test")], client=b"10.0.0.9", scheme=b"https")
    assert head.client is None  # no X-Forwarded-For: the peer is the client
    got = dict(head.headers)
    assert got[b"x-forwarded-proto"] == b"https" and got[b"x-forwarded-host"] == b"h.test"
    assert got[b"forwarded"] == b'for=10.0.0.9;proto=https;host="h.test"'


def test_trusted_peer_several_forwarded_for_headers_are_one_list() -> None:
    trusted = HeaderRules(b"up:9000", trusted=TrustedProxies(["10.0.0.0/8"]))
    raw = [(b"x-forwarded-for", b"198.51.100.1, 203.0.113.7"), (b"x-forwarded-for", b"10.0.0.3")]
    head = trusted.apply(raw, client=b"10.0.0.9", scheme=b"http")
    assert head.client == "203.0.113.7"
    assert dict(head.headers)[b"x-forwarded-for"] == b"198.51.100.1, 203.0.113.7, 10.0.0.3, 10.0.0.9"


def test_trusted_peer_proxy_headers_named_in_connection_are_hop_by_hop() -> None:
    trusted = HeaderRules(b"up:9000", trusted=TrustedProxies(["10.0.0.0/8"]))
    raw = [(b"connection", b"x-real-ip"), (b"x-real-ip", b"203.0.113.66"), (b"x-forwarded-port", b"443")]
    head = trusted.apply(raw, client=b"10.0.0.9", scheme=b"http")
    assert b"x-real-ip" not in _names(head) and (b"x-forwarded-port", b"443") in head.headers
