"""The built-in plugins: header rules for either direction and a path rewrite, through the same interface as yours.

A route's ``request_headers:`` and ``response_headers:`` keys become the first plugins of its chain
(:func:`fastgate.plugins.registry.route_plugins`); the same plugins can be named in ``plugins:`` as
``request_headers``, ``response_headers`` and ``rewrite``. Options are validated by the config models
(``HeaderRules``, ``Rewrite``), so a bad option fails the way a bad route key does. The work per request is
precomputed here: names and values are bytes, and a rule list is applied in one pass over the headers.
"""

from __future__ import annotations

from typing import Any

from ..config import HeaderRules
from ..config import Rewrite as RewriteRule
from .base import Plugin, RequestContext, ResponseHead

__all__ = ["RequestHeaders", "ResponseHeaders", "Rewrite"]


class _Rules:
    """``remove``, then ``set`` (replaces), then ``add`` (appends), on a raw header list, in one pass."""

    __slots__ = ("drop", "set", "add")

    def __init__(self, rules: HeaderRules) -> None:
        self.set = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in rules.set.items()]
        self.add = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in rules.add.items()]
        self.drop = frozenset(name.encode("latin-1") for name in rules.remove) | {name for name, _ in self.set}

    def apply(self, raw: list[tuple[bytes, bytes]]) -> None:
        drop = self.drop
        for name, _ in raw:  # most requests carry none of them: no new list then (a comprehension is a frame)
            if name in drop:
                raw[:] = [pair for pair in raw if pair[0] not in drop]
                break
        raw.extend(self.set)
        raw.extend(self.add)


def _rules(options: dict[str, Any]) -> _Rules:
    return _Rules(HeaderRules.model_validate(options))


class RequestHeaders(Plugin):
    """``{set, add, remove}`` on the request going upstream (the route's ``request_headers:``)."""

    def __init__(self, **options: Any) -> None:
        self._rules = _rules(options)

    async def on_request(self, request: RequestContext) -> None:
        self._rules.apply(request.headers.raw)


class ResponseHeaders(Plugin):
    """``{set, add, remove}`` on the response going to the client (the route's ``response_headers:``)."""

    def __init__(self, **options: Any) -> None:
        self._rules = _rules(options)

    async def on_response(self, request: RequestContext, response: ResponseHead) -> None:
        self._rules.apply(response.headers.raw)


class Rewrite(Plugin):
    """``{regex, replacement}`` or ``{path}`` on the path going upstream, query kept (as the route's ``rewrite:``).

    The route key itself is applied while routing (``Route.upstream_target``, on the normalised path, with
    ``strip_prefix``); this plugin works on the target as the plugins before it left it.
    """

    def __init__(self, **options: Any) -> None:
        self._rule = RewriteRule.model_validate(options)

    async def on_request(self, request: RequestContext) -> None:
        path, sep, query = request.target.partition(b"?")
        request.target = self._rule.apply(path) + sep + query
