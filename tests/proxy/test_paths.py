"""Path normalisation for route matching (proxy/paths.py): the bypass vectors, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastgate.proxy.paths import PathAboveRoot, normalize_path


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
