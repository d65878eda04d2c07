"""Path canonicalisation (proxy/paths.py): normalisation for route matching, the readings an upstream may make of a
path, and the verdict on what goes upstream, by tables of spellings and by properties."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgate.config import RouteConfig
from fastgate.exceptions import BadRequest
from fastgate.proxy.paths import (
    MAX_READINGS,
    READING_BYTES,
    AmbiguousPath,
    FragmentInTarget,
    PathAboveRoot,
    normalize_path,
    readings,
    resolve_target,
)
from fastgate.routing import Route, RouteTable


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        (b"/", b"/"),
        (b"/api/users", b"/api/users"),
        # the bypass vectors: each is the /admin a route guards
        (b"/public/../admin", b"/admin"),
        (b"/%61dmin", b"/admin"),
        (b"/%61%64%6D%69%6E", b"/admin"),
        (b"/admin/.", b"/admin/"),
        (b"/./admin", b"/admin"),
        (b"/public/%2e%2e/admin", b"/admin"),
        (b"/public/%2E./admin", b"/admin"),
        (b"/a/b/../../admin", b"/admin"),
        # RFC 3986 §5.2.4 examples, rooted
        (b"/a/b/c/./../../g", b"/a/g"),
        (b"/mid/content=5/../6", b"/mid/6"),
        (b"/a/..", b"/"),
        (b"/a/b/..", b"/a/"),
        (b"/.", b"/"),
        # only unreserved characters are decoded; other escapes stay, with upper-case hex
        (b"/a%2Fb", b"/a%2Fb"),
        (b"/a%2fb", b"/a%2Fb"),
        (b"/%7e%5F%2d", b"/~_-"),
        (b"/%25%32%46", b"/%252F"),  # %25 stays: no double decoding
        (b"/%20x%zz%4", b"/%20x%zz%4"),
        (b"/%2e%2e%2fadmin", b"/..%2Fadmin"),  # one segment, not a climb
        # dots inside segments are not dot segments
        (b"/a/.b/..c/...", b"/a/.b/..c/..."),
        # without merge_slashes, empty segments are kept (they are segments)
        (b"/a//b", b"/a//b"),
        (b"/a//..", b"/a/"),
        (b"*", b"*"),
    ],
)
def test_normalisation_table(raw: bytes, normal: bytes) -> None:
    assert normalize_path(raw) == normal


@pytest.mark.parametrize(
    ("raw", "normal"),
    [(b"//admin", b"/admin"), (b"/a///b//", b"/a/b/"), (b"/a//../b", b"/a/b"), (b"/a/.//b", b"/a/b")],
)
def test_merge_slashes(raw: bytes, normal: bytes) -> None:
    assert normalize_path(raw, merge_slashes=True) == normal


@pytest.mark.parametrize("raw", [b"/..", b"/../etc/passwd", b"/a/../..", b"/%2e%2e/admin", b"/a/./../../b", b"/.%2E"])
def test_climbing_above_root_is_a_400(raw: bytes) -> None:
    with pytest.raises(PathAboveRoot) as info:
        normalize_path(raw)
    assert (info.value.status_code, info.value.code) == (400, "bad_request")


def test_the_common_path_is_returned_as_is() -> None:
    path = b"/api/v1/users/42"
    assert normalize_path(path) is path
    assert normalize_path(path, merge_slashes=True) is path


_segment = st.one_of(
    st.sampled_from(["", ".", "..", "%2e", "%2E%2e", ".a", "a.", "%61", "%2F", "%2f", "%25", "%", "~"]),
    st.text(alphabet="abc.%2Ff-/", max_size=6),
)
_paths = st.lists(_segment, max_size=8).map(lambda parts: ("/" + "/".join(parts)).encode("ascii"))


def _normal_or_none(path: bytes, merge: bool) -> bytes | None:
    try:
        return normalize_path(path, merge_slashes=merge)
    except PathAboveRoot:
        return None


@given(_paths, st.booleans())
def test_normalisation_is_idempotent_has_no_dot_segments_and_never_climbs(path: bytes, merge: bool) -> None:
    normal = _normal_or_none(path, merge)
    if normal is None:
        return
    assert normal.startswith(b"/")
    assert normalize_path(normal, merge_slashes=merge) == normal
    segments = normal.split(b"/")[1:]
    assert b"." not in segments and b".." not in segments
    assert not any(s.lower() in (b"%2e", b"%2e%2e", b".%2e", b"%2e.") for s in segments)
    if merge:
        assert b"//" not in normal


@given(_paths)
def test_a_path_that_climbs_fails_and_every_other_one_stays_below_root(path: bytes) -> None:
    depth = 0
    climbs = False
    decoded = path.replace(b"%2e", b".").replace(b"%2E", b".")
    for segment in decoded.split(b"/")[1:]:
        if segment == b"..":
            depth -= 1
            climbs = climbs or depth < 0
        elif segment != b".":
            depth += 1
    assert (_normal_or_none(path, False) is None) == climbs


# --- readings ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/api/users", {b"/api/users"}),
        (b"*", {b"*"}),
        (b"/%61dmin", {b"/admin"}),  # written as routes match it: unreserved escapes decoded
        (b"/a/./b", {b"/a/./b", b"/a/b"}),  # as sent (Starlette does not resolve dots) and resolved
        (b"/public/..;/admin", {b"/public/..;/admin", b"/public/../admin", b"/admin"}),  # Tomcat, Spring
        (b"/admin;x/secret", {b"/admin;x/secret", b"/admin/secret"}),
        (b"//admin/secret", {b"//admin/secret", b"/admin/secret"}),  # servers that merge slashes
        (b"/public/..%2Fadmin", {b"/public/..%2Fadmin", b"/public/../admin", b"/admin"}),  # %2F decoded
        (b"/public/..%2fadmin", {b"/public/..%2Fadmin", b"/public/../admin", b"/admin"}),
        (b"/public/..\\admin", {b"/public/..\\admin", b"/public/../admin", b"/admin"}),  # IIS
        (b"/public/..%5Cadmin", {b"/public/..%5Cadmin", b"/public/..\\admin", b"/public/../admin", b"/admin"}),
        (b"/p/..%252Fadmin", {b"/p/..%252Fadmin", b"/p/..%2Fadmin", b"/p/../admin", b"/admin"}),  # decoded twice
        (b"/p/%252e%252e/a", {b"/p/%252e%252e/a", b"/p/../a", b"/a"}),  # lower-case hex after %25 (suite found it)
        (b"/admin%3Bx/y", {b"/admin%3Bx/y", b"/admin;x/y", b"/admin/y"}),  # decoded, then params stripped
        (b"/admin%00.png", {b"/admin%00.png", b"/admin"}),  # a C string ends at NUL
        (b"/a%20b", {b"/a%20b"}),  # a space is data every way
        # dots resolved before decoding (a normalising proxy in front of a framework), then decoded
        (
            b"/p/../admin%2F..%2Fp",
            {b"/p/../admin%2F..%2Fp", b"/admin%2F..%2Fp", b"/p/../admin/../p", b"/admin/../p", b"/p"},
        ),
    ],
)
def test_readings_table(raw: bytes, expected: set[bytes]) -> None:
    assert readings(raw) == expected


def test_a_path_with_too_many_readings_is_ambiguous_and_bounded_in_work() -> None:
    kinds = [b"a;x", b"%2e%2e", b"..%2F", b"b%5C..", b"c//", b"%252F..", b"d;%3B", b"\\x"]
    with pytest.raises(AmbiguousPath):
        readings(b"/" + b"/".join(kinds * 2))
    assert len(readings(b"/a;b/c%2Fd/./e//f\\g")) == 32  # all five kinds of trigger: still served
    for size in (2048, 8192):  # up to max_uri_bytes: a few milliseconds measured, bounded generously here
        hostile = (b"/" + b"/".join(kinds * 1000))[:size]
        started = time.perf_counter()
        with pytest.raises(AmbiguousPath):
            resolve_target(hostile, _TABLE)
        assert time.perf_counter() - started < 1.0
    assert READING_BYTES // 8192 < MAX_READINGS  # long paths get fewer readings


# --- the verdict ---------------------------------------------------------------------------------------------------

_TABLE = RouteTable([RouteConfig(prefix="/admin", upstream="admin"), RouteConfig(prefix="/", upstream="public")])
_SINGLE = RouteTable([RouteConfig(upstream="echo")])


def _route_of(table: RouteTable, query: bytes = b"") -> Callable[[bytes], Route | None]:
    return lambda path: table.match(b"GET", b"x", path, [], query)


def _resolve(target: bytes, table: RouteTable = _TABLE, merge: bool = False) -> tuple[str, bytes, str]:
    route, forwarded, _, verdict = resolve_target(target, table, b"GET", b"x", [], merge)
    assert route is not None
    return route.upstream, forwarded, verdict


@pytest.mark.parametrize(
    ("target", "upstream", "forwarded", "verdict"),
    [
        # one reading: as sent, without a second look
        (b"/admin/users", "admin", b"/admin/users", "as_sent"),
        (b"/admin/users?next=/public", "admin", b"/admin/users?next=/public", "as_sent"),
        (b"/admin?", "admin", b"/admin?", "as_sent"),
        (b"/public/page?x=%2F..%2Fadmin#", None, None, None),  # "#" in the query too: see below
        (b"/public/page?x=%2F..%2Fadmin;y", "public", b"/public/page?x=%2F..%2Fadmin;y", "as_sent"),  # query: data
        # every reading picks the route: as sent, byte for byte
        (b"/%61dmin/x", "admin", b"/%61dmin/x", "as_sent"),
        (b"/admin/.", "admin", b"/admin/.", "as_sent"),
        (b"/admin/a%2Fb", "admin", b"/admin/a%2Fb", "as_sent"),
        (b"/public/a%2Fb/c%2f", "public", b"/public/a%2Fb/c%2f", "as_sent"),
        (b"/public//x//y", "public", b"/public//x//y", "as_sent"),
        (b"/public/a;p=1/b", "public", b"/public/a;p=1/b", "as_sent"),
        (b"/public/a%00b", "public", b"/public/a%00b", "as_sent"),
        (b"/.well-known/x", "public", b"/.well-known/x", "as_sent"),
        # the readings differ by RFC 3986 normalisation only: the canonical path goes, the query kept
        (b"/public/../admin", "admin", b"/admin", "normalised"),
        (b"/public/%2e%2e/admin?q=1", "admin", b"/admin?q=1", "normalised"),
        (b"/admin/x/../../public", "public", b"/public", "normalised"),
        (b"/admin/..", "public", b"/", "normalised"),
        (b"/public/.%2E/%61dmin/x?k", "admin", b"/admin/x?k", "normalised"),
    ],
)
def test_verdict_table(target: bytes, upstream: str | None, forwarded: bytes | None, verdict: str | None) -> None:
    if upstream is None:
        with pytest.raises(FragmentInTarget):
            _resolve(target)
        return
    assert _resolve(target) == (upstream, forwarded, verdict)


@pytest.mark.parametrize(
    "target",
    [
        b"/public/..;/admin/secret",
        b"/admin;x/secret",
        b"//admin/secret",
        b"/public/..%2Fadmin/secret",
        b"/public/..%2fadmin/secret",
        b"/public/..%5Cadmin",
        b"/public/..\\admin",
        b"/public/..%252Fadmin",
        b"/admin%00",
        b"/admin%3Bx",
        b"/admin\\x",
        b"/public/%2e%2e%2fadmin",
        b"/admin/x/..;/..;/public",  # reads as /public on Tomcat, as /admin as sent
    ],
)
def test_readings_that_pick_another_route_are_a_400(target: bytes) -> None:
    with pytest.raises(AmbiguousPath) as info:
        _resolve(target)
    assert (info.value.status_code, info.value.code) == (400, "bad_request")
    assert "ambiguous path" in info.value.detail


@pytest.mark.parametrize(
    "target", [b"/admin#/../public", b"/admin/users#/../../", b"/#", b"/public?x#y", b"/a;#b", b"#/admin"]
)
def test_a_fragment_is_a_400(target: bytes) -> None:
    with pytest.raises(FragmentInTarget) as info:
        _resolve(target, _SINGLE)  # whatever the routes
    assert (info.value.status_code, info.value.code) == (400, "bad_request")


@pytest.mark.parametrize(
    "target", [b"/echo/a%2Fb/c%2f", b"/echo//x//y", b"/echo/a;p=1/b", b"/echo/..%2F..;/x\\y?q=%2F", b"/echo/%252F"]
)
def test_a_single_route_gets_every_target_byte_for_byte(target: bytes) -> None:
    assert _resolve(target, _SINGLE) == ("echo", target, "as_sent")


def test_merge_slashes_forwards_the_merged_path() -> None:
    assert _resolve(b"//admin/secret?x", merge=True) == ("admin", b"/admin/secret?x", "normalised")
    assert _resolve(b"/public//x", merge=True) == ("public", b"/public//x", "as_sent")


def test_no_route_and_above_root() -> None:
    table = RouteTable([RouteConfig(prefix="/admin", upstream="admin")])
    assert resolve_target(b"/public/..;/admin", table)[0] is None  # 404: nothing goes upstream
    with pytest.raises(PathAboveRoot):
        resolve_target(b"/a/../../etc/passwd", _TABLE)


def test_the_path_is_the_canonical_one() -> None:
    _, forwarded, path, _ = resolve_target(b"/%61dmin/./x?q", _TABLE)
    assert (forwarded, path) == (b"/%61dmin/./x?q", b"/admin/x")


_hostile_segment = st.sampled_from(
    [
        "admin",
        "public",
        "",
        ".",
        "..",
        "%2e%2E",
        "..;",
        ";x",
        "a;b=1",
        "%2F",
        "%2f",
        "%5C",
        "\\",
        "..%2F",
        "%252F",
        "%00",
        "%3B",
        "%61dmin",
        "x",
    ]
)
_hostile = st.lists(_hostile_segment, min_size=1, max_size=7).map(lambda parts: ("/" + "/".join(parts)).encode())


@settings(max_examples=400, deadline=None)
@given(_hostile, st.booleans())
def test_what_goes_upstream_reads_as_the_routed_route_every_way(path: bytes, merge: bool) -> None:
    route_of = _route_of(_TABLE)
    try:
        route, forwarded, _, verdict = resolve_target(path, _TABLE, merge_slashes=merge)
    except BadRequest:
        return
    assert route is not None
    sent = forwarded.partition(b"?")[0]
    assert {route_of(reading) for reading in readings(sent)} == {route}
    if verdict == "as_sent":
        assert forwarded == path


def test_every_reading_is_routed_with_the_request_method_host_headers_and_query() -> None:
    table = RouteTable(
        [
            RouteConfig(prefix="/admin", methods=["POST"], upstream="admin-post"),
            RouteConfig(prefix="/admin", host="admin.test", upstream="admin-host"),
            RouteConfig(prefix="/admin", query={"debug": "1"}, upstream="admin-debug"),
            RouteConfig(upstream="public"),
        ]
    )
    target = b"/public/..;/admin"
    assert resolve_target(target, table, b"GET", b"www.test", [])[0].upstream == "public"  # type: ignore[union-attr]
    for method, host, query in ((b"POST", b"www.test", b""), (b"GET", b"admin.test", b""), (b"GET", b"x", b"debug=1")):
        with pytest.raises(AmbiguousPath):
            resolve_target(target + (b"?" + query if query else b""), table, method, host, [])
