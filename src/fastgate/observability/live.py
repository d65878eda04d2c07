"""This worker's live figures for the admin API's ``/stats``: totals, recent latency percentiles, the last errors.

How this works
--------------
:meth:`LiveStats.record` runs in :meth:`Observability.finish` for every exchange, so it only counts and appends:
two integer additions, one ``(monotonic time, duration)`` pair onto a bounded ring (a ``deque`` with ``maxlen``),
and, for an answer >= 500 only, one small dict onto a ring of the last 20 errors. Everything else happens in
:meth:`LiveStats.snapshot`, when the admin API asks: the pairs of the last 60 s are sorted and the percentiles read
by nearest rank. The ring holds at most ``capacity`` pairs (8192 by default), so above ``capacity / 60`` requests
per second the percentiles describe the last ``capacity`` requests rather than the full minute: memory and
snapshot time stay bounded whatever the rate. WebSocket sessions count as requests (and errors when refused with a
5xx) but stay out of the latency figures: a session lasts as long as its users want. Pure: no I/O, the clocks are
injectable.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .record import ExchangeRecord

WINDOW_SECONDS = 60.0
DEFAULT_CAPACITY = 8192
RECENT_ERRORS = 20
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5), percentile([1.0, 2.0, 3.0, 4.0], 0.99)
    (2.0, 4.0)
    """
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


class LiveStats:
    """Counters and a short memory of one worker's exchanges, read as one dict by ``snapshot()``.

    >>> live = LiveStats()
    >>> live.record(ExchangeRecord(route="0", upstream="api", target="/x", status=502, duration_s=0.004))
    >>> live.snapshot()["errors"]
    1

    ``clock`` gives the monotonic seconds the window is measured in, ``wall`` the Unix time an error is stamped
    with (tests pass fakes).
    """

    __slots__ = ("requests", "errors", "_latencies", "_errors", "_window", "_clock", "_wall")

    def __init__(
        self,
        *,
        window: float = WINDOW_SECONDS,
        capacity: int = DEFAULT_CAPACITY,
        recent_errors: int = RECENT_ERRORS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.requests = 0
        self.errors = 0
        self._latencies: deque[tuple[float, float]] = deque(maxlen=capacity)
        self._errors: deque[dict[str, Any]] = deque(maxlen=recent_errors)
        self._window = window
        self._clock = clock
        self._wall = wall

    def __repr__(self) -> str:
        return f"<LiveStats requests={self.requests} errors={self.errors} recent={len(self._latencies)}>"

    def record(self, record: ExchangeRecord) -> None:
        """Count one finished exchange (the per-request part: keep it cheap)."""
        self.requests += 1
        if not record.websocket:
            self._latencies.append((self._clock(), record.duration_s))
        status = record.logged_status
        if status >= 500:
            self.errors += 1
            route = record.route
            self._errors.append(
                {
                    "time": round(self._wall(), 3),
                    "method": record.method,
                    "target": record.target,
                    "status": status,
                    "route": int(route) if route.isdigit() else route,
                    "upstream": record.upstream,
                    "address": record.upstream_address,
                    "detail": record.outcome,
                }
            )

    def latency_ms(self) -> dict[str, float | None]:
        """p50/p90/p99 in milliseconds over the last ``window`` seconds; None each when nothing finished then."""
        since = self._clock() - self._window
        pairs = list(self._latencies)  # one C-level copy: safe even if a thread reads while the loop appends
        ordered = sorted(duration for at, duration in pairs if at >= since)
        if not ordered:
            return {name: None for name, _ in PERCENTILES}
        return {name: round(percentile(ordered, fraction) * 1000, 3) for name, fraction in PERCENTILES}

    def snapshot(self) -> dict[str, Any]:
        """``requests``, ``errors``, ``latency_ms`` and ``recent_errors`` (newest first) as the admin API shows them.

        >>> sorted(LiveStats().snapshot())
        ['errors', 'latency_ms', 'recent_errors', 'requests']
        """
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency_ms": self.latency_ms(),
            "recent_errors": [dict(error) for error in reversed(list(self._errors))],
        }
