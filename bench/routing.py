"""Route matching cost: microseconds per ``RouteTable.match`` with 1 and 100 routes, and per path normalisation.

    python bench/routing.py                 # about 10 s
    python bench/routing.py --seconds 0.5   # each case runs at most this long (and at most --max-loops times)

Pure CPU, no sockets. Each case runs the same request in a bounded loop (count and CPU time) and reports the best
of 5 rounds, in microseconds of process CPU time per call (a busy machine skews CPU time less than wall time). The
100-route table mixes what configs hold: 60 prefixes (``/svc{i}`` and ``/svc{i}/v2``), 20 exact paths, 10 regexes
and 10 host routes, with a few method, header and query matchers. The requests hit a long prefix, an exact path, a
regex, a host route, and a miss (404). Write the figures into docs/config.md ("Cost of matching") when they move.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fastgate.config import RouteConfig
from fastgate.proxy.paths import normalize_path
from fastgate.routing import RouteTable

HEADERS = [(b"host", b"api.example.com"), (b"user-agent", b"bench"), (b"accept", b"*/*"), (b"x-version", b"2")]


def hundred_routes() -> list[RouteConfig]:
    routes = []
    for i in range(30):
        routes.append(RouteConfig(prefix=f"/svc{i}", upstream="a"))
        routes.append(RouteConfig(prefix=f"/svc{i}/v2", upstream="b", headers={"x-version": "2"} if i % 3 else None))
    for i in range(20):
        routes.append(RouteConfig(path=f"/exact/{i}", upstream="c", methods=["GET", "HEAD"]))
    for i in range(10):
        routes.append(RouteConfig(regex=f"^/re{i}/[0-9]+$", upstream="d"))
    for i in range(9):
        routes.append(RouteConfig(host=f"h{i}.example.com", prefix="/", upstream="e", query={"debug": "1"}))
    routes.append(RouteConfig(host="*.example.com", prefix="/admin", upstream="f"))
    return routes


def per_call(fn: Callable[[], object], seconds: float, max_loops: int) -> float:
    """Best of 5 rounds, microseconds per call; each round is bounded by ``max_loops`` calls and ``seconds``."""
    best = float("inf")
    for _ in range(5):
        calls = 0
        start = time.process_time()
        deadline = start + seconds
        while calls < max_loops:
            for _ in range(1000):
                fn()
            calls += 1000
            if time.process_time() > deadline:
                break
        best = min(best, (time.process_time() - start) / calls * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.3, help="time bound of one round (default 0.3)")
    parser.add_argument("--max-loops", type=int, default=1_000_000, help="call bound of one round")
    args = parser.parse_args()

    one = RouteTable([RouteConfig(upstream="all")])
    hundred = RouteTable(hundred_routes())
    cases: list[tuple[str, Callable[[], object]]] = [
        ("1 route (catch-all)", lambda: one.match(b"GET", b"api.example.com", b"/svc7/v2/users/42", HEADERS, b"")),
        (
            "100 routes, long prefix + header",
            lambda: hundred.match(b"GET", b"api.example.com", b"/svc17/v2/users/42", HEADERS, b"page=2"),
        ),
        ("100 routes, exact path", lambda: hundred.match(b"GET", b"api.example.com", b"/exact/13", HEADERS, b"")),
        ("100 routes, regex", lambda: hundred.match(b"GET", b"api.example.com", b"/re7/123", HEADERS, b"")),
        ("100 routes, host + query", lambda: hundred.match(b"GET", b"h4.example.com", b"/x", HEADERS, b"debug=1")),
        ("100 routes, no match (404)", lambda: hundred.match(b"GET", b"api.example.com", b"/nope/a/b", HEADERS, b"")),
        ("normalise, common path", lambda: normalize_path(b"/svc17/v2/users/42")),
        ("normalise, dots and escapes", lambda: normalize_path(b"/svc17/./v2/%75sers/../users/42")),
    ]
    for _, fn in cases:
        assert fn() is not None or "404" in _  # a wrong table would make the figures meaningless
    print(f"{'case':<36} µs/call")
    for name, fn in cases:
        print(f"{name:<36} {per_call(fn, args.seconds, args.max_loops):7.2f}")


if __name__ == "__main__":
    main()
