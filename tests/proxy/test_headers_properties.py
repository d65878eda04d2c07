"""Properties of the header rules over generated header lists (hypothesis): what must hold for any request."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fastgate.exceptions import ClientError
from fastgate.proxy.headers import HOP_BY_HOP_HEADERS, request_headers, response_headers

TOKENS = [b"connection", b"keep-alive", b"te", b"upgrade", b"trailer", b"proxy-connection", b"transfer-encoding"]
names = st.one_of(
    st.sampled_from(
        [*TOKENS, b"host", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"via", b"x-request-id"]
    ),
    st.sampled_from([b"x-a", b"x-b", b"accept", b"cookie", b"content-length", b"expect"]),
)
values = st.one_of(
    st.sampled_from([b"close", b"x-a", b"x-a, x-b", b"keep-alive, upgrade", b"chunked", b"10", b"1.2.3.4"]),
    st.binary(min_size=0, max_size=12).filter(lambda v: b"\r" not in v and b"\n" not in v and b"\0" not in v),
)
header_lists = st.lists(st.tuples(names, values), max_size=12)


def _connection_tokens(pairs: list[tuple[bytes, bytes]]) -> set[bytes]:
    return {t.strip().lower() for n, v in pairs if n == b"connection" for t in v.split(b",") if t.strip()}


@given(header_lists)
def test_no_hop_by_hop_or_connection_named_header_ever_goes_upstream(pairs: list[tuple[bytes, bytes]]) -> None:
    try:
        head = request_headers(pairs, client=b"10.0.0.1", scheme=b"http", upstream_authority=b"up:80")
    except ClientError:
        return  # refused before anything goes upstream
    sent = [name for name, _ in head.headers]
    named = _connection_tokens(pairs) - {b"x-request-id", b"host"}
    assert not (set(sent) & (HOP_BY_HOP_HEADERS | {b"expect"}))
    assert not (set(sent) & named)


@given(header_lists)
def test_host_comes_first_once_and_the_client_ends_x_forwarded_for(pairs: list[tuple[bytes, bytes]]) -> None:
    try:
        head = request_headers(pairs, client=b"10.0.0.1", scheme=b"http", upstream_authority=b"up:80")
    except ClientError:
        return
    assert head.headers[0][0] == b"host"
    assert [n for n, _ in head.headers].count(b"host") == 1
    (xff,) = [v for n, v in head.headers if n == b"x-forwarded-for"]
    assert xff.endswith(b"10.0.0.1")
    assert [v for n, v in head.headers if n == b"x-forwarded-proto"] == [b"http"]
    assert [n for n, _ in head.headers].count(b"x-request-id") == 1
    assert head.headers[-1][0] == b"via" and head.headers[-1][1].endswith(b"1.1 fastgate")


@given(header_lists)
def test_responses_keep_every_end_to_end_header_in_order(pairs: list[tuple[bytes, bytes]]) -> None:
    out = response_headers(pairs)
    named = _connection_tokens(pairs)
    expected = [(n, v) for n, v in pairs if n not in HOP_BY_HOP_HEADERS and n not in named]
    assert out[:-1] == expected  # Set-Cookie repeats and order survive
    assert out[-1] == (b"via", b"1.1 fastgate")
