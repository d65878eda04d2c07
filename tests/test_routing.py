from __future__ import annotations

import pytest

from fastgate.config import RouteConfig
from fastgate.routing import RouteTable


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
    route = table.match(target)
    assert route is not None
    assert route.upstream == upstream
    assert route.upstream_target(target) == forwarded


def test_no_route() -> None:
    assert RouteTable([RouteConfig(prefix="/api", upstream="api")]).match(b"/other") is None
