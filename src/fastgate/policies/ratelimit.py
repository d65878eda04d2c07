"""Rate-limit decisions: GCRA arithmetic, the RateLimit header fields, and the key a request is counted under.

Pure: no I/O and no clock of its own; times are integer microseconds handed in by the caller (a store)::

    policy = RateLimitPolicy(rate=100, period=1.0, burst=50)
    new_tat, decision = policy.decide(stored_tat, now_us)   # store new_tat when it is not None
    headers = rate_limit_headers(policy, decision)           # RateLimit-Policy, RateLimit (+ Retry-After on 429)

How this works
--------------
GCRA (the generic cell rate algorithm, ITU-T I.371; redis-cell's ``CL.THROTTLE`` is the same) keeps one number per
key, the theoretical arrival time (TAT): when the key's bucket would be full again. The emission interval is
``T = period / rate`` and the burst tolerance ``tau = T × burst``. A request at time ``now``:

1. ``tat = max(TAT, now)`` (an idle key has a full bucket; time does not bank credit past full);
2. ``new_tat = tat + T``: this request costs one interval;
3. if ``new_tat − now > tau`` it is refused and nothing is stored; it could go in ``new_tat − now − tau``;
4. else it is allowed and ``new_tat`` is stored (a key whose TAT is in the past holds nothing: its TTL is
   ``new_tat − now``).

So ``burst`` requests may go at once (``burst × T <= tau``) and then one every ``T``: over any window of length
``W`` at most ``burst + W / T`` are allowed. Step 3 compares ``new_tat`` where the textbook compares ``tat``, which
would let ``burst + 1`` through at once. Integer microseconds keep ``burst`` exact (floats would drop the last
request of a burst to rounding); ``T`` is rounded up, which can only make a limit stricter, by at most 1 µs.

Headers follow draft-ietf-httpapi-ratelimit-headers-10 (-11 keeps these four parameters), as Structured Fields
(RFC 9651)::

    RateLimit-Policy: "default";q=100;w=1       quota q per window of w seconds: the sustained rate
    RateLimit: "default";r=42;t=1               r requests may go now; t seconds until the bucket is full again

``q``/``w`` describe ``rate`` per ``period`` (w is an integer; see :meth:`RateLimitPolicy.quota_window`); ``r``
counts what the bucket holds now, up to ``burst``. A refused request also gets ``Retry-After`` (RFC 9110 §10.2.3)
in whole seconds, rounded up, never 0.

Keys: ``client_ip``, ``header:NAME``, ``route``, ``identity``, or a composite ``"header:x-api-key,client_ip"`` (the
parts are joined). A part with nothing to go on (the header is absent or empty, no identity was established) counts
under ``client_ip`` instead, so a client cannot escape its limit by leaving a header out. The key is a BLAKE2b digest
of the route name and the parts: fixed size in memory, no API key stored in clear, and not collidable on purpose.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "DRAFT",
    "KEY_KINDS",
    "Decision",
    "KeyPart",
    "RateLimitPolicy",
    "client_ip_key",
    "parse_key",
    "parse_period",
    "rate_limit_headers",
    "rate_limit_key",
    "route_digest",
]

DRAFT = "draft-ietf-httpapi-ratelimit-headers-10"
KEY_KINDS = ("client_ip", "header", "route", "identity")

_US = 1_000_000
_PERIOD = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
_NAME = re.compile(r"[\x20-\x7e]+")  # a Structured Fields String: printable ASCII


def parse_period(value: str | float | int) -> float:
    """Seconds in ``"1s"``, ``"500ms"``, ``"1m"``, ``"1h"`` or a plain number of seconds; raises ``ValueError``.

    >>> parse_period("500ms"), parse_period(2)
    (0.5, 2.0)
    """
    if isinstance(value, bool):
        raise ValueError(f"a period is a duration like '1s', '500ms', '1m', '1h' or seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _PERIOD.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"a period is a duration like '1s', '500ms', '1m', '1h' or seconds, got {value!r}")
        seconds = float(match[1]) * _UNITS[match[2]]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a period must be positive, got {value!r}")
    if seconds < 1e-6 or seconds > 366 * 86400:
        raise ValueError(f"a period must be between 1µs and a year, got {value!r}")
    return seconds


class Decision(NamedTuple):
    """One answer: ``allowed``, and the numbers the headers report (a NamedTuple: one is made per request, and a
    frozen dataclass took three times as long to build, about 0.8 µs against 0.25).

    ``limit`` is the policy's quota (``rate``), ``remaining`` how many more may go now, ``reset_after`` the seconds
    until the bucket is full again, ``retry_after`` the seconds until a refused request could go (0 when allowed).
    ``degraded`` marks an answer made without the store (Redis down): ``on_error`` chose it, no counting happened.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float = 0.0
    degraded: bool = False


# Decision(...) runs NamedTuple's generated __new__ (a Python frame); every field given, tuple's own is the same tuple.
_new_decision = tuple.__new__


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """``burst`` requests at once, then ``rate`` per ``period`` seconds; ``name`` labels the header fields.

    >>> policy = RateLimitPolicy(rate=100, period=1.0, burst=50)
    >>> policy.decide(None, now=0)[1].remaining
    49
    """

    rate: int
    period: float
    burst: int
    name: str = "default"
    interval: int = field(init=False)
    """``T`` in microseconds, rounded up."""
    tolerance: int = field(init=False)
    """``tau = T × burst`` in microseconds."""

    def __post_init__(self) -> None:
        if isinstance(self.rate, bool) or not isinstance(self.rate, int) or self.rate < 1:
            raise ValueError(f"rate must be a whole number >= 1, got {self.rate!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"burst must be a whole number >= 1, got {self.burst!r}")
        if not math.isfinite(self.period) or self.period <= 0:
            raise ValueError(f"period must be positive seconds, got {self.period!r}")
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"name must be printable ASCII, got {self.name!r}")
        interval = math.ceil(round(self.period * _US, 3) / self.rate)
        if self.period * _US / self.rate < 1:
            raise ValueError(f"{self.rate} per {self.period:g}s is above the 1 per µs this limiter resolves")
        object.__setattr__(self, "interval", interval)
        object.__setattr__(self, "tolerance", interval * self.burst)

    def decide(self, tat: int | None, now: int) -> tuple[int | None, Decision]:
        """GCRA for one request at ``now`` (µs) against the stored ``tat`` (``None`` when the key holds nothing).

        Returns the TAT to store (``None``: leave the key as it is) and the decision.
        """
        base = now if tat is None or tat < now else tat
        new_tat = base + self.interval
        ahead = new_tat - now
        if ahead > self.tolerance:
            return None, self.decision(False, base - now)
        # self.decision(True, ahead) written out (one frame less on every allowed request); ahead <= tolerance
        remaining = (self.tolerance - ahead) // self.interval
        return new_tat, _new_decision(Decision, (True, self.rate, remaining, ahead / _US, 0.0, False))

    def decision(self, allowed: bool, ahead: int) -> Decision:
        """The :class:`Decision` for a result of :meth:`decide`'s arithmetic, wherever it ran (Redis runs it in Lua).

        ``ahead`` is ``TAT − now`` in µs after the request: the new TAT when allowed, the unchanged one when refused.
        """
        if allowed:
            remaining = max(0, (self.tolerance - ahead) // self.interval)
            return _new_decision(Decision, (True, self.rate, remaining, ahead / _US, 0.0, False))
        retry_after = max(0, ahead + self.interval - self.tolerance) / _US
        return Decision(False, self.rate, 0, ahead / _US, retry_after)

    def denied(self, retry_after: float) -> Decision:
        """A refusal made without the store (``on_error: deny``)."""
        return Decision(False, self.rate, 0, retry_after, retry_after, degraded=True)

    def admitted(self) -> Decision:
        """An admission made without the store (``on_error: allow``)."""
        return Decision(True, self.rate, 0, 0.0, degraded=True)

    def quota_window(self) -> tuple[int, int]:
        """``(q, w)`` for RateLimit-Policy: ``rate`` per ``period`` with an integer window of seconds.

        ``100`` per ``1s`` is ``(100, 1)``; ``5`` per ``500ms`` is ``(10, 1)``; a rate with no exact whole-second
        form (``3`` per ``700ms``) is rounded down over a one-second window, so the advertised quota is never more
        than the enforced one.
        """
        if self.period >= 1 and float(self.period).is_integer():
            return self.rate, int(self.period)
        for window in range(1, 61):
            quota = self.rate * window / self.period
            if abs(quota - round(quota)) < 1e-9 and round(quota) >= 1:
                return round(quota), window
        return max(1, math.floor(self.rate / self.period)), 1

    def policy_field(self) -> bytes:
        """The RateLimit-Policy field value: ``"default";q=100;w=1``."""
        quota, window = self.quota_window()
        return b'"%s";q=%d;w=%d' % (_sf_string(self.name), quota, window)


def _sf_string(value: str) -> bytes:
    return value.replace("\\", "\\\\").replace('"', '\\"').encode("ascii")


def _ceil_seconds(seconds: float) -> int:
    return math.ceil(round(seconds, 6))


def rate_limit_headers(policy: RateLimitPolicy, decision: Decision) -> list[tuple[bytes, bytes]]:
    """The response headers for ``decision``: RateLimit-Policy, RateLimit, and Retry-After when refused.

    >>> policy = RateLimitPolicy(rate=100, period=1.0, burst=50)
    >>> rate_limit_headers(policy, policy.decide(None, 0)[1])[1]
    (b'ratelimit', b'"default";r=49;t=1')

    An answer made without the store (``decision.degraded``) reports no remaining quota: none was counted.
    """
    headers = [(b"ratelimit-policy", policy.policy_field())]
    if not decision.degraded:
        reset = _ceil_seconds(decision.reset_after)
        headers.append((b"ratelimit", b'"%s";r=%d;t=%d' % (_sf_string(policy.name), decision.remaining, reset)))
    if not decision.allowed:
        headers.append((b"retry-after", b"%d" % max(1, _ceil_seconds(decision.retry_after))))
    return headers


@dataclass(frozen=True, slots=True)
class KeyPart:
    """One part of a key: ``kind`` is ``client_ip``, ``header``, ``route`` or ``identity``; ``header`` names one."""

    kind: str
    header: bytes = b""

    def __str__(self) -> str:
        return f"header:{self.header.decode('ascii')}" if self.kind == "header" else self.kind


def parse_key(value: str) -> tuple[KeyPart, ...]:
    """The parts of a ``key`` setting; raises ``ValueError`` naming the bad part.

    >>> [str(part) for part in parse_key("header:X-Api-Key, client_ip")]
    ['header:x-api-key', 'client_ip']
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("key must be client_ip, header:NAME, route, identity, or several joined by ','")
    parts: list[KeyPart] = []
    for raw in value.split(","):
        item = raw.strip()
        kind, colon, name = item.partition(":")
        if kind == "header" and colon:
            header = name.strip().lower()
            if not _TOKEN.fullmatch(header):
                raise ValueError(f"key part {item!r}: {name.strip()!r} is not a header name")
            part = KeyPart("header", header.encode("ascii"))
        elif not colon and kind in KEY_KINDS and kind != "header":
            part = KeyPart(kind)
        else:
            raise ValueError(f"unknown key part {item!r}; use client_ip, header:NAME, route or identity")
        if part in parts:
            raise ValueError(f"key part {item!r} is given twice")
        parts.append(part)
    return tuple(parts)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes:
    values = [value.strip(b" \t") for key, value in headers if key.lower() == name]
    return b", ".join(value for value in values if value)  # repeated fields combine with commas (RFC 9110 §5.3)


def rate_limit_key(
    parts: tuple[KeyPart, ...],
    *,
    route: bytes,
    client_ip: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    identity: bytes | None = None,
) -> bytes:
    """The store key for one request: a 32-character hex digest of ``route`` and the key parts' values.

    >>> key = rate_limit_key(parse_key("header:x-api-key"), route=b"api", client_ip=b"10.0.0.1", headers=[])
    >>> key == rate_limit_key(parse_key("client_ip"), route=b"api", client_ip=b"10.0.0.1")
    True

    ``headers`` are the request's (name, value) pairs as ASGI gives them. A part without a value (header absent or
    empty, ``identity`` None or empty) counts as ``client_ip``, so that leaving the header out is no way around the
    limit. ``route`` is always part of the key: two routes never share a bucket.
    """
    digest = hashlib.blake2b(route, digest_size=16)
    seen: list[bytes] = []
    for part in parts:
        if part.kind == "route":
            value = b"route"
        elif part.kind == "header":
            found = _header(headers, part.header)
            value = b"h:" + part.header + b"=" + found if found else b"ip=" + client_ip
        elif part.kind == "identity":
            value = b"id=" + identity if identity else b"ip=" + client_ip
        else:
            value = b"ip=" + client_ip
        if value not in seen:  # "header:x,client_ip" without the header is client_ip once
            seen.append(value)
    for value in seen:
        digest.update(b"\0%d:" % len(value))
        digest.update(value)
    return digest.hexdigest().encode("ascii")


def route_digest(route: bytes) -> hashlib.blake2b:
    """The digest every key of ``route`` starts from: :func:`client_ip_key` copies it instead of hashing ``route``."""
    return hashlib.blake2b(route, digest_size=16)


def client_ip_key(route: hashlib.blake2b, client_ip: bytes) -> bytes:
    """:func:`rate_limit_key` for the key ``client_ip`` alone, from ``route_digest(route)``: the same bytes.

    >>> client_ip_key(route_digest(b"api"), b"10.0.0.1") == rate_limit_key(
    ...     parse_key("client_ip"), route=b"api", client_ip=b"10.0.0.1")
    True

    One request per key is the hot path of the default key: no loop over parts, one update of framing and value.
    """
    digest = route.copy()
    digest.update(b"\0%d:ip=%b" % (len(client_ip) + 3, client_ip))
    return digest.hexdigest().encode("ascii")
