"""Route table: the first route whose path prefix matches the request wins (longest prefixes first). Pure."""

from __future__ import annotations

from dataclasses import dataclass

from .config import RouteConfig


@dataclass(frozen=True, slots=True)
class Route:
    prefix: bytes
    upstream: str
    strip_prefix: bool
    request_buffering: bool = False

    def matches(self, path: bytes) -> bool:
        prefix = self.prefix
        if prefix == b"/" or path == prefix:
            return True
        return path.startswith(prefix) and (prefix.endswith(b"/") or path[len(prefix) : len(prefix) + 1] in b"/?")

    def upstream_target(self, target: bytes) -> bytes:
        """The request target with this route's prefix taken off (when ``strip_prefix``)."""
        if not self.strip_prefix or self.prefix == b"/":
            return target
        rest = target[len(self.prefix.rstrip(b"/")) :]
        return rest if rest.startswith(b"/") else b"/" + rest


class RouteTable:
    def __init__(self, routes: list[RouteConfig]) -> None:
        self.routes = sorted(
            (Route(r.prefix.encode("ascii"), r.upstream, r.strip_prefix, r.request_buffering) for r in routes),
            key=lambda r: len(r.prefix),
            reverse=True,
        )

        # one catch-all route (``fastgate proxy``): no matching at all on the hot path
        self.catch_all = self.routes[0] if len(self.routes) == 1 and self.routes[0].prefix == b"/" else None

    def match(self, target: bytes) -> Route | None:
        if self.catch_all is not None:
            return self.catch_all
        for route in self.routes:
            if route.matches(target):
                return route
        return None

    def __repr__(self) -> str:
        return f"<RouteTable {[(r.prefix.decode(), r.upstream) for r in self.routes]}>"
