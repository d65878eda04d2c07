"""The header rules as pure functions (no sockets)."""

from __future__ import annotations

import pytest

from fastgate.exceptions import BadRequest, HeadersTooLarge
from fastgate.proxy.headers import HOP_BY_HOP_HEADERS, request_headers, response_headers
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
