"""Circuit-breaker refusals in the log once per burst, so an overload cannot flood it.

The first refusal of a burst logs its usual line (method, target, threshold, request id). Later ones only count;
when a quiet interval (``QUIET_S``) passes without a refusal, one line gives the burst's size by threshold. As with
the ``max_connections`` refusals in ``serving/sweeper.py``, this is a timer while a burst lasts, not per request.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from ..observability.logging import error_logger

QUIET_S = 1.0


class OverflowLog:
    """One upstream's refusals (each :class:`GuardedCluster` has one): ``refused()`` says whether to log this one."""

    __slots__ = ("upstream", "quiet", "_burst", "_recent", "_handle")

    def __init__(self, upstream: str, quiet: float = QUIET_S) -> None:
        self.upstream = upstream
        self.quiet = quiet
        self._burst: Counter[str] = Counter()
        self._recent = False
        self._handle: asyncio.TimerHandle | None = None

    def refused(self, threshold: str) -> bool:
        """Count a refusal; True for the first of a burst (the caller logs it as it would any error)."""
        first = not self._burst
        self._burst[threshold] += 1
        self._recent = True
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.quiet, self._tick)
        return first

    def _tick(self) -> None:
        if self._recent:  # the burst goes on
            self._recent = False
            self._handle = asyncio.get_running_loop().call_later(self.quiet, self._tick)
            return
        self._handle = None
        burst, self._burst = self._burst, Counter()
        total = sum(burst.values())
        if total > 1:
            by = ", ".join(f"{count} over {threshold}" for threshold, count in sorted(burst.items()))
            error_logger.warning(
                "upstream %s: circuit breaker refused %d request(s) in a burst (%s)", self.upstream, total, by
            )
