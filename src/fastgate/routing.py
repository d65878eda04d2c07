"""Route table: which route a request goes to. Pure: plain values in, a :class:`Route` (or ``None``) out.

How this works. Routes are put in one precedence order (docs/config.md, "Which route wins"):

    higher ``priority`` -> exact host -> wildcard host -> no host -> exact ``path`` -> ``regex`` -> longer
    ``prefix`` -> earlier in the file

and the first route in that order whose matchers all accept the request wins. ``match`` does not walk the whole
list. The table is compiled once into *buckets*, one per exact host, one per wildcard suffix and one for requests
whose host no route names; each bucket already holds the host-less routes merged in order, so the request's host
costs one or two dict look-ups. A bucket is a short list of *tiers* (one per priority and host kind, usually one
tier in all), and a tier indexes its routes: exact paths in a dict, regexes in a list (the only routes that run a
regex, compiled once here), prefixes in a dict keyed by the prefix, looked up with the few candidates a path
allows (itself, then each ``/``-boundary from the longest), so 100 prefixes cost a handful of look-ups, not 100
comparisons. The query string is parsed, and the headers indexed, only when a route with ``query`` or ``headers``
is reached. A table of one catch-all route (``fastgate proxy``) returns it without looking at the request at all.

``unreachable_routes`` reports routes that can never win; ``fastgate check`` prints them as warnings.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from .config import Rewrite, RouteConfig

__all__ = ["Route", "RouteTable", "unreachable_routes"]

Headers = Iterable[tuple[bytes, bytes]]

_EXACT_HOST, _WILDCARD_HOST, _ANY_HOST = 0, 1, 2
_EXACT_PATH, _REGEX, _PREFIX = 0, 1, 2


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """One compiled route. ``config`` is the :class:`RouteConfig` it came from, ``index`` its place in the file."""

    index: int
    config: RouteConfig = field(repr=False)
    upstream: str
    host: bytes | None
    prefix: bytes | None
    path: bytes | None
    regex: re.Pattern[str] | None
    methods: frozenset[bytes] | None
    headers: tuple[tuple[bytes, bytes | None], ...]  # None: the header must be present
    query: tuple[tuple[str, str | None], ...]  # None: the parameter must be present
    strip_prefix: bool
    rewrite: Rewrite | None
    priority: int

    @classmethod
    def from_config(cls, index: int, config: RouteConfig) -> Route:
        return cls(
            index=index,
            config=config,
            upstream=config.upstream,
            host=config.host.encode("ascii") if config.host is not None else None,
            prefix=config.prefix.encode("ascii") if config.prefix is not None else None,
            path=config.path.encode("ascii") if config.path is not None else None,
            regex=re.compile(config.regex) if config.regex is not None else None,
            methods=frozenset(m.encode("ascii") for m in config.methods) if config.methods is not None else None,
            headers=tuple(
                (name.encode("latin-1"), None if value == "*" else value.encode("latin-1"))
                for name, value in (config.headers or {}).items()
            ),
            query=tuple((name, None if value == "*" else value) for name, value in (config.query or {}).items()),
            strip_prefix=config.strip_prefix,
            rewrite=config.rewrite,
            priority=config.priority,
        )

    @property
    def host_kind(self) -> int:
        if self.host is None:
            return _ANY_HOST
        return _WILDCARD_HOST if self.host.startswith(b"*.") else _EXACT_HOST

    @property
    def path_kind(self) -> int:
        return _EXACT_PATH if self.path is not None else _REGEX if self.regex is not None else _PREFIX

    @property
    def sort_key(self) -> tuple[int, int, int, int, int]:
        """Precedence: the route with the smallest key among those that match wins."""
        return (-self.priority, self.host_kind, self.path_kind, -len(self.prefix or b""), self.index)

    @property
    def plain(self) -> bool:
        """No method, header or query matcher: the path (and host) decide alone."""
        return self.methods is None and not self.headers and not self.query

    def upstream_target(self, target: bytes, path: bytes | None = None) -> bytes:
        """The target to send upstream: ``strip_prefix``, then ``rewrite``, applied to the path; the query is kept.

        >>> route.upstream_target(b"/api/users?x=1")  # prefix /api, strip_prefix  # doctest: +SKIP
        b'/users?x=1'

        ``path`` is the normalised path the route matched; when given, a route that changes the path works on it
        (so ``/api/../api/x`` strips like ``/api/x``). A route that changes nothing returns ``target`` as is.
        """
        if not self.strip_prefix and self.rewrite is None:
            return target
        raw_path, sep, query = target.partition(b"?")
        new = raw_path if path is None else path
        if self.strip_prefix:
            strip = (self.prefix if self.prefix is not None else self.path or b"").rstrip(b"/")
            if strip and new.startswith(strip):
                rest = new[len(strip) :]
                new = rest if rest.startswith(b"/") else b"/" + rest
        if self.rewrite is not None:
            new = self.rewrite.apply(new)
        return new + sep + query


class _Lazy:
    """The request's headers and query, indexed on first use only."""

    __slots__ = ("_headers", "_query", "headers", "query")

    def __init__(self, headers: Headers, query: bytes) -> None:
        self._headers = headers
        self._query = query
        self.headers: dict[bytes, list[bytes]] | None = None
        self.query: dict[str, list[str]] | None = None

    def header(self, name: bytes) -> list[bytes]:
        if self.headers is None:
            self.headers = {}
            for key, value in self._headers:
                self.headers.setdefault(key.lower(), []).append(value)
        return self.headers.get(name, [])

    def param(self, name: str) -> list[str]:
        if self.query is None:
            self.query = {}
            for key, value in parse_qsl(self._query.decode("latin-1"), keep_blank_values=True):
                self.query.setdefault(key, []).append(value)
        return self.query.get(name, [])


def _accepts(route: Route, method: bytes, lazy: _Lazy) -> bool:
    if route.methods is not None and method not in route.methods:
        return False
    for name, value in route.headers:
        values = lazy.header(name)
        if not values or (value is not None and value not in values):
            return False
    for key, expected in route.query:
        params = lazy.param(key)
        if not params or (expected is not None and expected not in params):
            return False
    return True


@dataclass(slots=True)
class _Tier:
    exact: dict[bytes, list[Route]] = field(default_factory=dict)
    regex: list[Route] = field(default_factory=list)
    prefixes: dict[bytes, list[Route]] = field(default_factory=dict)


def _tiers(routes: list[Route]) -> tuple[_Tier, ...]:
    tiers: list[_Tier] = []
    current: tuple[int, int] | None = None
    for route in sorted(routes, key=lambda r: r.sort_key):
        if (route.priority, route.host_kind) != current:
            current = (route.priority, route.host_kind)
            tiers.append(_Tier())
        tier = tiers[-1]
        if route.path is not None:
            tier.exact.setdefault(route.path, []).append(route)
        elif route.regex is not None:
            tier.regex.append(route)
        else:
            assert route.prefix is not None
            tier.prefixes.setdefault(route.prefix, []).append(route)
    return tuple(tiers)


def _prefix_candidates(path: bytes) -> list[bytes]:
    """Every prefix that can match ``path``, longest first: itself, then ``/a/b/``, ``/a/b``, ... ``/``."""
    candidates = [path]
    end = len(path)
    i = path.rfind(b"/")
    while i > 0:
        if i + 1 != end:
            candidates.append(path[: i + 1])
        candidates.append(path[:i])
        i = path.rfind(b"/", 0, i)
    if path != b"/":
        candidates.append(b"/")
    return candidates


def host_name(host: bytes) -> bytes:
    """A Host header as routes compare it: lower case, without the port or a trailing dot."""
    host = host.lower()
    if host.startswith(b"["):
        return host[: host.find(b"]") + 1]
    name = host.partition(b":")[0]
    return name[:-1] if name.endswith(b".") else name


class RouteTable:
    """The compiled routes of a config.

    >>> table = RouteTable([RouteConfig(prefix="/api", upstream="api"), RouteConfig(upstream="web")])
    >>> table.match(b"GET", b"example.com", b"/api/users", [], b"").upstream
    'api'
    """

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        compiled = [Route.from_config(index, config) for index, config in enumerate(routes)]
        self.routes: tuple[Route, ...] = tuple(sorted(compiled, key=lambda r: r.sort_key))  # precedence order
        any_host = [r for r in compiled if r.host is None]
        wildcards: dict[bytes, list[Route]] = {}
        exact: dict[bytes, list[Route]] = {}
        for route in compiled:
            if route.host is not None:
                if route.host.startswith(b"*."):
                    wildcards.setdefault(route.host[2:], []).append(route)
                else:
                    exact.setdefault(route.host, []).append(route)
        self._any_host = _tiers(any_host)
        self._wildcard_hosts = {suffix: _tiers(hosted + any_host) for suffix, hosted in wildcards.items()}
        self._exact_hosts = {
            host: _tiers(hosted + wildcards.get(host.partition(b".")[2], []) + any_host)
            for host, hosted in exact.items()
        }
        self.uses_host = bool(wildcards or exact)

        # one catch-all route (``fastgate proxy``): no matching at all on the hot path
        only = compiled[0] if len(compiled) == 1 else None
        self.catch_all = only if only is not None and only.prefix == b"/" and only.host is None and only.plain else None

    def match(self, method: bytes, host: bytes, path: bytes, headers: Headers = (), query: bytes = b"") -> Route | None:
        """The winning route for a request, or ``None`` (404).

        ``host`` is the Host header as sent (port and case do not matter), ``path`` the normalised path
        (proxy/paths.py) without the query, ``headers`` the ASGI header list and ``query`` the raw query string.
        """
        if self.catch_all is not None:
            return self.catch_all
        tiers = self._any_host
        if self.uses_host and host:
            name = host_name(host)
            found = self._exact_hosts.get(name)
            if found is None:
                dot = name.find(b".")
                found = self._wildcard_hosts.get(name[dot + 1 :]) if dot > 0 else None
            if found is not None:
                tiers = found
        lazy: _Lazy | None = None
        candidates: list[bytes] | None = None
        text: str | None = None
        for tier in tiers:
            if tier.exact:
                for route in tier.exact.get(path, ()):
                    if route.plain or _accepts(route, method, lazy := lazy or _Lazy(headers, query)):
                        return route
            for route in tier.regex:
                if text is None:
                    text = path.decode("latin-1")
                assert route.regex is not None
                if route.regex.search(text) is not None and (
                    route.plain or _accepts(route, method, lazy := lazy or _Lazy(headers, query))
                ):
                    return route
            if tier.prefixes:
                if candidates is None:
                    candidates = _prefix_candidates(path)
                for candidate in candidates:
                    for route in tier.prefixes.get(candidate, ()):
                        if route.plain or _accepts(route, method, lazy := lazy or _Lazy(headers, query)):
                            return route
        return None

    def __repr__(self) -> str:
        def matcher(r: Route) -> str:
            where = (r.path or r.prefix or b"").decode() if r.regex is None else f"~{r.regex.pattern}"
            return f"{r.host.decode() if r.host else ''}{where}"

        return f"<RouteTable {[(matcher(r), r.upstream) for r in self.routes]}>"


# --- routes that can never win ---------------------------------------------------------------------------------------


def _prefix_covers(prefix: bytes, path: bytes) -> bool:
    """True when ``prefix`` matches ``path``, and so, when ``path`` is itself a prefix, everything under it."""
    if prefix == b"/" or path == prefix:
        return True
    return path.startswith(prefix) and (prefix.endswith(b"/") or path[len(prefix) : len(prefix) + 1] == b"/")


def _covers(a: Route, b: Route) -> bool:
    """Conservatively: does every request ``b`` matches also match ``a``? (False when unsure.)"""
    if a.host is not None and a.host != b.host:
        if not (a.host.startswith(b"*.") and b.host is not None and b.host_kind == _EXACT_HOST):
            return False
        if b.host.partition(b".")[2] != a.host[2:]:
            return False
    if a.prefix is not None:
        if b.regex is not None:
            if a.prefix != b"/":
                return False
        elif not _prefix_covers(a.prefix, b.prefix if b.prefix is not None else b.path or b""):
            return False
    elif a.path is not None:
        if b.path != a.path:
            return False
    elif a.regex is not None:
        if b.regex is not None:
            if b.regex.pattern != a.regex.pattern or b.regex.flags != a.regex.flags:
                return False
        elif b.path is None or a.regex.search(b.path.decode("latin-1")) is None:
            return False
    if a.methods is not None and (b.methods is None or not b.methods <= a.methods):
        return False
    b_headers = dict(b.headers)
    for name, value in a.headers:
        if name not in b_headers or (value is not None and b_headers[name] != value):
            return False
    b_query = dict(b.query)
    for key, expected in a.query:
        if key not in b_query or (expected is not None and b_query[key] != expected):
            return False
    return True


def _why_first(a: Route, b: Route) -> str:
    if a.priority != b.priority:
        return f"priority {a.priority} > {b.priority}"
    if a.host_kind != b.host_kind:
        return "a more specific host"
    if a.path_kind != b.path_kind:
        return (
            {_EXACT_PATH: "an exact path", _REGEX: "a regex"}[a.path_kind]
            + " is tried before "
            + ("a regex" if b.path_kind == _REGEX else "a prefix")
        )
    if a.prefix is not None and b.prefix is not None and len(a.prefix) != len(b.prefix):
        return "a longer prefix"
    return "earlier in the file"


_AT_START = ("AT_BEGINNING", "AT_BEGINNING_STRING")


def _first_char_excludes_slash(items: list[tuple[Any, Any]]) -> bool:
    if not items:
        return False
    op, arg = items[0]
    name = str(op)
    if name == "LITERAL":
        return bool(arg != ord("/"))
    if name == "NOT_LITERAL":
        return bool(arg == ord("/"))
    if name == "SUBPATTERN":
        return _first_char_excludes_slash(list(arg[-1]))
    if name == "IN":
        # a plain class of literals and ranges only (no negation, no \w-style categories)
        for item_op, item_arg in arg:
            kind = str(item_op)
            if kind == "LITERAL" and item_arg != ord("/"):
                continue
            if kind == "RANGE" and not item_arg[0] <= ord("/") <= item_arg[1]:
                continue
            return False
        return True
    return False


def _regex_never_matches_a_path(pattern: str) -> bool:
    """True when an anchored regex's first character can never be the '/' every path starts with."""
    parser = importlib.import_module("re._parser")  # sre_parse's home since 3.11 (the old name warns)
    try:
        parsed = parser.parse(pattern)
    except re.error:
        return False
    if parsed.state.flags & re.MULTILINE:
        return False
    items = list(parsed)
    if not items or str(items[0][0]) != "AT" or str(items[0][1]) not in _AT_START:
        return False
    return _first_char_excludes_slash(items[1:])


def unreachable_routes(routes: Sequence[RouteConfig], *, merge_slashes: bool = False) -> list[str]:
    """One line per route that can never win, as ``routes[3]: can never match: <why>``; conservative.

    >>> unreachable_routes([RouteConfig(upstream="a"), RouteConfig(prefix="/api", methods=[], upstream="b")])
    ['routes[1]: can never match: its methods list is empty']
    """
    compiled = [Route.from_config(index, config) for index, config in enumerate(routes)]
    ordered = sorted(compiled, key=lambda r: r.sort_key)
    problems: list[str] = []
    for route in compiled:
        where = f"routes[{route.index}]: can never match"
        if route.methods is not None and not route.methods:
            problems.append(f"{where}: its methods list is empty")
            continue
        if route.regex is not None and _regex_never_matches_a_path(route.regex.pattern):
            problems.append(f"{where}: regex {route.regex.pattern!r} cannot match a path, which starts with '/'")
            continue
        matcher = route.prefix if route.prefix is not None else route.path
        if merge_slashes and matcher is not None and b"//" in matcher:
            key = "prefix" if route.prefix is not None else "path"
            problems.append(f"{where}: server.merge_slashes is on, so no request path has the '//' of its {key}")
            continue
        for other in ordered:
            if other is route:
                break
            if _covers(other, route):
                reason = _why_first(other, route)
                problems.append(
                    f"{where}: shadowed by routes[{other.index}] (which matches every request this one matches"
                    f" and wins: {reason})"
                )
                break
    return problems
