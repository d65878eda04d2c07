"""An upstream's targets as one :class:`~fastgate.upstream.transport.Transport`: pick, send, retry, record health.

How this works
--------------
A :class:`Cluster` owns one transport per target (each with its own keep-alive pool and limits, and its own URL
path prefix), a balancer (``upstream/balancer.py``), the targets' health (``upstream/health_state.py``, fed by the
prober in ``upstream/health.py`` and by real traffic here) and a retry budget. ``send`` is the retry loop:

1. Pick a target among the eligible ones (healthy, not tried yet by this request); none healthy: all of them
   (fail open, logged once until one is back). Without preserve_host, the Host header becomes the target's.
2. Send through the target's transport. ``send`` returns when the response head is here, so every retry happens
   before a byte went to the client. A failure (connect error, timeout, reset) or a response status is recorded
   for passive health (outlier detection), then ``policies/retry_policy.py`` decides; a status listed in
   ``retry_on`` is retried only by closing that response first, else it is returned as it is.
3. A request body is replayed only from a bounded buffer (``retries.replay_buffer_bytes``, 64 KiB): the body goes
   through :class:`_Replay`, which keeps the pieces sent so far until they pass the bound and then keeps nothing.
   A body that outgrew it is never replayed, so its request is retried only where nothing was sent (a connect
   error, before the body is read at all).
4. Backoff is slept on the request's own task (cancelled with it); the budget counts requests while ``send`` runs.

One target (the ``url`` form): no pick, no health lookup; the loop costs a counter and two attribute reads.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.abc

from ..config import RetryPolicy as RetryConfig
from ..config import Timeouts, UpstreamConfig, UpstreamTarget
from ..exceptions import (
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from ..observability.logging import TRACE, error_logger, upstream_logger
from ..policies.retry_policy import RetryPolicy
from .balancer import LeastRequest, create_balancer, eligible_targets
from .health import Prober, active_check, outlier_detection
from .health_state import FailureKind, HealthEvent, HealthState, Outcome, TargetState
from .pool import PoolStats
from .transport import IDEMPOTENT_METHODS, Transport, UpstreamRequest, UpstreamResponse, create_target_transport


def failure_kind(exc: UpstreamError) -> FailureKind | None:
    """How a try failed, for health and retries; None for failures that are not the target's (pool exhausted)."""
    if isinstance(exc, UpstreamConnectError | UpstreamConnectTimeout):
        return "connect_error"  # nothing was sent (Envoy's connect-failure counts connect timeouts too)
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamProtocolError):
        return "reset"
    return None


def retry_policy(config: RetryConfig) -> RetryPolicy:
    """The pure retry policy for a config ``retries`` block."""
    return RetryPolicy(
        max_retries=config.max_retries,
        retry_on=frozenset(config.retry_on),
        per_try_timeout=config.per_try_timeout,
        backoff_base=config.backoff.base,
        backoff_max=config.backoff.max,
        budget_percent=config.budget_percent,
        min_retry_concurrency=config.min_retry_concurrency,
        non_idempotent=config.non_idempotent,
    )


class ClusterObserver(Protocol):
    """Told of every try and health change (``observability/upstream.py``: metrics, client spans).

    A cluster without one (metrics and tracing off) pays one ``is None`` test per try. ``start_try`` returns a
    token (the try's span, or None) that the cluster hands back to ``answered`` or ``failed``.
    """

    def start_try(self, request: UpstreamRequest, index: int) -> Any: ...

    def answered(self, index: int, status: int, token: Any) -> None: ...

    def failed(self, index: int, code: str, connect_error: bool, token: Any) -> None: ...

    def health_changed(self, events: list[HealthEvent]) -> None: ...


@dataclass(frozen=True, slots=True)
class _Retry:
    """A retry policy as the loop reads it, computed once per config object."""

    policy: RetryPolicy
    statuses: frozenset[int]
    replay_limit: int
    after_send: bool  # something other than connect_error may be retried, so a sent body may need replaying


class _Replay:
    """The request body, keeping what went out (up to ``limit`` bytes) so that a retry can send it again."""

    __slots__ = ("_source", "_chunks", "_size", "_limit", "_pos", "_done", "overflowed", "touched")

    def __init__(self, source: AsyncIterator[bytes], limit: int) -> None:
        self._source = source
        self._chunks: list[bytes] = []
        self._size = 0
        self._limit = limit
        self._pos = 0
        self._done = False
        self.overflowed = False
        self.touched = False

    def __aiter__(self) -> _Replay:
        return self

    async def __anext__(self) -> bytes:
        pos = self._pos
        if pos < len(self._chunks):
            self._pos = pos + 1
            return self._chunks[pos]
        if self._done:
            raise StopAsyncIteration
        self.touched = True
        try:
            chunk = await self._source.__anext__()
        except StopAsyncIteration:
            self._done = True
            raise
        if not self.overflowed:
            self._size += len(chunk)
            if self._size > self._limit:
                self.overflowed = True  # from here on nothing is kept, and nothing can be replayed
                self._chunks.clear()
                self._pos = 0
            else:
                self._chunks.append(chunk)
                self._pos += 1
        return chunk

    def rewind(self) -> bool:
        """Start again from the first piece; False when that is impossible (the body outgrew the buffer)."""
        if self.overflowed:
            return False
        self._pos = 0
        return True


class _Tracked:
    """A response that tells the balancer when it is closed (least_request counts requests in flight)."""

    __slots__ = ("_response", "_done", "status", "headers", "target", "tries", "aclose_waits")

    def __init__(self, response: UpstreamResponse, done: Callable[[], None]) -> None:
        self._response = response
        self._done: Callable[[], None] | None = done
        self.status = response.status
        self.headers = response.headers
        self.target = response.target
        self.tries = response.tries
        self.aclose_waits = response.aclose_waits

    @property
    def trailers(self) -> list[tuple[bytes, bytes]] | None:
        return self._response.trailers

    async def read(self) -> bytes:
        return await self._response.read()

    def read_buffered(self) -> tuple[bytes, bool]:
        return self._response.read_buffered()

    async def aclose(self) -> None:
        done, self._done = self._done, None
        try:
            await self._response.aclose()
        finally:
            if done is not None:
                done()


class ClusterTarget:
    """One target at runtime: its config, its transport and its counters."""

    __slots__ = ("index", "config", "address", "authority", "transport", "requests", "errors")

    def __init__(self, index: int, config: UpstreamTarget, transport: Transport) -> None:
        self.index = index
        self.config = config
        self.address = config.address
        self.authority = config.authority
        self.transport = transport
        self.requests = 0
        self.errors = 0

    def __repr__(self) -> str:
        return f"<ClusterTarget {self.address} requests={self.requests} errors={self.errors}>"


@dataclass(frozen=True, slots=True)
class TargetStats:
    """One target's state for the admin API, metrics and tests (``Cluster.stats()``).

    ``ejected_for`` is the seconds of ejection left (None when not ejected); ``pool`` is None for the httpx
    transport; ``requests`` counts tries since the cluster started, ``errors`` those of them that failed (a connect
    error, a timeout, a reset) or were answered 5xx (the admin API's ``/upstreams`` contract).
    """

    address: str
    url: str
    weight: int
    state: str
    ejected_for: float | None
    pool: PoolStats | None
    requests: int
    errors: int


def target_config(config: UpstreamConfig, target: UpstreamTarget) -> UpstreamConfig:
    """``config`` narrowed to one of its targets (each target's transport reads its address from it)."""
    return config.model_copy(update={"url": target.url, "targets": (target,)})


class Cluster:
    """An upstream's targets behind the :class:`Transport` interface.

    >>> async with Cluster("api", UpstreamConfig(targets=[{"url": "http://a:80"}, {"url": "http://b:80"}])) as c:
    ...     response = await c.send(UpstreamRequest(b"GET", b"/", [(b"host", b"api")]), None)
    """

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        *,
        rng: random.Random | None = None,
        observer: ClusterObserver | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.observer = observer
        self._rng = rng or random.Random()
        self.targets = [
            ClusterTarget(i, t, create_target_transport(name, target_config(config, t)))
            for i, t in enumerate(config.targets)
        ]
        self._n = len(self.targets)
        self.balancer = create_balancer(
            config.balancer,
            [t.weight for t in config.targets],
            names=[t.address for t in config.targets],
            rng=self._rng,
        )
        self._least = self.balancer if isinstance(self.balancer, LeastRequest) else None
        self._hash = config.hash_source if config.balancer == "consistent_hash" else None
        check = active_check(config.health_check)
        outlier = outlier_detection(config.outlier_detection)
        self.health = HealthState(self._n, active=check, outlier=outlier)
        self._passive = outlier is not None and self._n > 1
        self._rewrite_host = not config.preserve_host and self._n > 1
        self._retries: dict[int, tuple[RetryConfig, _Retry]] = {}
        self._default_retry = self._retry(config.retries)
        self.budget = self._default_retry.policy.new_budget()
        self._timeouts: dict[tuple[int, float], tuple[Timeouts, Timeouts]] = {}
        self._all_down = False
        self._prober = Prober(name, config, self.health, self.log_events, self._rng) if check is not None else None
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def pool(self) -> Any:
        """The first target's connection pool (the only one for the ``url`` form); see ``stats()`` for all."""
        return getattr(self.targets[0].transport, "pool", None)

    def __repr__(self) -> str:
        return f"<Cluster {self.name} {self.balancer!r} {self.health!r} {self.budget!r}>"

    async def __aenter__(self) -> Cluster:
        async with contextlib.AsyncExitStack() as stack:
            for target in self.targets:
                await stack.enter_async_context(target.transport)
            if self._prober is not None:
                group = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(group.cancel_scope.cancel)  # runs before the group waits for its task
                group.start_soon(self._prober.run, name=f"fastgate health {self.name}")
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    # -- the request path ---------------------------------------------------------------------------------------

    async def send(self, request: UpstreamRequest, body: AsyncIterator[bytes] | None) -> UpstreamResponse:
        retry = self._default_retry if request.retry is None else self._retry(request.retry)
        policy = retry.policy
        if policy.per_try_timeout is not None:
            request.timeouts = self._per_try(request.timeouts or self.config.timeouts, policy.per_try_timeout)
        replay: _Replay | None = None
        if (
            body is not None
            and policy.max_retries
            and retry.after_send
            and retry.replay_limit
            and (policy.non_idempotent or request.method in IDEMPOTENT_METHODS)
        ):
            body = replay = _Replay(body, retry.replay_limit)
        budget = self.budget
        budget.active += 1
        retries = 0
        attempt = 0
        tried: list[int] | None = None
        observer = self.observer
        try:
            while True:
                attempt += 1
                request.tries = attempt
                target = self.targets[0] if self._n == 1 else self.targets[self._pick(request, tried)]
                if self._rewrite_host:
                    request.headers[0] = (b"host", target.authority)
                index = target.index
                least = self._least
                if least is not None:
                    least.on_start(index)
                target.requests += 1
                token = observer.start_try(request, index) if observer is not None else None
                tracked = False  # the response carries on_finish to its aclose (least_request only)
                try:
                    try:
                        response = await target.transport.send(request, body)
                    except UpstreamError as exc:
                        kind = failure_kind(exc)
                        if observer is not None:
                            observer.failed(index, exc.code, kind == "connect_error", token)
                        if kind is None:  # not the target's failure (the pool was exhausted, say)
                            raise
                        target.errors += 1
                        if self._passive:
                            self.record(index, kind)
                        if (
                            not self._may_retry(retry, attempt, kind, request, body, replay)
                            or not budget.try_start_retry()
                        ):
                            raise
                        retries += 1
                        why = f"{kind} ({exc.detail})"
                    except BaseException as exc:  # the client went (cancelled), or sent a bad body: the try ends here
                        if observer is not None:
                            observer.failed(index, getattr(exc, "code", "cancelled"), False, token)
                        raise
                    else:
                        status = response.status
                        if status >= 500:
                            target.errors += 1
                        if observer is not None:
                            observer.answered(index, status, token)
                        if self._passive:
                            self.record(index, status)
                        if (
                            status not in retry.statuses
                            or not self._may_retry(retry, attempt, status, request, body, replay)
                            or not budget.try_start_retry()
                        ):
                            response.tries = attempt
                            if least is not None:
                                tracked = True
                                return _Tracked(response, functools.partial(least.on_finish, index))
                            return response
                        retries += 1
                        why = f"status {status}"
                        with anyio.CancelScope(shield=response.aclose_waits):
                            await response.aclose()
                finally:  # an upstream error, a bad body or cancellation: this try is no longer in flight
                    if least is not None and not tracked:
                        least.on_finish(index)
                if replay is not None:
                    replay.rewind()
                if upstream_logger.isEnabledFor(TRACE):
                    upstream_logger.log(
                        TRACE, "%s: try %d at %s failed: %s; retrying", self.name, attempt, target.address, why
                    )
                if self._n > 1:
                    tried = [index] if tried is None else [*tried, index]
                await anyio.sleep(policy.backoff(attempt, self._rng))
        finally:
            budget.active -= 1
            for _ in range(retries):
                budget.finish_retry()

    def _may_retry(
        self,
        retry: _Retry,
        attempt: int,
        failure: Outcome,
        request: UpstreamRequest,
        body: AsyncIterator[bytes] | None,
        replay: _Replay | None,
    ) -> bool:
        sent = failure != "connect_error"
        if body is not None and sent and (replay is None or replay.overflowed):
            return False  # the body went (at least partly) upstream and cannot be sent again
        method = request.method.decode("latin-1")
        return retry.policy.should_retry(attempt, failure, method, request_sent=sent, response_started=False)

    def _pick(self, request: UpstreamRequest, tried: list[int] | None) -> int:
        healthy = self.health.eligible(time.monotonic())
        if healthy is not None and not healthy:
            if not self._all_down:
                self._all_down = True
                error_logger.warning(
                    "upstream %s: all %d targets are down; sending to them anyway (fail open)", self.name, self._n
                )
        elif self._all_down:
            self._all_down = False
            error_logger.warning("upstream %s: a target is healthy again; no longer failing open", self.name)
        eligible = healthy if tried is None else eligible_targets(self._n, healthy, tried)
        return self.balancer.pick(eligible, self._key(request) if self._hash is not None else None)

    def _key(self, request: UpstreamRequest) -> bytes | None:
        assert self._hash is not None
        kind, name = self._hash
        if kind == "client_ip":
            return request.client or None
        wanted = name.encode("latin-1")
        for header, value in request.headers:
            if kind == "header" and header == wanted:
                return value
            if kind == "cookie" and header == b"cookie":
                for pair in value.split(b";"):
                    key, sep, cookie = pair.strip().partition(b"=")
                    if sep and key == wanted:
                        return cookie
        return None

    def _retry(self, config: RetryConfig) -> _Retry:
        cached = self._retries.get(id(config))
        if cached is not None and cached[0] is config:
            return cached[1]
        policy = retry_policy(config)
        statuses = frozenset(item for item in policy.retry_on if isinstance(item, int))
        after_send = any(item != "connect_error" for item in policy.retry_on)
        retry = _Retry(policy, statuses, config.replay_buffer_bytes, after_send)
        self._retries[id(config)] = (config, retry)  # the config is kept alive, so its id stays its own
        return retry

    def _per_try(self, timeouts: Timeouts, per_try: float) -> Timeouts:
        cached = self._timeouts.get((id(timeouts), per_try))
        if cached is not None and cached[0] is timeouts:
            return cached[1]
        read = per_try if timeouts.read is None else min(timeouts.read, per_try)
        narrowed = timeouts.model_copy(update={"read": read})
        if len(self._timeouts) > 1024:
            self._timeouts.clear()
        self._timeouts[(id(timeouts), per_try)] = (timeouts, narrowed)
        return narrowed

    # -- health ---------------------------------------------------------------------------------------------------

    def record(self, index: int, outcome: Outcome) -> None:
        """Record how one try to target ``index`` ended (passive health), logging any state change."""
        events = self.health.record_outcome(index, outcome, time.monotonic())
        if events:
            self.log_events(events)

    def log_events(self, events: list[HealthEvent]) -> None:
        if self.observer is not None:
            self.observer.health_changed(events)
        for event in events:
            target = self.targets[event.target]
            level = 30 if event.new is not TargetState.HEALTHY else 20  # WARNING down, INFO back
            error_logger.log(
                level,
                "upstream %s: target %s %s -> %s (%s%s)",
                self.name,
                target.address,
                event.old.value,
                event.new.value,
                event.reason,
                f": {event.detail}" if event.detail else "",
            )

    def pick(self, request: UpstreamRequest, tried: list[int] | None = None) -> ClusterTarget:
        """A target for a request that does not go through ``send`` (a WebSocket handshake); Host set as in send."""
        target = self.targets[0] if self._n == 1 else self.targets[self._pick(request, tried)]
        if self._rewrite_host:
            request.headers[0] = (b"host", target.authority)
        return target

    @property
    def retry(self) -> RetryPolicy:
        """The upstream's retry policy."""
        return self._default_retry.policy

    def stats(self) -> list[TargetStats]:
        """Per-target state and counters."""
        now = time.monotonic()
        result = []
        for target in self.targets:
            until = self.health.ejected_until(target.index)
            pool: Any = getattr(target.transport, "pool", None)
            result.append(
                TargetStats(
                    address=target.address,
                    url=target.config.url,
                    weight=target.config.weight,
                    state=self.health.state(target.index, now).value,
                    ejected_for=until - now if until is not None and until > now else None,
                    pool=pool.stats() if pool is not None else None,
                    requests=target.requests,
                    errors=target.errors,
                )
            )
        return result
