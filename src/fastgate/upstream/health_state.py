"""Per-target health of one upstream: active checks and passive outlier detection. Pure: time comes in as ``now``.

How this works
--------------
A target is in one of three states, derived from two independent records:

    UNHEALTHY  active checks failed ``unhealthy_threshold`` times in a row, until ``healthy_threshold`` passes
    EJECTED    passive outlier detection took it out until ``ejected_until`` (and it is not UNHEALTHY)
    HEALTHY    neither

The runtime feeds results in (``record_check`` from its prober, ``record_outcome`` after each try of a real
request) and gets back the transitions as :class:`HealthEvent` values, to log once; nothing is logged here. It asks
``eligible(now)`` before each pick: the HEALTHY targets, or ``None`` when all of them are (the balancers' fast
path). Ejections end by time alone: ``eligible()`` and ``state()`` count a target whose time is up as back at once,
and the event for it comes out of the next call that records something, or out of ``poll(now)``.

Passive outlier detection follows Envoy's consecutive gateway failure detector (``consecutive_gateway_failure``):
connect errors, timeouts, resets and 502 / 503 / 504 count; any other outcome resets the count. After
``consecutive_failures`` (default 5) the target is ejected for ``base_ejection_time`` × the number of times it was
ejected (30 s, 60 s, ...), capped at ``max_ejection_time`` (300 s); as in Envoy, that multiplier goes down by one
for each ``interval`` (10 s) the target spends back in service. Differences, and why:

- ``max_ejection_percent`` defaults to 50 (the issue's figure; Envoy's is 10, which with 3 targets would eject none
  at all after the first) and is a hard cap: never more than ``floor(N × percent / 100)`` ejected. Envoy always
  lets the first ejection through, and checks the percentage before ejecting, so it can end one host above the
  cap; with fail-open balancing, ejecting the only target, or one past the cap, changes nothing but the log.
- A target that active checks already marked UNHEALTHY is not ejected as well: it is out of rotation already, and
  an ejection would use up a place under the cap.
- An ejected target stays out until its time is up, even if an active check passes (Envoy's
  ``successful_active_health_check_uneject_host`` would bring it back at once; a passing ``/health`` says less
  than five failed real requests did).
- Ejection runs inline on the failure that crosses the threshold and ends lazily, where Envoy sweeps every
  ``interval``; the effect is the same without a timer.

Active checks: new targets start HEALTHY (nginx's behaviour; Envoy holds them back until a first check passes,
which with fail-open balancing would only matter for the log). Probe timing follows Envoy's jitter, which only ever
adds: ``interval + interval × interval_jitter_percent / 100 × U[0, 1) + interval_jitter × U[0, 1)``. Envoy's
defaults are no jitter; ours is 15%, so that several gateways, or workers, that start together do not probe in
step. The first probe waits ``U[0, interval)`` (Envoy's ``initial_jitter``).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

__all__ = [
    "DEFAULT_EXPECTED_STATUS",
    "DEFAULT_OUTLIER_DETECTION",
    "FAILURE_KINDS",
    "ActiveCheck",
    "ExpectedStatus",
    "FailureKind",
    "HealthEvent",
    "HealthState",
    "Outcome",
    "OutlierDetection",
    "TargetState",
]

FailureKind: TypeAlias = Literal["connect_error", "timeout", "reset"]
"""How a try failed without a response: connection refused or unreachable, a timeout, a reset mid-exchange."""

Outcome: TypeAlias = FailureKind | int
"""The outcome of one try: a failure kind, or the response's status code."""

FAILURE_KINDS: frozenset[str] = frozenset({"connect_error", "timeout", "reset"})


class TargetState(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """One state change of one target, for the caller to log.

    for event in health.record_outcome(2, 503, now):
        logger.warning("target %d: %s -> %s (%s)", event.target, event.old.value, event.new.value, event.reason)
    """

    target: int
    old: TargetState
    new: TargetState
    reason: str  # active_check_failed | active_check_passed | consecutive_failures | ejection_expired
    at: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ExpectedStatus:
    """A set of HTTP status codes parsed from ``"200-399"`` or ``"200,204,300-399"``; ``in`` is a set lookup.

    expected = ExpectedStatus.parse("200,204,300-399")
    assert 204 in expected and 250 not in expected
    """

    spec: str
    codes: frozenset[int] = field(repr=False)

    @classmethod
    def parse(cls, spec: str) -> ExpectedStatus:
        codes: set[int] = set()
        for part in spec.split(","):
            low_text, dash, high_text = part.strip().partition("-")
            low = _status(low_text, spec)
            high = _status(high_text, spec) if dash else low
            if high < low:
                raise ValueError(f"expected status {spec!r}: range {low}-{high} runs backwards")
            codes.update(range(low, high + 1))
        return cls(spec, frozenset(codes))

    def __contains__(self, status: object) -> bool:
        return status in self.codes


def _status(text: str, spec: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or not 100 <= int(text) <= 599:
        raise ValueError(f"expected status {spec!r}: {text!r} is not a status code from 100 to 599")
    return int(text)


DEFAULT_EXPECTED_STATUS = ExpectedStatus.parse("200-399")


@dataclass(frozen=True, slots=True)
class ActiveCheck:
    """Settings of active health checks (the prober sends the request; this decides what its result means).

    Thresholds as HAProxy's ``fall 3 rise 2``; Envoy requires both to be set and has no default.

        check = ActiveCheck(interval=5.0, expected_status=ExpectedStatus.parse("200,204"))
        delay = check.next_probe_delay(random.Random())  # 5.0 .. 5.75 s
    """

    interval: float = 10.0
    timeout: float = 5.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    expected_status: ExpectedStatus = DEFAULT_EXPECTED_STATUS
    interval_jitter_percent: float = 15.0
    interval_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        if self.unhealthy_threshold < 1 or self.healthy_threshold < 1:
            raise ValueError("thresholds must be at least 1")
        if self.interval_jitter_percent < 0 or self.interval_jitter < 0:
            raise ValueError("jitter must not be negative")

    def passed(self, status: int) -> bool:
        """Whether a probe answered with this status passed."""
        return status in self.expected_status

    def next_probe_delay(self, rng: random.Random) -> float:
        """Seconds until the next probe: Envoy's additive jitter on top of ``interval``."""
        delay = self.interval
        if self.interval_jitter_percent:
            delay += self.interval * self.interval_jitter_percent / 100 * rng.random()
        if self.interval_jitter:
            delay += self.interval_jitter * rng.random()
        return delay

    def first_probe_delay(self, rng: random.Random) -> float:
        """Seconds until the first probe, spread over one interval (Envoy's ``initial_jitter``)."""
        return self.interval * rng.random()


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Settings of passive outlier detection (Envoy's names and defaults, but ``max_ejection_percent`` 50).

    outlier = OutlierDetection(consecutive_failures=3)
    health = HealthState(4, outlier=outlier)
    """

    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 50.0
    interval: float = 10.0
    failure_statuses: frozenset[int] = frozenset({502, 503, 504})

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be at least 1")
        if self.base_ejection_time <= 0 or self.max_ejection_time < self.base_ejection_time:
            raise ValueError("need 0 < base_ejection_time <= max_ejection_time")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ValueError("max_ejection_percent must be between 0 and 100")
        if self.interval <= 0:
            raise ValueError("interval must be positive")

    def is_failure(self, outcome: Outcome) -> bool:
        """Whether this outcome counts towards an ejection."""
        if isinstance(outcome, str):
            return outcome in FAILURE_KINDS
        return outcome in self.failure_statuses


DEFAULT_OUTLIER_DETECTION = OutlierDetection()


@dataclass(slots=True)
class _Target:
    up: bool = True  # active checks
    check_failures: int = 0
    check_successes: int = 0
    failures: int = 0  # consecutive passive failures
    ejected_until: float | None = None
    ejections: int = 0  # the multiplier of base_ejection_time
    back_since: float = 0.0  # when the last ejection ended


class HealthState:
    """The health of an upstream's N targets.

        health = HealthState(3, active=ActiveCheck(), outlier=OutlierDetection())
        events = health.record_outcome(1, "connect_error", now=clock())  # log each; pick among health.eligible(now)

    ``outlier=None`` turns passive detection off; ``active`` is needed only for ``record_check``.
    """

    __slots__ = ("_active", "_cache", "_max_ejected", "_n", "_next_expiry", "_outlier", "_targets", "_version")

    def __init__(
        self,
        n: int,
        *,
        active: ActiveCheck | None = None,
        outlier: OutlierDetection | None = DEFAULT_OUTLIER_DETECTION,
    ) -> None:
        if n < 1:
            raise ValueError("an upstream needs at least one target")
        self._n = n
        self._active = active
        self._outlier = outlier
        self._targets = [_Target() for _ in range(n)]
        pct = outlier.max_ejection_percent if outlier is not None else 0.0
        self._max_ejected = math.floor(n * pct / 100 + 1e-9)
        self._next_expiry = math.inf  # earliest ejected_until, so that expiry checks are O(1) until then
        self._version = 0
        self._cache: tuple[int, float, tuple[int, ...] | None] = (-1, -math.inf, None)

    @property
    def max_ejected(self) -> int:
        """How many targets may be ejected at once: ``floor(N × max_ejection_percent / 100)``."""
        return self._max_ejected

    def state(self, target: int, now: float) -> TargetState:
        t = self._targets[target]
        if not t.up:
            return TargetState.UNHEALTHY
        if t.ejected_until is not None and t.ejected_until > now:
            return TargetState.EJECTED
        return TargetState.HEALTHY

    def ejected_until(self, target: int) -> float | None:
        """When ``target``'s ejection ends (the clock of ``now``), None if it was not ejected or it ended already."""
        return self._targets[target].ejected_until

    def ejected_count(self, now: float) -> int:
        return sum(1 for t in self._targets if t.ejected_until is not None and t.ejected_until > now)

    def eligible(self, now: float) -> tuple[int, ...] | None:
        """The HEALTHY targets now, or ``None`` if all are (possibly empty: see ``eligible_targets`` for panic).

        Cached until the next recorded change or ejection expiry, so the per-request cost is one comparison.
        """
        version, valid_until, result = self._cache
        if version == self._version and now < valid_until:
            return result
        healthy = []
        valid_until = math.inf
        for i, t in enumerate(self._targets):
            if not t.up:
                continue
            until = t.ejected_until
            if until is not None and until > now:
                valid_until = min(valid_until, until)
                continue
            healthy.append(i)
        result = None if len(healthy) == self._n else tuple(healthy)
        self._cache = (self._version, valid_until, result)
        return result

    def poll(self, now: float) -> list[HealthEvent]:
        """End the ejections whose time is up and return their events (for a periodic caller such as the prober)."""
        return self._expire(now)

    def record_check(self, target: int, passed: bool, now: float) -> list[HealthEvent]:
        """Record one active probe of ``target`` (``passed``: ``ActiveCheck.passed(status)``, False on error)."""
        if self._active is None:
            raise RuntimeError("record_check needs HealthState(active=ActiveCheck(...))")
        events = self._expire(now)
        t = self._targets[target]
        old = self.state(target, now)
        if passed:
            t.check_failures = 0
            t.check_successes += 1
            if not t.up and t.check_successes >= self._active.healthy_threshold:
                t.up = True
                self._changed()
                reason = "active_check_passed"
                detail = f"{t.check_successes} checks passed in a row"
            else:
                return events
        else:
            t.check_successes = 0
            t.check_failures += 1
            if t.up and t.check_failures >= self._active.unhealthy_threshold:
                t.up = False
                self._changed()
                reason = "active_check_failed"
                detail = f"{t.check_failures} checks failed in a row"
            else:
                return events
        # Flipping ``up`` always changes the state: UNHEALTHY on one side, HEALTHY or EJECTED on the other.
        events.append(HealthEvent(target, old, self.state(target, now), reason, now, detail))
        return events

    def record_outcome(self, target: int, outcome: Outcome, now: float) -> list[HealthEvent]:
        """Record how one try of a real request to ``target`` ended: a failure kind or the status code."""
        events = self._expire(now)
        outlier = self._outlier
        if outlier is None:
            return events
        t = self._targets[target]
        if not outlier.is_failure(outcome):
            t.failures = 0
            return events
        t.failures += 1
        if t.failures < outlier.consecutive_failures or not t.up:
            return events
        if t.ejected_until is not None or self.ejected_count(now) >= self._max_ejected:
            return events  # already out, or the cap is reached: it is ejected on a later failure, if room is made
        if t.ejections:
            t.ejections = max(0, t.ejections - int((now - t.back_since) // outlier.interval))
        t.ejections += 1
        duration = min(outlier.base_ejection_time * t.ejections, outlier.max_ejection_time)
        t.ejected_until = now + duration
        self._next_expiry = min(self._next_expiry, t.ejected_until)
        self._changed()
        detail = f"{t.failures} failures in a row, last {outcome}; ejected for {duration:g} s"
        events.append(
            HealthEvent(target, TargetState.HEALTHY, TargetState.EJECTED, "consecutive_failures", now, detail)
        )
        return events

    def _expire(self, now: float) -> list[HealthEvent]:
        if now < self._next_expiry:
            return []
        events = []
        next_expiry = math.inf
        for i, t in enumerate(self._targets):
            until = t.ejected_until
            if until is None:
                continue
            if until > now:
                next_expiry = min(next_expiry, until)
                continue
            t.ejected_until = None
            t.failures = 0
            t.back_since = until
            if t.up:  # an UNHEALTHY target stays UNHEALTHY: no change to report
                events.append(HealthEvent(i, TargetState.EJECTED, TargetState.HEALTHY, "ejection_expired", until))
        self._next_expiry = next_expiry
        self._changed()
        return events

    def _changed(self) -> None:
        self._version += 1

    def __repr__(self) -> str:
        states = []
        for i, t in enumerate(self._targets):
            if not t.up:
                states.append(f"{i}:unhealthy")
            elif t.ejected_until is not None:
                states.append(f"{i}:ejected<{t.ejected_until:g}")
        return f"<HealthState targets={self._n} down=[{', '.join(states)}]>"
