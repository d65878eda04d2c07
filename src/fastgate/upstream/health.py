"""Active health checks: one prober task per upstream, in its cluster's task group.

How this works
--------------
Each target is probed on its own schedule: the first probe after ``U[0, interval)``, then every ``interval`` plus
15% jitter (``health_state.ActiveCheck``), so that gateways and workers that start together do not probe in step.
A probe is ``GET path`` with ``Connection: close`` on a connection of its own (never one of the pool's, so a probe
neither waits behind traffic nor leaves a half-read connection in the pool); only the status line is read. No answer
within ``timeout``, a refused connection or a status outside ``expected_status`` fail it. Results go to the
upstream's :class:`HealthState`, whose transitions are logged once each by the cluster.

The prober task wakes when the next probe is due (at least every quarter interval, which also ends ejections on
time for the log), and starts the due probes in its task group, so a slow target does not delay the others.
With ``--workers N`` every worker probes every target (N probes per interval per target) and keeps its own state.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Callable

import anyio

from ..config import HealthCheck, UpstreamConfig
from ..config import OutlierDetection as OutlierConfig
from .health_state import ActiveCheck, ExpectedStatus, HealthEvent, HealthState, OutlierDetection
from .tls import client_context

USER_AGENT = b"fastgate-health-check"


def active_check(config: HealthCheck | None) -> ActiveCheck | None:
    if config is None:
        return None
    return ActiveCheck(
        interval=config.interval,
        timeout=config.timeout,
        unhealthy_threshold=config.unhealthy_threshold,
        healthy_threshold=config.healthy_threshold,
        expected_status=ExpectedStatus.parse(config.expected_status),
    )


def outlier_detection(config: OutlierConfig | None) -> OutlierDetection | None:
    if config is None:
        return None
    return OutlierDetection(
        consecutive_failures=config.consecutive_failures,
        base_ejection_time=config.base_ejection_time,
        max_ejection_time=max(config.max_ejection_time, config.base_ejection_time),
        max_ejection_percent=config.max_ejection_percent,
    )


async def probe(
    host: str, port: int, request: bytes, limit: float, context: ssl.SSLContext | None = None
) -> int | None:
    """Send one health-check request; the response status, or None (no connection, no answer in time, not HTTP)."""
    with anyio.move_on_after(limit):
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if context else None
            )
        except OSError:
            return None
        try:
            writer.write(request)
            line = await reader.readline()
        except OSError:
            return None
        finally:
            writer.close()
        version, _, rest = line.partition(b" ")
        code = rest[:3]
        if version.startswith(b"HTTP/") and len(code) == 3 and code.isdigit():
            return int(code)
        return None
    return None


class Prober:
    """Probes an upstream's targets for as long as ``run()`` runs.

    prober = Prober("api", upstream_config, health, on_events=cluster.log_events, rng=random.Random())
    task_group.start_soon(prober.run)
    """

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        health: HealthState,
        on_events: Callable[[list[HealthEvent]], None],
        rng: random.Random,
    ) -> None:
        assert config.health_check is not None
        self.name = name
        self.path = config.health_check.path
        self.grpc_service = config.health_check.service if config.health_check.type == "grpc" else None
        self.check = active_check(config.health_check)
        self.targets = config.targets
        self.health = health
        self.on_events = on_events
        self.rng = rng
        self._context = client_context(config.ca_file) if any(t.scheme == "https" for t in self.targets) else None
        if self._context is not None and self.grpc_service is not None:
            self._context.set_alpn_protocols(["h2"])  # a context of this prober's own: gRPC needs HTTP/2
        self._requests = [
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n"
            % (self.path.encode("ascii"), t.authority, USER_AGENT)
            for t in self.targets
        ]
        self.probes = 0

    def __repr__(self) -> str:
        what = self.path if self.grpc_service is None else f"grpc:{self.grpc_service or '(server)'}"
        return f"<Prober {self.name} {what} targets={len(self.targets)} probes={self.probes}>"

    async def run(self) -> None:
        check = self.check
        assert check is not None
        now = time.monotonic()
        due = [now + check.first_probe_delay(self.rng) for _ in self.targets]
        running = [False] * len(self.targets)
        async with anyio.create_task_group() as group:
            while True:
                now = time.monotonic()
                for index, when in enumerate(due):
                    if when <= now and not running[index]:
                        running[index] = True
                        group.start_soon(self._probe, index, due, running)
                events = self.health.poll(now)
                if events:
                    self.on_events(events)
                pending = [when for index, when in enumerate(due) if not running[index]]
                wait = min(pending, default=now + check.interval) - now
                await anyio.sleep(min(max(wait, 0.005), check.interval / 4))

    async def _probe(self, index: int, due: list[float], running: list[bool]) -> None:
        check = self.check
        assert check is not None
        target = self.targets[index]
        context = self._context if target.scheme == "https" else None
        try:
            if self.grpc_service is not None:
                service = self.grpc_service
                from .grpc_health import grpc_check  # the HTTP/2 codec loads only for gRPC checks

                passed = await grpc_check(target.host, target.port, target.authority, service, check.timeout, context)
            else:
                status = await probe(target.host, target.port, self._requests[index], check.timeout, context)
                passed = status is not None and check.passed(status)
            self.probes += 1
            now = time.monotonic()
            events = self.health.record_check(index, passed, now)
            if events:
                self.on_events(events)
        finally:
            due[index] = time.monotonic() + check.next_probe_delay(self.rng)
            running[index] = False
