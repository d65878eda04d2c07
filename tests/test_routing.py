from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgate.config import RouteConfig
from fastgate.routing import RouteTable, host_name, unreachable_routes


def match(table: RouteTable, target: bytes, method: bytes = b"GET", host: bytes = b"", headers: Any = ()) -> Any:
    path, _, query = target.partition(b"?")
    return table.match(method, host, path, headers, query)


def routes(*configs: dict[str, Any]) -> list[RouteConfig]:
    return [RouteConfig(**{"upstream": str(i), **c}) for i, c in enumerate(configs)]


def winner(configs: list[RouteConfig], target: bytes, **kwargs: Any) -> str | None:
    route = match(RouteTable(configs), target, **kwargs)
    return None if route is None else route.upstream


@pytest.fixture
def table() -> RouteTable:
    return RouteTable(
        [
            RouteConfig(prefix="/", upstream="web"),
            RouteConfig(prefix="/api", upstream="api", strip_prefix=True),
            RouteConfig(prefix="/api/v2/", upstream="v2"),
        ]
    )


@pytest.mark.parametrize(
    ("target", "upstream", "forwarded"),
    [
        (b"/", "web", b"/"),
        (b"/apix", "web", b"/apix"),
        (b"/api", "api", b"/"),
        (b"/api?x=1", "api", b"/?x=1"),
        (b"/api/users?x=1", "api", b"/users?x=1"),
        (b"/api/v2/items", "v2", b"/api/v2/items"),
    ],
)
def test_longest_prefix_wins_and_prefix_is_stripped(
    table: RouteTable, target: bytes, upstream: str, forwarded: bytes
) -> None:
    route = match(table, target)
    assert route is not None
    assert route.upstream == upstream
    assert route.upstream_target(target) == forwarded


def test_no_route() -> None:
    assert match(RouteTable([RouteConfig(prefix="/api", upstream="api")]), b"/other") is None


# --- matchers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (b"api.example.com", "exact"),
        (b"API.Example.COM:8443", "exact"),  # case and port do not matter
        (b"api.example.com.", "exact"),  # nor a trailing dot
        (b"www.example.com", "wildcard"),
        (b"www.example.com:80", "wildcard"),
        (b"example.com", "any"),  # the wildcard needs a label in its place
        (b"a.b.example.com", "wildcard"),  # or more than one, as nginx and Envoy match it (issue 17)
        (b"x.api.example.com", "wildcard"),  # a subdomain of an exact host is not that host
        (b"aexample.com", "any"),  # the suffix starts at a dot
        (b"example.org", "any"),
        (b"", "any"),  # no Host header
        (b"[::1]:8080", "ipv6"),
    ],
)
def test_host_exact_then_wildcard_of_any_depth_then_any(host: bytes, expected: str) -> None:
    configs = [
        RouteConfig(upstream="any"),
        RouteConfig(host="*.example.com", upstream="wildcard"),
        RouteConfig(host="Api.Example.com", upstream="exact"),
        RouteConfig(host="[::1]", upstream="ipv6"),
    ]
    assert winner(configs, b"/", host=host) == expected


def test_host_name_drops_port_case_and_trailing_dot() -> None:
    assert host_name(b"Example.COM.:8080") == b"example.com"
    assert host_name(b"[::1]:1") == b"[::1]"


def test_exact_path_matches_only_itself() -> None:
    configs = routes({"path": "/health"})
    assert winner(configs, b"/health?x=1") == "0"
    assert winner(configs, b"/health/") is None
    assert winner(configs, b"/healthz") is None


def test_regex_is_searched_in_the_path_without_the_query() -> None:
    configs = routes({"regex": "^/v[0-9]+/"}, {"regex": r"\.json$"})
    assert winner(configs, b"/v2/items") == "0"
    assert winner(configs, b"/vx/items") is None
    assert winner(configs, b"/a/b.json?x=.json") == "1"
    assert winner(configs, b"/a/b?x=.json") is None


def test_regex_with_text_no_path_can_hold() -> None:
    configs = routes({"regex": "^/日本"}, {"regex": "^/caf\u00e9"})
    assert winner(configs, "/café".encode("latin-1")) == "1"
    assert winner(configs, "/日本".encode()) is None


def test_methods() -> None:
    configs = routes({"prefix": "/api", "methods": ["get", "POST"]}, {"prefix": "/api", "upstream": "other"})
    assert winner(configs, b"/api", method=b"GET") == "0"
    assert winner(configs, b"/api", method=b"POST") == "0"
    assert winner(configs, b"/api", method=b"DELETE") == "other"
    assert winner(routes({"methods": []}), b"/") is None


def test_headers_exact_value_or_present() -> None:
    configs = routes({"headers": {"X-Version": "2"}}, {"headers": {"x-beta": "*"}}, {})
    assert winner(configs, b"/", headers=[(b"x-version", b"2")]) == "0"
    assert winner(configs, b"/", headers=[(b"x-version", b"1"), (b"x-version", b"2")]) == "0"  # any of them
    assert winner(configs, b"/", headers=[(b"x-version", b"3")]) == "2"
    assert winner(configs, b"/", headers=[(b"x-beta", b"")]) == "1"  # present, even empty
    assert winner(configs, b"/", headers=[]) == "2"


def test_query_exact_decoded_value_or_present() -> None:
    configs = routes({"query": {"debug": "1"}}, {"query": {"trace": "*"}}, {"query": {"q": "a b"}}, {})
    assert winner(configs, b"/?debug=1") == "0"
    assert winner(configs, b"/?x=2&debug=%31") == "0"  # compared after percent-decoding
    assert winner(configs, b"/?debug=2") == "3"
    assert winner(configs, b"/?trace") == "1"
    assert winner(configs, b"/?trace=") == "1"
    assert winner(configs, b"/?q=a+b") == "2"
    assert winner(configs, b"/") == "3"


def test_query_is_parsed_only_when_a_route_has_a_query_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise AssertionError("query parsed")

    monkeypatch.setattr("fastgate.routing.parse_qsl", explode)
    table = RouteTable(routes({"prefix": "/a", "headers": {"x": "1"}}, {"prefix": "/"}))
    assert match(table, b"/a?debug=1", headers=[(b"x", b"1")]).upstream == "0"
    assert match(table, b"/b?debug=1").upstream == "1"


# --- precedence ---------------------------------------------------------------------------------------------------


def test_exact_path_before_regex_before_longest_prefix() -> None:
    configs = routes({"prefix": "/api"}, {"prefix": "/api/users"}, {"regex": "^/api/"}, {"path": "/api/users"})
    assert winner(configs, b"/api/users") == "3"
    assert winner(configs, b"/api/users/7") == "2"
    assert winner(configs, b"/api") == "0"  # the regex needs the slash


def test_host_before_path_kind() -> None:
    configs = routes({"path": "/x"}, {"host": "*.example.com", "prefix": "/"}, {"host": "a.example.com", "prefix": "/"})
    assert winner(configs, b"/x", host=b"a.example.com") == "2"
    assert winner(configs, b"/x", host=b"b.example.com") == "1"
    assert winner(configs, b"/x", host=b"example.org") == "0"


def test_priority_first_then_specificity() -> None:
    configs = routes(
        {"path": "/api/x", "host": "a.example.com"}, {"prefix": "/", "priority": 10}, {"prefix": "/api", "priority": -1}
    )
    assert winner(configs, b"/api/x", host=b"a.example.com") == "1"
    configs = routes({"prefix": "/api", "priority": -1}, {"prefix": "/"})
    assert winner(configs, b"/api") == "1"


def test_equal_candidates_keep_file_order() -> None:
    configs = routes({"prefix": "/api", "headers": {"x": "*"}}, {"prefix": "/api", "methods": ["GET"]}, {"regex": "a"})
    assert winner(configs, b"/api", headers=[(b"x", b"1")]) == "2"  # regex before prefix
    configs = routes({"prefix": "/api", "headers": {"x": "*"}}, {"prefix": "/api", "methods": ["GET"]})
    assert winner(configs, b"/api", headers=[(b"x", b"1")]) == "0"
    assert winner(configs, b"/api") == "1"
    assert winner(routes({"regex": "a"}, {"regex": "p"}), b"/api") == "0"


def test_table_lists_routes_in_precedence_order() -> None:
    table = RouteTable(routes({"prefix": "/"}, {"prefix": "/a"}, {"path": "/a"}, {"priority": 1}))
    assert [r.index for r in table.routes] == [3, 2, 1, 0]
    assert "RouteTable" in repr(table)


# --- forwarding ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "target", "forwarded"),
    [
        ({"rewrite": {"regex": "^/old/(.*)", "replacement": r"/new/\1"}}, b"/old/a/b?x=1&y", b"/new/a/b?x=1&y"),
        ({"rewrite": {"regex": "^/old/(.*)", "replacement": r"/new/\1"}}, b"/other?x", b"/other?x"),
        ({"rewrite": {"regex": "^/(.*)", "replacement": r"\1"}}, b"/a", b"/a"),  # a leading '/' is put back
        ({"rewrite": {"path": "/fixed"}}, b"/anything/here?q=1", b"/fixed?q=1"),
        ({"rewrite": {"path": "/fixed"}}, b"/anything?", b"/fixed?"),  # the query is kept byte for byte
        (
            {"prefix": "/api", "strip_prefix": True, "rewrite": {"regex": "^/v1/", "replacement": "/v2/"}},
            b"/api/v1/users?x",
            b"/v2/users?x",
        ),
        ({"prefix": "/api/", "strip_prefix": True, "rewrite": {"path": "/ping"}}, b"/api/x", b"/ping"),
        ({"path": "/health", "strip_prefix": True}, b"/health?full=1", b"/?full=1"),
        ({"prefix": "/api"}, b"/api/%2e%2E/api/x", b"/api/%2e%2E/api/x"),  # nothing to change: raw target
    ],
)
def test_rewrites_apply_to_the_path_and_keep_the_query(config: dict[str, Any], target: bytes, forwarded: bytes) -> None:
    route = RouteTable(routes({"prefix": "/", **config} if "path" not in config else config)).routes[0]
    assert route.upstream_target(target) == forwarded


def test_a_changing_route_works_on_the_normalised_path() -> None:
    route = RouteTable(routes({"prefix": "/api", "strip_prefix": True})).routes[0]
    assert route.upstream_target(b"/x/../%61pi/users?q", b"/api/users") == b"/users?q"


def test_catch_all_fast_path_skips_matching() -> None:
    table = RouteTable([RouteConfig(upstream="all")])
    assert table.catch_all is not None
    assert table.match(b"", b"", b"", None, b"") is table.catch_all  # type: ignore[arg-type]  # never looked at
    assert RouteTable([RouteConfig(upstream="a", methods=["GET"])]).catch_all is None
    assert RouteTable([RouteConfig(upstream="a", host="x.example")]).catch_all is None
    assert RouteTable(routes({}, {"prefix": "/a"})).catch_all is None


# --- unreachable routes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        (
            [{"prefix": "/"}, {"prefix": "/api"}, {"prefix": "/api", "headers": {"x-version": "2"}}],
            ["routes[2]: can never match: shadowed by routes[1] (", "earlier in the file)"],
        ),
        ([{"prefix": "/", "priority": 5}, {"path": "/x"}], ["shadowed by routes[0]", "priority 5 > 0"]),
        ([{"prefix": "/api", "methods": ["GET"]}, {"prefix": "/api/v1", "methods": []}], ["methods list is empty"]),
        ([{"prefix": "/"}, {"regex": "^api/"}], ["routes[1]: can never match: regex '^api/'"]),
        ([{"prefix": "/"}, {"regex": r"\A[a-z]"}], ["regex"]),
        ([{"prefix": "/"}, {"regex": "^(v1)"}], ["regex"]),
        ([{"host": "*.example.com"}, {"host": "a.example.com", "prefix": "/", "priority": -1}], ["routes[0]"]),
        ([{"regex": "^/v[0-9]"}, {"path": "/v1"}, {"prefix": "/"}], []),  # the exact path wins over the regex
        ([{"regex": "^/v[0-9]", "priority": 1}, {"path": "/v1"}], ["shadowed by routes[0]"]),
        ([{"path": "/a"}, {"path": "/a", "query": {"x": "*"}}], ["routes[1]"]),
        ([{"prefix": "/a", "query": {"x": "1"}}, {"prefix": "/a/b", "query": {"x": "1", "y": "*"}}], []),
        ([{"prefix": "/a", "priority": 1, "query": {"x": "1"}}, {"prefix": "/a/b", "query": {"x": "1"}}], ["[0]"]),
    ],
)
def test_unreachable_routes_are_reported(configs: list[dict[str, Any]], expected: list[str]) -> None:
    problems = unreachable_routes(routes(*configs))
    if not expected:
        assert problems == []
    else:
        assert len(problems) == 1
        for part in expected:
            assert part in problems[0]


@pytest.mark.parametrize(
    "configs",
    [
        [{"prefix": "/api"}, {"prefix": "/"}],  # more specific first: fine
        [{"prefix": "/api/"}, {"prefix": "/api"}],  # /api/ does not match /api
        [{"prefix": "/api", "methods": ["GET"]}, {"prefix": "/api", "methods": ["GET", "POST"]}],
        [{"prefix": "/api", "methods": ["GET"]}, {"prefix": "/api", "methods": ["POST"]}],
        [{"prefix": "/a", "headers": {"x": "1"}}, {"prefix": "/a", "headers": {"x": "*"}}],
        [{"prefix": "/a", "headers": {"x": "1"}}, {"prefix": "/a", "headers": {"y": "1"}}],
        [{"host": "a.example.com"}, {"host": "b.example.com"}],
        [{"host": "*.example.com", "prefix": "/"}, {"host": "a.b.example.com"}],  # the exact host is tried first
        [{"host": "*.example.com"}, {"host": "*.a.example.com"}],  # the longer wildcard is tried first
        [{"prefix": "/"}, {"regex": "^/api"}],  # the regex is tried before the prefix
        [{"regex": "^/a"}, {"regex": "^/b"}],
        [{"prefix": "/"}, {"regex": "(?m)^api"}],
        [{"prefix": "/"}, {"regex": "^[^a]"}],
        [{"prefix": "/"}, {"regex": "api"}],
    ],
)
def test_no_false_warnings(configs: list[dict[str, Any]]) -> None:
    assert unreachable_routes(routes(*configs)) == []


def test_merge_slashes_makes_double_slash_routes_unreachable() -> None:
    configs = routes({"prefix": "/a//b"})
    assert unreachable_routes(configs) == []
    assert "merge_slashes" in unreachable_routes(configs, merge_slashes=True)[0]


# --- the compiled table agrees with the documented precedence -----------------------------------------------------


def _reference(configs: list[RouteConfig], method: bytes, host: bytes, path: bytes, headers: Any, query: bytes) -> Any:
    """The documented rules, applied by brute force: the matching route with the smallest precedence key."""
    name = host.lower().partition(b":")[0].rstrip(b".").decode()
    params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    found = []
    for index, c in enumerate(configs):
        if c.host is not None:
            if c.host.startswith("*."):
                if not name.endswith(c.host[1:]) or len(name) == len(c.host) - 1:
                    continue
            elif c.host != name:
                continue
        p = path.decode("latin-1")
        if c.path is not None and p != c.path:
            continue
        if c.regex is not None and not re.search(c.regex, p):
            continue
        if c.prefix is not None and not (
            c.prefix == "/"
            or p == c.prefix
            or (p.startswith(c.prefix) and (c.prefix[-1] == "/" or p[len(c.prefix)] == "/"))
        ):
            continue
        if c.methods is not None and method.decode() not in c.methods:
            continue
        sent = [(k.decode(), v.decode()) for k, v in headers]
        if any(
            not any(k == n and v in (want, v if want == "*" else None) for k, v in sent)
            for n, want in (c.headers or {}).items()
        ):
            continue
        if any(
            not any(k == n and v in (want, v if want == "*" else None) for k, v in params)
            for n, want in (c.query or {}).items()
        ):
            continue
        host_kind = 2 if c.host is None else 1 if c.host.startswith("*.") else 0
        suffix = -len(c.host) if host_kind == 1 and c.host else 0  # the longer wildcard first
        path_kind = 0 if c.path is not None else 1 if c.regex is not None else 2
        found.append(((-c.priority, host_kind, suffix, path_kind, -len(c.prefix or ""), index), c.upstream))
    return min(found)[1] if found else None


_route = st.fixed_dictionaries(
    {},
    optional={
        "host": st.sampled_from(["a.example.com", "*.example.com", "b.example.com", "*.a.example.com"]),
        "methods": st.sampled_from([["GET"], ["GET", "POST"], []]),
        "headers": st.sampled_from([{"x-v": "2"}, {"x-v": "*"}]),
        "query": st.sampled_from([{"d": "1"}, {"d": "*"}]),
        "priority": st.sampled_from([1, -1, 0]),
    },
).flatmap(
    lambda base: st.one_of(
        st.just(base),
        st.sampled_from(["/", "/api", "/api/", "/api/v1", "/x"]).map(lambda p: {**base, "prefix": p}),
        st.sampled_from(["/api", "/api/v1/users", "/"]).map(lambda p: {**base, "path": p}),
        st.sampled_from(["^/api/v[0-9]+", "users$"]).map(lambda r: {**base, "regex": r}),
    )
)
_request = st.tuples(
    st.sampled_from([b"GET", b"POST"]),
    st.sampled_from(
        [b"a.example.com", b"A.Example.com:8080", b"b.example.com", b"x.a.example.com", b"y.x.a.example.com", b""]
        + [b"other", b"example.com", b"x.b.example.com"]
    ),
    st.sampled_from([b"/", b"/api", b"/api/", b"/api/v1", b"/api/v1/users", b"/apix", b"/x/y", b"/api//v1"]),
    st.sampled_from([[], [(b"x-v", b"2")], [(b"x-v", b"3")]]),
    st.sampled_from([b"", b"d=1", b"d=2", b"d", b"e=1&d=1"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_route, min_size=1, max_size=8), st.lists(_request, min_size=1, max_size=10))
def test_table_agrees_with_the_documented_rules_and_warnings_are_sound(
    raw: list[dict[str, Any]], requests: list[Any]
) -> None:
    configs = routes(*raw)
    table = RouteTable(configs)
    shadowed = {int(p.split("]")[0].removeprefix("routes[")) for p in unreachable_routes(configs)}
    for request in requests:
        expected = _reference(configs, *request)
        route = table.match(*request)
        assert (route.upstream if route else None) == expected
        assert expected is None or int(expected) not in shadowed


def test_a_wildcard_matches_any_depth_and_the_longest_wildcard_wins() -> None:
    configs = routes(
        {"host": "*.example.com", "prefix": "/"},
        {"host": "*.a.example.com", "prefix": "/api"},
        {"host": "b.a.example.com", "path": "/only"},
    )
    assert winner(configs, b"/x", host=b"c.b.a.example.com") == "0"  # /x: only the shorter wildcard has it
    assert winner(configs, b"/api/x", host=b"c.b.a.example.com") == "1"
    assert winner(configs, b"/api/x", host=b"b.a.example.com") == "1"  # the exact host falls through to wildcards
    assert winner(configs, b"/api/x", host=b"a.example.com") == "0"  # *.a.example.com needs a label before a.
    assert winner(configs, b"/only", host=b"B.A.Example.COM.:80") == "2"
    assert winner(configs, b"/", host=b"example.com") is None
