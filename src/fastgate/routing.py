"""Route table: which route a request goes to. Pure: plain values in, a :class:`Route` (or ``None``) out.

How this works. Routes are put in one precedence order (docs/config.md, "Which route wins"):

    higher ``priority`` -> exact host -> wildcard host (longer suffix first) -> no host -> exact ``path`` ->
    ``regex`` -> longer ``prefix`` -> earlier in the file

and the first route in that order whose matchers all accept the request wins. ``match`` does not walk the whole
list. The table is compiled once into *buckets*, one per exact host, one per wildcard suffix and one for requests
whose host no route names; each bucket already holds the routes of every wildcard that also matches its hosts and
the host-less routes, merged in order, so the request's host costs one dict look-up per label. A wildcard
``*.example.com`` matches a host with any number of labels in place of ``*`` (``a.example.com``,
``a.b.example.com``, not ``example.com``), as nginx's and Envoy's do; the longest matching suffix is the most
specific. A bucket is a short list of *tiers* (one per priority and host kind, usually one
tier in all), and a tier indexes its routes: exact paths in a dict; regexes in a list (the only routes that run a
regex, compiled once here, and skipped without running when the path does not start with the regex's literal
start, ``/v1/`` of ``^/v1/(.*)``); prefixes in a dict keyed by the prefix, looked up only at the tier's distinct
prefix lengths where the path has a ``/`` boundary, so 100 prefixes cost a few look-ups, not 100 comparisons.
Method, header and query matchers are checked only on a route the path already matched, and the query string is
parsed only when such a route has ``query``. A table of one catch-all route (``fastgate proxy``) returns it without
looking at the request at all.

``unreachable_routes`` reports routes that can never win; ``fastgate check`` prints them as warnings.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from .config import Rewrite, RouteConfig

__all__ = ["Route", "RouteTable", "unreachable_routes"]

Headers = Sequence[tuple[bytes, bytes]]

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
    plain: bool  # no method, header or query matcher: the path (and host) decide alone
    regex_literal: bytes  # what a path must start with for ``regex`` to have a chance (b"" when unknown)

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
            plain=config.methods is None and not config.headers and not config.query,
            regex_literal=_literal_start(config.regex).encode("latin-1") if config.regex is not None else b"",
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
    def host_rank(self) -> tuple[int, int]:
        """The host's specificity: its kind, then (for wildcards) the longer suffix first."""
        kind = self.host_kind
        return (kind, -len(self.host or b"") if kind == _WILDCARD_HOST else 0)

    @property
    def sort_key(self) -> tuple[int, int, int, int, int, int]:
        """Precedence: the route with the smallest key among those that match wins."""
        return (-self.priority, *self.host_rank, self.path_kind, -len(self.prefix or b""), self.index)

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


def _accepts(route: Route, method: bytes, headers: Headers, query: bytes, parsed: list[dict[str, list[str]]]) -> bool:
    """The method, header and query matchers; ``parsed`` caches the query for the rest of this match."""
    if route.methods is not None and method not in route.methods:
        return False
    for name, expected in route.headers:
        for key, value in headers:  # ASGI header names are lower case
            if key == name and (expected is None or value == expected):
                break
        else:
            return False
    if route.query:
        if not parsed:
            params: dict[str, list[str]] = {}
            for param, given in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                params.setdefault(param, []).append(given)
            parsed.append(params)
        for param, wanted in route.query:
            values = parsed[0].get(param)
            if not values or (wanted is not None and wanted not in values):
                return False
    return True


@dataclass(slots=True)
class _Tier:
    exact: dict[bytes, list[Route]] = field(default_factory=dict)
    regex: list[Route] = field(default_factory=list)
    prefixes: dict[bytes, list[Route]] = field(default_factory=dict)
    lengths: tuple[int, ...] = ()  # of the prefixes other than "/", longest first
    root: tuple[Route, ...] = ()  # prefix "/": matches every path


def _tiers(routes: list[Route]) -> tuple[_Tier, ...]:
    tiers: list[_Tier] = []
    current: tuple[int, tuple[int, int]] | None = None
    for route in sorted(routes, key=lambda r: r.sort_key):
        if (route.priority, route.host_rank) != current:
            current = (route.priority, route.host_rank)
            tiers.append(_Tier())
        tier = tiers[-1]
        if route.path is not None:
            tier.exact.setdefault(route.path, []).append(route)
        elif route.regex is not None:
            tier.regex.append(route)
        else:
            assert route.prefix is not None
            tier.prefixes.setdefault(route.prefix, []).append(route)
    for tier in tiers:
        tier.root = tuple(tier.prefixes.pop(b"/", ()))
        tier.lengths = tuple(sorted({len(prefix) for prefix in tier.prefixes}, reverse=True))
    return tuple(tiers)


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

        def covering(name: bytes) -> list[Route]:
            # the routes of every wildcard matching a host ``name`` (or a wildcard suffix ``name``): its suffixes
            return [r for suffix, hosted in wildcards.items() if name.endswith(b"." + suffix) for r in hosted]

        self._any_host = _tiers(any_host)
        self._wildcard_hosts = {
            suffix: _tiers(hosted + covering(suffix) + any_host) for suffix, hosted in wildcards.items()
        }
        self._exact_hosts = {host: _tiers(hosted + covering(host) + any_host) for host, hosted in exact.items()}
        self.uses_host = bool(wildcards or exact)

        # one catch-all route (``fastgate proxy``): no matching at all on the hot path
        only = compiled[0] if len(compiled) == 1 else None
        self.catch_all = only if only is not None and only.prefix == b"/" and only.host is None and only.plain else None

    def match(self, method: bytes, host: bytes, path: bytes, headers: Headers = (), query: bytes = b"") -> Route | None:
        """The winning route for a request, or ``None`` (404).

        ``host`` is the Host header as sent (port and case do not matter), ``path`` the normalised path
        (proxy/paths.py) without the query, ``headers`` the ASGI header list (lower-case names) and ``query`` the raw
        query string. Measured cost: bench/routing.py.
        """
        if self.catch_all is not None:
            return self.catch_all
        tiers = self._any_host
        if self.uses_host and host:
            name = host_name(host)
            found = self._exact_hosts.get(name)
            if found is None and self._wildcard_hosts:
                # the longest wildcard suffix first: its bucket holds the shorter ones that match too
                dot = name.find(b".")
                while dot > 0 and found is None:
                    found = self._wildcard_hosts.get(name[dot + 1 :])
                    dot = name.find(b".", dot + 1)
            if found is not None:
                tiers = found
        parsed: list[dict[str, list[str]]] = []
        text: str | None = None
        size = len(path)
        for tier in tiers:
            if tier.exact:
                for route in tier.exact.get(path, ()):
                    if route.plain or _accepts(route, method, headers, query, parsed):
                        return route
            for route in tier.regex:
                if not path.startswith(route.regex_literal):
                    continue  # `^/v1/...` cannot match: no need to run it
                if text is None:
                    text = path.decode("latin-1")
                assert route.regex is not None
                if route.regex.search(text) is not None and (
                    route.plain or _accepts(route, method, headers, query, parsed)
                ):
                    return route
            for length in tier.lengths:
                # a prefix matches the path itself and what follows it after a "/" (or its own trailing "/")
                if length > size or (length < size and path[length] != 47 and path[length - 1] != 47):
                    continue
                for route in tier.prefixes.get(path[:length], ()):
                    if route.plain or _accepts(route, method, headers, query, parsed):
                        return route
            for route in tier.root:
                if route.plain or _accepts(route, method, headers, query, parsed):
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
        if not b.host.endswith(a.host[1:]):  # "*.example.com" matches "a.example.com", "a.b.example.com"
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


def _parse(pattern: str) -> Any:
    return importlib.import_module("re._parser").parse(pattern)  # sre_parse's home since 3.11 (the old name warns)


def _literal_start(pattern: str) -> str:
    """The literal text an anchored regex starts with (``^/v1/(.*)`` -> ``/v1/``); "" when there is none or when
    flags make that unsafe."""
    parsed = _parse(pattern)
    if parsed.state.flags & (re.MULTILINE | re.IGNORECASE):
        return ""
    items = list(parsed)
    if not items or str(items[0][0]) != "AT" or str(items[0][1]) not in _AT_START:
        return ""
    literal = ""
    for op, arg in items[1:]:
        if str(op) != "LITERAL" or arg > 0xFF:  # paths are matched as latin-1 text
            break
        literal += chr(arg)
    return literal


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
    parsed = _parse(pattern)
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
