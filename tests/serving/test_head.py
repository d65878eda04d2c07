"""The request-head checks llhttp does not make (RFC 9112 §3): pure functions, tested without a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastgate.exceptions import BadRequest, VersionNotSupported
from fastgate.serving.head import check_host, check_target, check_version, is_valid_host

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hostnames = st.lists(labels, min_size=1, max_size=4).map(".".join)
ports = st.integers(0, 65535).map(str)


@given(hostnames, st.one_of(st.none(), ports))
def test_every_hostname_with_an_optional_port_is_a_valid_host(name: str, port: str | None) -> None:
    assert is_valid_host((name if port is None else f"{name}:{port}").encode())


@given(st.binary(max_size=40), st.sampled_from([b" ", b"/", b"@", b"?", b"#", b"\\", b"\t", b'"', b"<"]))
def test_a_host_with_a_character_outside_uri_host_is_refused(prefix: bytes, bad: bytes) -> None:
    assert not is_valid_host(prefix + bad)


@pytest.mark.parametrize(
    "value", [b"[::1]", b"[::1]:8080", b"127.0.0.1", b"127.0.0.1:80", b"a.example", b"xn--bcher-kva.example:443"]
)
def test_literals_and_names_are_valid_hosts(value: bytes) -> None:
    assert is_valid_host(value)


@pytest.mark.parametrize("value", [b"", b":80", b"a:b", b"a:123456", b"[::1", b"::1]", b"[::1]x", b"a[b]", b"a b"])
def test_malformed_hosts_are_refused(value: bytes) -> None:
    assert not is_valid_host(value)


def test_http_1_1_needs_exactly_one_host() -> None:
    with pytest.raises(BadRequest):
        check_host([], "1.1")
    with pytest.raises(BadRequest):
        check_host([b"a", b"a"], "1.1")
    assert check_host([], "1.0") == b""
    assert check_host([b"a:1"], "1.1") == b"a:1"


def test_a_later_http_1_minor_version_is_served_as_1_1() -> None:
    assert check_version("1.2") == "1.1"
    assert check_version("1.0") == "1.0"


@pytest.mark.parametrize("version", ["0.9", "2.0", "3.0", "2.1"])
def test_versions_other_than_1_0_and_1_1_are_not_supported(version: str) -> None:
    with pytest.raises(VersionNotSupported):
        check_version(version)


def test_absolute_form_gives_the_path_and_the_authority() -> None:
    assert check_target(b"GET", b"http://a.example:81/p?q=1") == (b"/p?q=1", b"a.example:81")
    assert check_target(b"GET", b"HTTPS://a.example?q") == (b"/?q", b"a.example")
    assert check_target(b"GET", b"/x") == (b"/x", None)
    assert check_target(b"OPTIONS", b"*") == (b"*", None)


@pytest.mark.parametrize(
    ("method", "target"),
    [
        (b"GET", b"*"),
        (b"CONNECT", b"a:443"),
        (b"CONNECT", b"/"),
        (b"GET", b"http://u@a/"),
        (b"GET", b"ftp://a/"),
        (b"GET", b"a/b"),
    ],
)
def test_other_target_forms_are_refused(method: bytes, target: bytes) -> None:
    with pytest.raises(BadRequest):
        check_target(method, target)
