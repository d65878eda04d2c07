"""Stream admission, GOAWAY bookkeeping and the request/response head mapping of the upstream h2 client: pure."""

from __future__ import annotations

from dataclasses import dataclass

from fastgate.upstream.h2.admission import (
    REFUSED_STREAM,
    pick_connection,
    refused_by_goaway,
    reset_is_retry_safe,
    should_open,
    stream_limit,
)
from fastgate.upstream.h2.request import request_headers, response_head
from fastgate.upstream.transport import CHUNKED, UpstreamRequest


@dataclass
class Slots:
    in_use: int
    limit: int
    draining: bool = False


def test_stream_limit_is_the_smaller_of_the_peer_and_ours() -> None:
    assert stream_limit(None, 100) == 100  # the peer set none: unlimited, ours holds
    assert stream_limit(10, 100) == 10
    assert stream_limit(1000, 100) == 100
    assert stream_limit(0, 100) == 0  # a peer may refuse new streams altogether (RFC 9113 §6.5.2)


def test_a_stream_goes_on_the_first_connection_with_room() -> None:
    assert pick_connection([]) is None
    assert pick_connection([Slots(3, 4), Slots(0, 4)]) == 0  # first fit: packs the oldest connection
    assert pick_connection([Slots(4, 4), Slots(1, 4)]) == 1
    assert pick_connection([Slots(4, 4), Slots(4, 4)]) is None


def test_a_draining_connection_takes_no_new_stream() -> None:
    assert pick_connection([Slots(0, 100, draining=True)]) is None
    assert pick_connection([Slots(0, 100, draining=True), Slots(99, 100)]) == 1


def test_another_connection_opens_only_when_the_ones_being_opened_cannot_take_the_demand() -> None:
    common = {"local_limit": 100, "max_connections": 8}
    assert should_open(open_connections=0, connecting=0, demand=1, **common)
    # a cold burst of 50: the first opens one connection, the other 49 wait for it
    assert not should_open(open_connections=0, connecting=1, demand=50, **common)
    assert should_open(open_connections=0, connecting=1, demand=101, **common)
    assert should_open(open_connections=3, connecting=0, demand=1, **common)


def test_no_connection_past_max_connections() -> None:
    assert not should_open(open_connections=2, connecting=0, demand=1, local_limit=1, max_connections=2)
    assert not should_open(open_connections=1, connecting=1, demand=9, local_limit=1, max_connections=2)


def test_goaway_fails_only_the_streams_above_its_last_id() -> None:
    assert refused_by_goaway([1, 3, 5, 7], 3) == [5, 7]
    assert refused_by_goaway({9: None, 1: None}, 0) == [1, 9]  # last id 0: nothing was processed
    assert refused_by_goaway([1, 3], 2**31 - 1) == []  # a graceful GOAWAY: every open stream runs on


def test_only_refused_stream_resets_are_safe_to_send_again() -> None:
    assert reset_is_retry_safe(REFUSED_STREAM)
    assert not reset_is_retry_safe(0x8)  # CANCEL: the server may have acted on it
    assert not reset_is_retry_safe(0x2)  # INTERNAL_ERROR
    assert not reset_is_retry_safe(0x0)


def _head(request: UpstreamRequest, scheme: bytes = b"http") -> list[tuple[bytes, bytes]]:
    return request_headers(request, scheme=scheme, path_prefix=b"/v1", default_authority=b"10.0.0.1:9000")


def test_request_head_maps_to_pseudo_headers_and_drops_connection_specific_fields() -> None:
    request = UpstreamRequest(
        b"POST",
        b"/items?x=1",
        [
            (b"host", b"api.example"),
            (b"Connection", b"close"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-connection", b"keep-alive"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"h2c"),
            (b"X-Request-Id", b"abc"),
            (b"content-length", b"999"),  # ours, from body_length, wins
        ],
        body_length=12,
    )
    assert _head(request, b"https") == [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"api.example"),
        (b":path", b"/v1/items?x=1"),
        (b"x-request-id", b"abc"),
        (b"content-length", b"12"),
    ]


def test_te_is_kept_only_as_trailers() -> None:
    keep = UpstreamRequest(b"POST", b"/", [(b"host", b"a"), (b"te", b"trailers")], body_length=CHUNKED)
    drop = UpstreamRequest(b"GET", b"/", [(b"host", b"a"), (b"te", b"gzip, trailers")])
    assert (b"te", b"trailers") in _head(keep)
    assert not [f for f in _head(drop) if f[0] == b"te"]
    assert not [f for f in _head(keep) if f[0] == b"content-length"]  # a body of unknown length: DATA until END


def test_without_a_host_header_the_authority_is_the_targets() -> None:
    assert _head(UpstreamRequest(b"GET", b"/", []))[2] == (b":authority", b"10.0.0.1:9000")


def test_response_head_separates_status_from_fields() -> None:
    assert response_head([(b":status", b"404"), (b"content-type", b"text/plain")]) == (
        404,
        [(b"content-type", b"text/plain")],
    )
