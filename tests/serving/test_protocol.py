"""fastgate's server protocol on a fake transport: limits, deadlines and head checks, without sockets or sleeps.

The same behaviours are tested over real sockets in tests/hostile/; these pin down the protocol's own logic fast.
"""

from __future__ import annotations

import json

import pytest
from uvicorn.server import ServerState

from fastgate.serving.limits import Http2Limits, ServerLimits
from fastgate.serving.protocol import MAX_PIPELINED

from .fake import Echo, connect, settle, status_of

pytestmark = pytest.mark.anyio


def error_body(written: bytes) -> dict[str, str]:
    head, _, body = bytes(written).partition(b"\r\n\r\n")
    assert b"connection: close" in head
    return json.loads(body)  # type: ignore[no-any-return]


async def test_head_over_limit_is_answered_431_before_it_ends() -> None:
    # Defect 1: the limit was only checked when the blank line arrived, so an endless head grew without bound.
    app = Echo()
    protocol, transport = connect(app, ServerLimits(max_header_bytes=65536))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
    fed = 0
    while not transport.closed and fed < 1 << 20:
        protocol.data_received(b"X-Fill: " + b"a" * 4086 + b"\r\n")
        fed += 4096
    assert transport.closed
    assert fed <= 65536 + 4096  # answered as soon as the limit was passed, not after a blank line
    assert status_of(transport.written) == 431
    assert error_body(transport.written)["error"] == "headers_too_large"
    assert app.scopes == []


async def test_one_header_value_streamed_in_pieces_is_cut_at_the_limit() -> None:
    protocol, transport = connect(Echo(), ServerLimits(max_header_bytes=65536))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    fed = 0
    while not transport.closed and fed < 16 << 20:
        protocol.data_received(b"a" * 4096)
        fed += 4096
    assert status_of(transport.written) == 431
    assert fed <= 65536 + 4096


async def test_a_single_read_larger_than_the_head_limit_is_not_parsed_past_it() -> None:
    protocol, transport = connect(Echo(), ServerLimits(max_header_bytes=4096))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 100_000)
    assert status_of(transport.written) == 431


async def test_head_and_body_in_one_read_over_the_head_limit_are_fine() -> None:
    app = Echo()
    protocol, transport = connect(app, ServerLimits(max_header_bytes=4096))
    body = b"z" * 200_000
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    await settle()
    assert status_of(transport.written) == 200
    assert app.bodies == [body]


async def test_uri_over_limit_is_answered_414() -> None:
    app = Echo()
    protocol, transport = connect(app, ServerLimits(max_uri_bytes=8192))
    protocol.data_received(b"GET /")
    while not transport.closed:
        protocol.data_received(b"a" * 1024)
    assert status_of(transport.written) == 414
    assert error_body(transport.written)["error"] == "uri_too_long"


async def test_header_field_over_limit_is_answered_431() -> None:
    protocol, transport = connect(Echo(), ServerLimits(max_header_field_bytes=1024))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 2000 + b"\r\n\r\n")
    assert status_of(transport.written) == 431


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # RFC 9112 §3.2: HTTP/1.1 needs Host
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: evil.example/../x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # '*' is for OPTIONS only
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505),
        (b"GET /\r\n\r\n", 505),  # HTTP/0.9
        (b"GET http://a b/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),  # bare LF
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),  # obs-fold
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ],
)
async def test_bad_request_heads_never_reach_the_app(head: bytes, status: int) -> None:
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(head)
    await settle()
    assert status_of(transport.written) == status, bytes(transport.written)
    assert transport.closed
    assert app.scopes == []
    body = error_body(transport.written)
    assert len(body["request_id"]) == 16  # a real id, not "-"
    assert f"x-request-id: {body['request_id']}".encode() in transport.written


@pytest.mark.parametrize(
    ("head", "path", "host"),
    [
        (b"GET /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", "/a", b"example.com:8080"),
        (b"GET /a HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", "/a", b"[::1]:80"),
        (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "*", b"a"),
        (b"GET / HTTP/1.0\r\n\r\n", "/", None),  # HTTP/1.0 may omit Host
        (b"GET http://other.example:81/p?q HTTP/1.1\r\nHost: ignored\r\n\r\n", "/p", b"other.example:81"),
        (b"GET http://other.example HTTP/1.1\r\nHost: a\r\n\r\n", "/", b"other.example"),
    ],
)
async def test_valid_targets_and_hosts_are_served(head: bytes, path: str, host: bytes | None) -> None:
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(head)
    await settle()
    assert status_of(transport.written) == 200, bytes(transport.written)
    (scope,) = app.scopes
    assert scope["path"] == path
    hosts = [v for n, v in scope["headers"] if n == b"host"]
    assert hosts == ([host] if host else [])


async def test_header_names_with_underscores_are_dropped() -> None:
    # Defect 7: CGI/WSGI-style backends read X_Forwarded_For as X-Forwarded-For.
    app = Echo()
    protocol, _ = connect(app)
    protocol.data_received(
        b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\nTransfer_Encoding: x\r\nX-Ok: 1\r\n\r\n"
    )
    await settle()
    names = [name for name, _ in app.scopes[0]["headers"]]
    assert names == [b"host", b"x-ok"]


async def test_underscores_in_headers_can_be_allowed() -> None:
    app = Echo()
    protocol, _ = connect(app, ServerLimits(underscores_in_headers=True))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nX_Custom: 1\r\n\r\n")
    await settle()
    assert (b"x_custom", b"1") in app.scopes[0]["headers"]


async def test_a_connection_that_sends_nothing_gets_408_after_header_timeout() -> None:
    protocol, transport = connect(Echo(), ServerLimits(header_timeout=10))
    protocol.check(protocol.loop.time() + 9)
    assert not transport.closed
    protocol.check(protocol.loop.time() + 10.5)
    assert transport.closed
    assert status_of(transport.written) == 408


async def test_a_partial_head_gets_408_after_header_timeout() -> None:
    app = Echo()
    protocol, transport = connect(app, ServerLimits(header_timeout=10))
    protocol.data_received(b"GET / HTTP/1.1\r\nHo")
    protocol.check(protocol.loop.time() + 10.5)
    assert status_of(transport.written) == 408
    assert error_body(transport.written)["error"] == "request_timeout"
    assert app.scopes == []


async def test_an_idle_kept_alive_connection_closes_quietly_after_keepalive_timeout() -> None:
    protocol, transport = connect(Echo(), ServerLimits(header_timeout=1, keepalive_timeout=30))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await settle()
    answered = len(transport.written)
    assert status_of(transport.written) == 200
    protocol.check(protocol.loop.time() + 5)  # past header_timeout: idle is not a slow head
    assert not transport.closed
    protocol.check(protocol.loop.time() + 31)
    assert transport.closed
    assert len(transport.written) == answered  # nothing more was said


async def test_the_last_request_allowed_on_a_connection_is_answered_with_connection_close() -> None:
    protocol, transport = connect(Echo(), ServerLimits(max_requests_per_connection=2))
    protocol.data_received(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    await settle()
    assert b"connection: close" not in transport.written
    protocol.data_received(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    await settle()
    assert transport.written.count(b"HTTP/1.1 200") == 2
    assert transport.written.endswith(b"connection: close\r\n\r\n")
    assert transport.closed


async def test_connections_over_max_connections_get_503_and_close() -> None:
    state = ServerState()
    limits = ServerLimits(max_connections=2)
    app = Echo()
    kept = [connect(app, limits, state) for _ in range(2)]
    assert not any(transport.closed for _, transport in kept)
    _, refused = connect(app, limits, state)
    assert refused.closed
    assert status_of(refused.written) == 503
    assert error_body(refused.written)["error"] == "overloaded"
    kept[0][0].connection_lost(None)
    _, accepted = connect(app, limits, state)
    assert not accepted.closed


async def test_a_request_body_slower_than_the_minimum_rate_gets_408_after_the_grace_period() -> None:
    app = Echo()
    protocol, transport = connect(app, ServerLimits(min_body_rate=240, body_grace_period=5))
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\nabc")
    await settle()  # the app is waiting for more body
    start = protocol.loop.time()
    protocol.check(start + 4)  # within the grace period: nothing happens
    assert not transport.closed
    protocol.check(start + 6)  # 3 bytes in 6 s
    assert transport.closed
    assert status_of(transport.written) == 408
    await settle()
    assert app.bodies == []  # the app saw a disconnect, not a body


async def test_a_body_arriving_at_a_good_rate_is_not_cut() -> None:
    app = Echo()
    protocol, transport = connect(app, ServerLimits(min_body_rate=240, body_grace_period=5))
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4000\r\n\r\n")
    await settle()
    start = protocol.loop.time()
    for second in range(1, 8):
        protocol.data_received(b"x" * 300)
        await settle()
        protocol.check(start + second)
    assert not transport.closed


async def test_time_the_app_was_not_reading_does_not_count_against_the_body_rate() -> None:
    protocol, transport = connect(Echo(), ServerLimits(min_body_rate=240, body_grace_period=1))
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
    await settle()
    protocol.pause_reading()  # what a full buffer does while the upstream is slow to take the body
    protocol.check(protocol.loop.time() + 100)
    assert not transport.closed


async def test_a_client_that_stops_reading_is_cut_after_send_timeout() -> None:
    cancelled = []

    async def streamer(scope, receive, send):  # type: ignore[no-untyped-def]
        hooks = scope["extensions"]["fastgate.server"]
        hooks.on_disconnect = lambda: cancelled.append(True)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
        while (await receive())["type"] != "http.disconnect":  # the (empty) body, then the disconnect
            pass

    protocol, transport = connect(streamer, ServerLimits(send_timeout=60))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await settle()
    protocol.pause_writing()
    protocol.check(protocol.loop.time() + 30)
    assert not transport.aborted
    protocol.check(protocol.loop.time() + 61)
    assert transport.aborted
    assert cancelled == [True]


async def test_pipelined_requests_are_answered_in_order() -> None:
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(
        b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\none"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\ntwo"
        b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    await settle(60)
    assert [s["path"] for s in app.scopes] == ["/1", "/2", "/3"]
    assert app.bodies == [b"one", b"two", b""]
    assert transport.written.count(b"HTTP/1.1 200") == 3
    assert transport.written.index(b"one") < transport.written.index(b"two")


async def test_100_continue_is_sent_only_when_the_app_reads_the_body() -> None:
    gate = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 401, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        gate.append(True)

    protocol, transport = connect(app)
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    await settle()
    assert gate == [True]
    assert b"100 Continue" not in transport.written
    assert status_of(transport.written) == 401
    assert transport.closed  # the unread body cannot be skipped safely: the connection ends with the response


async def test_an_app_that_raises_gets_a_json_500_and_the_connection_closes() -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        raise ValueError("boom")

    protocol, transport = connect(app)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    await settle()
    assert status_of(transport.written) == 500
    assert error_body(transport.written)["error"] == "internal_error"
    assert b"boom" not in transport.written


async def test_after_an_error_answer_the_socket_lingers_then_closes() -> None:
    # A lingering close (nginx's): the answer is followed by FIN, not by an RST that could destroy it.
    protocol, transport = connect(Echo(), ServerLimits(max_header_bytes=4096))
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 1000)
    assert status_of(transport.written) == 431
    assert transport.eof and not transport.aborted
    assert not transport.reading  # a hostile client costs no more reads
    answered = len(transport.written)
    protocol.data_received(b"X-A: b\r\n" * 1000)  # the client is still sending: dropped
    assert len(transport.written) == answered
    protocol.check(protocol.loop.time() + 5)
    assert transport.aborted


async def test_pipelined_requests_beyond_the_queue_bound_are_refused_after_those_before_them() -> None:
    # One read can hold thousands of tiny pipelined requests: only MAX_PIPELINED wait, the next gets 400, the rest
    # of the read is never turned into requests.
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n" * 5000)
    assert len(protocol._pipeline) <= MAX_PIPELINED
    await settle(400)
    assert len(app.scopes) == MAX_PIPELINED + 1  # the one answered first, then those that waited
    assert transport.written.count(b"HTTP/1.1 200") == MAX_PIPELINED + 1
    assert transport.written.count(b"HTTP/1.1 400") == 1
    assert transport.closed


@pytest.mark.parametrize(
    "second",
    [
        b"GET /b HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET /b HTTP/1.1\r\nHost: example.com\r\nHost: example.com\r\n\r\n",
        b"GET /b HTTP/1.1\r\n\r\n",
        b"GET /b HTTP/1.1\r\nHost: \r\n\r\n",
    ],
)
async def test_host_is_checked_on_every_request_of_a_kept_alive_connection(second: bytes) -> None:
    # The connection remembers the last Host it validated (a kept-alive client repeats it): anything else is checked.
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n")
    await settle()
    assert status_of(transport.written) == 200
    assert not transport.closed
    transport.written.clear()
    protocol.data_received(second)
    await settle()
    assert status_of(transport.written) == 400, bytes(transport.written)
    assert transport.closed
    assert [scope["path"] for scope in app.scopes] == ["/a"]


async def test_an_http2_preface_gets_505_when_http2_is_disabled() -> None:
    # server.http2.enabled: false brings back what every preface got before issue 18 (tests/http2/ has the rest)
    app = Echo()
    protocol, transport = connect(app, ServerLimits(http2=Http2Limits(enabled=False)))
    protocol.data_received(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    await settle()
    assert status_of(transport.written) == 505
    assert app.scopes == []


@pytest.mark.parametrize(
    "pieces", [[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], [b"P", b"RI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"]]
)
async def test_an_http2_preface_switches_the_connection_to_http2(pieces: list[bytes]) -> None:
    protocol, transport = connect(Echo())
    for piece in pieces:
        protocol.data_received(piece)
    # the server's SETTINGS frame (type 0x4 on stream 0), not an HTTP/1.1 status line
    assert bytes(transport.written[3:4]) == b"\x04"
    assert not bytes(transport.written).startswith(b"HTTP/1.1")


async def test_a_request_starting_with_p_is_still_http1() -> None:
    app = Echo()
    protocol, transport = connect(app)
    protocol.data_received(b"P")
    protocol.data_received(b"OST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    await settle()
    assert status_of(transport.written) == 200
