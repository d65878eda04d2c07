"""Fuzzing the request-head path: hostile byte streams, split at random, fed to the server protocol.

Whatever arrives, the protocol never raises, answers only with well-formed status lines, and hands the app only
requests that passed every check (version, target form, one valid Host, no underscore names). Bounded for CI by
hypothesis's example count; run longer with ``--hypothesis-seed`` / ``HYPOTHESIS_PROFILE=long``.
"""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgate.serving.head import is_valid_host
from fastgate.serving.limits import ServerLimits

from .fake import Echo, connect, settle

settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HOSTILE = [b"", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00", b"_", b":", b"/", b"..", b"%", b"*", b"@", b"\xff", b","]
methods = st.sampled_from([b"GET", b"POST", b"OPTIONS", b"CONNECT", b"PRI", b"HEAD", b"G ET", b"", b"PUT"])
targets = st.one_of(
    st.sampled_from([b"/", b"*", b"/a?b", b"http://h/p", b"h:443", b"//x", b"/../x", b"/%2e%2e/", b"a"]),
    st.binary(max_size=30),
)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"", b"HTTP/1.1 x"])
names = st.one_of(
    st.sampled_from(
        [b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"X_Forwarded_For", b"Expect", b"Upgrade"]
    ),
    st.binary(min_size=0, max_size=12),
)
values = st.one_of(
    st.sampled_from([b"a", b"a b", b"chunked", b"3", b"-1", b"100-continue", b"websocket", b"x.example:80"]),
    st.lists(st.sampled_from(HOSTILE + [b"a", b"1"]), max_size=6).map(b"".join),
)
headers = st.lists(st.tuples(names, st.sampled_from([b": ", b":", b" : ", b":\t"]), values), max_size=8)
line_ends = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n\r\n"])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    end = draw(line_ends)
    head = draw(methods) + b" " + draw(targets) + b" " + draw(versions) + end
    for name, sep, value in draw(headers):
        head += name + sep + value + draw(line_ends)
    return head + b"\r\n" + draw(st.binary(max_size=40))


streams = st.one_of(requests(), st.lists(requests(), min_size=2, max_size=3).map(b"".join), st.binary(max_size=200))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if data[a:b]]


def run(data: bytes, cuts: list[int]) -> None:
    async def main() -> None:
        app = Echo()
        protocol, transport = connect(app, ServerLimits(max_header_bytes=1024, max_uri_bytes=256))
        for piece in split(data, cuts):
            if transport.closed:
                break
            protocol.data_received(piece)  # must never raise
            await settle(5)
        await settle()
        for scope in app.scopes:
            assert scope["http_version"] in ("1.0", "1.1")
            assert scope["method"] != "CONNECT"
            assert scope["path"].startswith("/") or (scope["path"] == "*" and scope["method"] == "OPTIONS")
            hosts = [value for name, value in scope["headers"] if name == b"host"]
            assert len(hosts) <= 1
            assert all(is_valid_host(h) for h in hosts)
            assert hosts or scope["http_version"] == "1.0"
            assert not any(b"_" in name for name, _ in scope["headers"])
        written = bytes(transport.written)
        assert not written or written.startswith(b"HTTP/1.1 ")
        for line in written.split(b"\r\n"):
            if line.startswith(b"HTTP/1.1 "):
                assert line[9:12].isdigit()

    asyncio.run(main())


@given(streams, st.lists(st.integers(0, 400), max_size=6))
def test_no_byte_stream_breaks_the_server_or_reaches_the_app_unchecked(data: bytes, cuts: list[int]) -> None:
    run(data, cuts)


@given(st.integers(1100, 5000), st.lists(st.integers(1, 4096), min_size=1, max_size=8))
def test_an_endless_head_is_refused_however_it_is_split(size: int, cuts: list[int]) -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * size
    run(data, cuts)
