"""Microseconds per exchange for each observability step (pure Python, one core). Bounded: a fixed count per case.

Each case runs in 5 rounds and reports the fastest, as timeit does. ``--multiprocess`` re-runs itself with
``PROMETHEUS_MULTIPROC_DIR`` set (the mode is chosen when prometheus-client is imported), as under ``--workers N``.

    venv/bin/python bench/observability_cost.py                  # 100,000 exchanges per case
    venv/bin/python bench/observability_cost.py --multiprocess
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

ROUNDS = 5


def best_us(step: Callable[[], object], count: int) -> float:
    per_round = max(count // ROUNDS, 1)
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(per_round):
            step()
        best = min(best, time.perf_counter() - start)
    return best / per_round * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--multiprocess", action="store_true")
    args = parser.parse_args()
    if args.multiprocess and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        with tempfile.TemporaryDirectory() as directory:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
            subprocess.run([sys.executable, __file__, "--count", str(args.count)], env=env, check=True)
        return

    from fastgate.observability.access import format_json, format_text
    from fastgate.observability.metrics import Metrics
    from fastgate.observability.record import ExchangeRecord
    from fastgate.observability.tracing import Tracer, propagate

    metrics = Metrics()
    record = ExchangeRecord("0", "api", "10.0.0.1:9000", "GET", "/items?id=1", "1.1", "127.0.0.1:50000", 200, 1024,
                            0.0042, "6f1c2a9b00000001")  # fmt: skip
    metrics.observe(record)  # the first observe of a combination binds its children
    headers = [(b"host", b"gw"), (b"user-agent", b"wrk"), (b"accept", b"*/*"), (b"x-request-id", b"6f1c2a9b00000001")]
    traceparent = (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    tracer = Tracer()
    child = metrics.requests.labels("0", "api", "GET", "200")
    histogram = metrics.duration.labels("0", "api")

    def traced_off() -> None:
        trace = tracer.begin(list(headers), method="GET", scheme="http", target="/items", http_version="1.1")
        trace.start_try("GET", "http", "10.0.0.1", 9000, "/items").end(200)
        trace.end(record)

    cases: list[tuple[str, Callable[[], object]]] = [
        (
            "ExchangeRecord(...) built",
            lambda: ExchangeRecord("0", "api", "a", "GET", "/", "1.1", "-", 200, 1, 0.1, "r"),
        ),
        ("metrics.observe(record)", lambda: metrics.observe(record)),
        ("  of which counter child .inc()", child.inc),
        ("  of which histogram child .observe()", lambda: histogram.observe(0.0042)),
        ("  a .labels() lookup, for comparison", lambda: metrics.requests.labels("0", "api", "GET", "200")),
        ("metrics.upstream_try(...)", lambda: metrics.upstream_try("api", "10.0.0.1:9000", 200)),
        ("format_text(record)", lambda: format_text(record)),
        ("format_json(record)", lambda: format_json(record)),
        ("propagate(headers), client sent traceparent", lambda: propagate([*headers, traceparent])),
        ("propagate(headers), new trace", lambda: propagate(list(headers))),
        ("Tracer() off: begin + try + end", traced_off),
    ]
    cases += exchange_cases(record, headers)
    mode = "multiprocess (mmap files)" if metrics.multiprocess else "single process"
    print(f"prometheus-client mode: {mode}; best of {ROUNDS} rounds, {args.count:,} calls per case")
    for name, step in cases:
        print(f"  {name:<46} {best_us(step, args.count):6.2f} µs")


def exchange_cases(template: object, headers: list[tuple[bytes, bytes]]) -> list[tuple[str, Callable[[], object]]]:
    """What forward_http adds per request, all of it: record, begin, one try through the cluster's observer, finish.

    The access line is off here (its formatting is measured above; writing it is the logging handler's cost).
    """
    from fastgate.config import UpstreamTarget
    from fastgate.observability.exchange import Observability
    from fastgate.observability.metrics import Metrics
    from fastgate.observability.record import ExchangeRecord
    from fastgate.observability.tracing import Tracer
    from fastgate.observability.upstream import TryObserver
    from fastgate.upstream.transport import UpstreamRequest

    assert isinstance(template, ExchangeRecord)
    targets = [UpstreamTarget(url="http://10.0.0.1:9000")]

    def tracer(on: bool) -> Tracer:
        if not on:
            return Tracer()
        from opentelemetry.sdk.trace import TracerProvider

        return Tracer(TracerProvider())  # spans recorded, no exporter: the SDK's own cost

    def case(metrics_on: bool, tracing_on: bool) -> Callable[[], object]:
        metrics = Metrics(process_metrics=False) if metrics_on else None
        observability = Observability(tracer(tracing_on), metrics)
        observer = TryObserver("api", targets, metrics) if metrics_on or tracing_on else None

        def exchange() -> None:
            record = ExchangeRecord("0", "api", "", "GET", "", "1.1", "127.0.0.1:50000")
            upstream_headers = list(headers)
            trace = observability.begin(upstream_headers, record, scheme="http")
            request = UpstreamRequest(b"GET", b"/items?id=1", upstream_headers)
            if tracing_on:
                request.trace = trace
            if observer is not None:
                observer.answered(0, 200, observer.start_try(request, 0))
            record.status, record.bytes_sent, record.duration_s = 200, 1024, 0.0042
            record.target, record.request_id, record.upstream_address = "/items?id=1", "r", "10.0.0.1:9000"
            observability.finish(record, trace)

        exchange()  # binds the label children
        return exchange

    import logging

    from fastgate.observability.logging import access_logger

    def baseline() -> None:
        """What the request path did before: the same request built, the access logger asked, nothing else."""
        upstream_headers = list(headers)
        UpstreamRequest(b"GET", b"/items?id=1", upstream_headers)
        access_logger.isEnabledFor(logging.INFO)

    return [
        ("per request: baseline (no observability)", baseline),
        ("per request: metrics off, tracing off", case(False, False)),
        ("per request: metrics on, tracing off", case(True, False)),
        ("per request: metrics off, tracing on", case(False, True)),
        ("per request: metrics on, tracing on", case(True, True)),
    ]


if __name__ == "__main__":
    main()
