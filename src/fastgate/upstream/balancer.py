"""Balancers: pick one of an upstream's N targets for each try of a request. Pure: no I/O, no clock.

How this works
--------------
Targets are the indices ``0 .. N-1`` of an upstream's target list, each with an integer weight (>= 1, default 1).
Every pick receives ``eligible``: the targets this try may use (healthy, not ejected, not tried already by this
request, so that a retry prefers another host, like Envoy's ``previous_hosts`` retry predicate). ``None`` means
"all of them" and is the fast path; :func:`eligible_targets` builds the argument from the health view.

Fail-open: when ``eligible`` is empty, every balancer picks among *all* targets. The issue asks for it ("If every
target is down, requests still go to them"), and a gateway that answers 503 by itself while the targets may in fact
be up is worse than one that tries. Envoy does the same through its panic threshold (default 50%: below half of the
hosts healthy, balance over all of them). :func:`eligible_targets` offers that threshold as an option; the default,
0, panics only when no target is healthy, which is the issue's rule: with 2 of 5 targets up, the 2 take the traffic
rather than 3 dead ones taking 60% of it.

The algorithms, and where they differ from nginx / Envoy:

- ``round_robin``: nginx's smooth weighted round robin (5:1:1 gives ``a a b a c a a``). The schedule of one period
  (``sum(weights) / gcd`` picks) is computed once per eligible set, so a pick is one list index. nginx keeps one
  set of current weights across changes of the eligible set; we keep one schedule per set, which changes the order
  around a change, not the proportions.
- ``least_request``: Envoy's. Equal weights: power of two choices (P2C) on active-request counts, the two
  candidates distinct (Envoy draws them independently, so both may be the same host). Unequal weights: a weighted
  schedule where each target's weight is ``weight / (active + 1) ** active_request_bias`` at pick time (Envoy uses
  an EDF scheduler; we use nginx's smooth weighted round robin, another deterministic weighted schedule, so that
  the subset case needs no rebuilt heap).
- ``random``: weighted random (bisect over cumulative weights).
- ``consistent_hash``: Maglev (Envoy's ``MAGLEV``, 65,537-entry table), keys hashed with xxHash (XXH3-64). Chosen
  over a ring hash by measurement (N = 5, 100,000 keys): Maglev's largest share is 1.007 × the mean and removing /
  adding one target moves 20.2% / 17.1% of the keys (ideal 20% / 16.7%); Envoy's ring (1,024 entries shared out,
  so each host's virtual-node count depends on N) gives 1.147 and moves 30.1% / 25.6%; a ring with a fixed 1,024
  virtual nodes per host gives 1.026 and 20.5% / 16.4% with 5× the entries. A table costs 30-90 ms of Python to
  build, paid only when the target *list* changes (config load or reload), never on a health change: where Envoy
  rebuilds the table over the healthy hosts, a key whose target is not eligible is rehashed with seeds 1, 2, ...
  until it lands on an eligible target. That is stable (same key and eligible set, same target), keys of eligible
  targets never move, and the displaced keys spread over the others in proportion to their shares; it also serves
  retries, which must avoid the tried target for one request only. No key: a weighted random pick.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType

import xxhash

__all__ = [
    "BALANCERS",
    "MAGLEV_TABLE_SIZE",
    "Balancer",
    "ConsistentHash",
    "LeastRequest",
    "RoundRobin",
    "WeightedRandom",
    "create_balancer",
    "eligible_targets",
]

MAGLEV_TABLE_SIZE = 65537  # Envoy's default; must be prime
MAX_SCHEDULE_LENGTH = 65536  # longer round-robin periods are computed pick by pick instead
REHASH_ATTEMPTS = 32  # consistent_hash: rehashes of a key whose target is not eligible, before walking the table


def eligible_targets(
    n: int,
    healthy: Sequence[int] | None,
    tried: Collection[int] = (),
    *,
    panic_threshold: float = 0.0,
) -> tuple[int, ...] | None:
    """The ``eligible`` argument for a pick: the healthy targets not tried yet, or ``None`` for all N.

    ``healthy`` is the health view (``None`` = all healthy, see ``HealthState.eligible``). Below
    ``panic_threshold`` percent healthy (Envoy: ``healthy_panic_threshold``, default 50), or with none healthy,
    every target counts as healthy. If every healthy target was tried already, they are offered again rather than
    none (Envoy's ``host_selection_retry_max_attempts`` ends the same way).

        eligible = eligible_targets(4, health.eligible(now), tried={2})
        target = balancer.pick(eligible)
    """
    base: Sequence[int] | None = healthy
    if healthy is not None and (not healthy or len(healthy) * 100 < panic_threshold * n):
        base = None
    if not tried:
        return None if base is None else tuple(base)
    candidates = range(n) if base is None else base
    result = tuple(i for i in candidates if i not in tried)
    if result:
        return result
    return None if base is None else tuple(base)


def _check_weights(weights: Sequence[int]) -> tuple[int, ...]:
    if not weights:
        raise ValueError("a balancer needs at least one target")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"target weights must be integers >= 1, got {w!r}")
    return tuple(weights)


class Balancer:
    """Base of the balancers: N weighted targets, ``pick()``, and the in-flight hooks (no-ops here).

    balancer = create_balancer("round_robin", [3, 1])
    target = balancer.pick()  # an index into the upstream's targets
    """

    __slots__ = ("_n", "_rng", "_weights")

    name = ""

    def __init__(
        self,
        weights: Sequence[int],
        *,
        rng: random.Random | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self._weights = _check_weights(weights)
        self._n = len(self._weights)
        self._rng = rng if rng is not None else random.Random()

    @property
    def weights(self) -> tuple[int, ...]:
        return self._weights

    def pick(self, eligible: Sequence[int] | None = None, key: bytes | None = None) -> int:
        """Return the target for this try, an element of ``eligible`` (any target when it is None or empty)."""
        raise NotImplementedError

    def on_start(self, target: int) -> None:
        """A request to ``target`` started (used by ``least_request``)."""

    def on_finish(self, target: int) -> None:
        """A request to ``target`` finished, however it ended (used by ``least_request``)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} weights={list(self._weights)}>"


def _smooth_schedule(weights: Sequence[int]) -> list[int]:
    """One period of nginx's smooth weighted round robin, starting from zero current weights: positions into
    ``weights``. After one period (``sum(weights) / gcd`` picks) the current weights are all zero again."""
    g = 0
    for w in weights:
        g = math.gcd(g, w)
    reduced = [w // g for w in weights]
    total = sum(reduced)
    current = [0] * len(reduced)
    schedule = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(reduced):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        schedule.append(best)
    return schedule


def _period(weights: Sequence[int]) -> int:
    g = 0
    for w in weights:
        g = math.gcd(g, w)
    return sum(weights) // g


class _Cycle:
    """A precomputed round-robin schedule and the position in it."""

    __slots__ = ("pos", "schedule")

    def __init__(self, schedule: list[int]) -> None:
        self.schedule = schedule
        self.pos = 0


class RoundRobin(Balancer):
    """nginx's smooth weighted round robin: weights 5:1:1 give ``a a b a c a a``.

    Each eligible set (the full set, and up to 32 subsets: targets down, the rest on a retry) has its own
    precomputed schedule, so a pick is a list index (~0.1 us); a subset whose period is longer than 4,096 picks
    runs nginx's loop on the spot instead.

        balancer = RoundRobin([5, 1, 1])
        order = [balancer.pick() for _ in range(7)]  # [0, 0, 1, 0, 2, 0, 0]
    """

    __slots__ = ("_current", "_cycles", "_full")

    name = "round_robin"

    MAX_CACHED_SUBSETS = 32
    MAX_CACHED_PERIOD = 4096

    def __init__(
        self,
        weights: Sequence[int],
        *,
        rng: random.Random | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(weights, rng=rng)
        self._current = [0] * self._n
        self._full = _Cycle(_smooth_schedule(self._weights)) if _period(self._weights) <= MAX_SCHEDULE_LENGTH else None
        self._cycles: dict[tuple[int, ...], _Cycle] = {}

    def pick(self, eligible: Sequence[int] | None = None, key: bytes | None = None) -> int:
        if eligible is None or not eligible or len(eligible) == self._n:
            cycle = self._full
            if cycle is None:
                return self._nginx(range(self._n))
        else:
            subset = eligible if type(eligible) is tuple else tuple(eligible)
            found = self._cycles.get(subset)
            if found is None:
                found = self._cache(subset)
                if found is None:
                    return self._nginx(subset)
            cycle = found
        pos = cycle.pos
        schedule = cycle.schedule
        cycle.pos = pos + 1 if pos + 1 < len(schedule) else 0
        return schedule[pos]

    def _cache(self, subset: tuple[int, ...]) -> _Cycle | None:
        weights = [self._weights[i] for i in subset]
        if _period(weights) > self.MAX_CACHED_PERIOD:
            return None
        cycle = _Cycle([subset[j] for j in _smooth_schedule(weights)])
        cycles = self._cycles
        if len(cycles) >= self.MAX_CACHED_SUBSETS:
            del cycles[next(iter(cycles))]
        cycles[subset] = cycle
        return cycle

    def _nginx(self, candidates: Sequence[int]) -> int:
        # nginx's loop over the candidates: add each weight, take the largest, subtract the total from it.
        current = self._current
        weights = self._weights
        best = -1
        best_weight = 0
        total = 0
        for i in candidates:
            w = weights[i]
            total += w
            c = current[i] + w
            current[i] = c
            if best < 0 or c > best_weight:
                best = i
                best_weight = c
        current[best] -= total
        return best

    def __repr__(self) -> str:
        position = None if self._full is None else self._full.pos
        return f"<RoundRobin weights={list(self._weights)} position={position} subsets={len(self._cycles)}>"


class WeightedRandom(Balancer):
    """A random target, in proportion to the weights.

    balancer = WeightedRandom([3, 1], rng=random.Random(7))
    target = balancer.pick(eligible=(0, 1))
    """

    __slots__ = ("_cumulative", "_total", "_uniform")

    name = "random"

    def __init__(
        self,
        weights: Sequence[int],
        *,
        rng: random.Random | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(weights, rng=rng)
        self._uniform = len(set(self._weights)) == 1
        cumulative = []
        total = 0
        for w in self._weights:
            total += w
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total

    def pick(self, eligible: Sequence[int] | None = None, key: bytes | None = None) -> int:
        r = self._rng.random()
        if eligible is None or not eligible or len(eligible) == self._n:
            if self._uniform:
                return int(r * self._n)
            return bisect_right(self._cumulative, r * self._total)
        if self._uniform:
            return eligible[int(r * len(eligible))]
        weights = self._weights
        cumulative = []
        total = 0
        for i in eligible:
            total += weights[i]
            cumulative.append(total)
        return eligible[bisect_right(cumulative, r * total)]


class LeastRequest(Balancer):
    """Envoy's least request: P2C on in-flight counts; with unequal weights, ``weight / (active + 1) ** bias``.

    The caller reports each request with ``on_start(target)`` and ``on_finish(target)``.

        balancer = LeastRequest([1, 1, 1], rng=random.Random(1))
        target = balancer.pick(); balancer.on_start(target)  # ... later: balancer.on_finish(target)
    """

    __slots__ = ("_active", "_bias", "_choice_count", "_current", "_uniform")

    name = "least_request"

    def __init__(
        self,
        weights: Sequence[int],
        *,
        rng: random.Random | None = None,
        names: Sequence[str] | None = None,
        choice_count: int = 2,
        active_request_bias: float = 1.0,
    ) -> None:
        super().__init__(weights, rng=rng)
        if choice_count < 2:
            raise ValueError("choice_count must be at least 2")
        if active_request_bias < 0:
            raise ValueError("active_request_bias must be >= 0")
        self._choice_count = choice_count
        self._bias = active_request_bias
        self._uniform = len(set(self._weights)) == 1
        self._active = [0] * self._n
        self._current = [0.0] * self._n

    @property
    def active(self) -> tuple[int, ...]:
        """Requests in flight per target, as reported through on_start / on_finish."""
        return tuple(self._active)

    def on_start(self, target: int) -> None:
        self._active[target] += 1

    def on_finish(self, target: int) -> None:
        if self._active[target] > 0:
            self._active[target] -= 1

    def pick(self, eligible: Sequence[int] | None = None, key: bytes | None = None) -> int:
        candidates: Sequence[int] = range(self._n) if eligible is None or not eligible else eligible
        if self._uniform:
            return self._p2c(candidates)
        return self._weighted(candidates)

    def _p2c(self, candidates: Sequence[int]) -> int:
        k = len(candidates)
        if k == 1:
            return candidates[0]
        active = self._active
        if self._choice_count == 2 or k == 2:
            r = self._rng.random
            a = int(r() * k)
            b = int(r() * (k - 1))
            if b >= a:
                b += 1
            first = candidates[a]
            second = candidates[b]
            return second if active[second] < active[first] else first
        chosen = self._rng.sample(range(k), min(self._choice_count, k))
        best = candidates[chosen[0]]
        for j in chosen[1:]:
            target = candidates[j]
            if active[target] < active[best]:
                best = target
        return best

    def _weighted(self, candidates: Sequence[int]) -> int:
        current = self._current
        weights = self._weights
        active = self._active
        bias = self._bias
        best = -1
        best_weight = 0.0
        total = 0.0
        for i in candidates:
            # Envoy: weight / (active + 1) ** active_request_bias; bias 1.0 is the default, 0.0 plain weights.
            w = weights[i] / (active[i] + 1) if bias == 1.0 else weights[i] / (active[i] + 1) ** bias
            total += w
            c = current[i] + w
            current[i] = c
            if best < 0 or c > best_weight:
                best = i
                best_weight = c
        current[best] -= total
        return best

    def __repr__(self) -> str:
        return f"<LeastRequest weights={list(self._weights)} active={self._active}>"


def _is_prime(m: int) -> bool:
    if m < 2:
        return False
    return all(m % d for d in range(2, math.isqrt(m) + 1))


def _maglev_table(names: Sequence[str], weights: Sequence[int], size: int) -> list[int]:
    """Maglev's lookup table (Eisenbud et al., NSDI 2016), weighted: each round a target gains
    ``weight / max_weight`` of a turn, and claims the next free slot of its permutation per whole turn."""
    n = len(names)
    offsets = []
    skips = []
    for name in names:
        data = name.encode()
        offsets.append(xxhash.xxh64_intdigest(data, seed=0) % size)
        skips.append(xxhash.xxh64_intdigest(data, seed=1) % (size - 1) + 1)
    max_weight = max(weights)
    shares = [w / max_weight for w in weights]
    credit = [0.0] * n
    position = offsets[:]  # the slot each target's permutation points at next
    table = [-1] * size
    filled = 0
    while True:
        for i in range(n):
            credit[i] += shares[i]
            if credit[i] < 1.0:
                continue
            credit[i] -= 1.0
            slot = position[i]
            skip = skips[i]
            while table[slot] >= 0:
                slot += skip
                if slot >= size:
                    slot -= size
            table[slot] = i
            slot += skip
            position[i] = slot - size if slot >= size else slot
            filled += 1
            if filled == size:
                return table


class ConsistentHash(Balancer):
    """Maglev consistent hashing on a key: one key always goes to one target while the target list is unchanged.

    ``names`` identify the targets (e.g. ``"10.0.0.1:8080"``) so that a key stays put when others are added or
    removed; without names the index is used, which is stable only while targets are appended.

        balancer = ConsistentHash([1, 1, 1], names=["a:80", "b:80", "c:80"])
        target = balancer.pick(key=b"user-42")
    """

    __slots__ = ("_fallback", "_size", "_table")

    name = "consistent_hash"

    def __init__(
        self,
        weights: Sequence[int],
        *,
        rng: random.Random | None = None,
        names: Sequence[str] | None = None,
        table_size: int = MAGLEV_TABLE_SIZE,
    ) -> None:
        super().__init__(weights, rng=rng)
        if names is None:
            names = [str(i) for i in range(self._n)]
        if len(names) != self._n:
            raise ValueError(f"{len(names)} names for {self._n} targets")
        if len(set(names)) != len(names):
            raise ValueError("target names must be unique")
        if not _is_prime(table_size) or table_size < self._n:
            raise ValueError("table_size must be a prime at least as large as the number of targets")
        self._size = table_size
        self._table = _maglev_table(names, self._weights, table_size)
        self._fallback = WeightedRandom(self._weights, rng=self._rng)

    def pick(self, eligible: Sequence[int] | None = None, key: bytes | None = None) -> int:
        if key is None:
            return self._fallback.pick(eligible)
        table = self._table
        size = self._size
        slot = xxhash.xxh3_64_intdigest(key) % size
        target = table[slot]
        if eligible is None or not eligible or len(eligible) == self._n:
            return target
        allowed: Collection[int] = eligible if len(eligible) <= 16 else frozenset(eligible)
        if target in allowed:
            return target
        # Rehash the key with seeds 1, 2, ...: each try is an independent slot, so the keys of a target that is
        # down spread over the others in proportion to their shares (the next slot would not: neighbouring slots
        # follow the fill order, and the shares came out between 16% and 33% instead of 25% in a test).
        for seed in range(1, REHASH_ATTEMPTS + 1):
            target = table[xxhash.xxh3_64_intdigest(key, seed=seed) % size]
            if target in allowed:
                return target
        for _ in range(size - 1):  # an eligible set with a tiny share of the table: walk it
            slot += 1
            if slot == size:
                slot = 0
            target = table[slot]
            if target in allowed:
                return target
        return self._fallback.pick(eligible)  # only if no eligible target holds a slot at all

    def __repr__(self) -> str:
        return f"<ConsistentHash weights={list(self._weights)} table_size={self._size}>"


BalancerFactory = Callable[..., Balancer]

BALANCERS: Mapping[str, BalancerFactory] = MappingProxyType(
    {
        RoundRobin.name: RoundRobin,
        LeastRequest.name: LeastRequest,
        WeightedRandom.name: WeightedRandom,
        ConsistentHash.name: ConsistentHash,
    }
)


def create_balancer(
    name: str,
    weights: Sequence[int],
    *,
    names: Sequence[str] | None = None,
    rng: random.Random | None = None,
) -> Balancer:
    """Build the balancer registered under ``name`` (``round_robin``, ``least_request``, ``random``,
    ``consistent_hash``) for targets with these weights.

        balancer = create_balancer("least_request", [1, 1, 2], rng=random.Random(0))
        target = balancer.pick(eligible=(0, 2))
    """
    try:
        factory = BALANCERS[name]
    except KeyError:
        raise ValueError(f"unknown balancer {name!r}; choose one of {', '.join(sorted(BALANCERS))}") from None
    return factory(weights, rng=rng, names=names)
