"""W3C trace context on every exchange; OpenTelemetry spans when tracing is configured (operations issue)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastgate.config import TracingConfig
from fastgate.exceptions import ConfigError
from fastgate.observability.record import ExchangeRecord
from fastgate.observability.tracing import TraceParent, Tracer, parse_traceparent, propagate, tracing_wanted

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01".encode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (VALID, TraceParent(TRACE, SPAN, 1)),
        (f"00-{TRACE}-{SPAN}-00".encode(), TraceParent(TRACE, SPAN, 0)),
        (f"00-{TRACE}-{SPAN}-09".encode(), TraceParent(TRACE, SPAN, 9)),  # unknown flags kept
        (b" " + VALID + b"\t", TraceParent(TRACE, SPAN, 1)),  # optional whitespace around a header value
        (f"01-{TRACE}-{SPAN}-01".encode(), TraceParent(TRACE, SPAN, 1)),  # a later version, read as 00
        (f"cc-{TRACE}-{SPAN}-01-what-the-future-adds".encode(), TraceParent(TRACE, SPAN, 1)),
        (b"", None),
        (VALID[:-1], None),  # too short
        (VALID + b"-", None),  # version 00 is exactly 55 bytes
        (VALID + b"0", None),
        (f"cc-{TRACE}-{SPAN}-01x".encode(), None),  # a later version needs '-' after the flags
        (f"ff-{TRACE}-{SPAN}-01".encode(), None),  # version ff is invalid
        (f"0g-{TRACE}-{SPAN}-01".encode(), None),
        (f"00-{TRACE.upper()}-{SPAN}-01".encode(), None),  # lowercase hex only
        (f"00-{'0' * 32}-{SPAN}-01".encode(), None),  # all-zero trace id
        (f"00-{TRACE}-{'0' * 16}-01".encode(), None),  # all-zero parent id
        (f"00-{TRACE[:-1]}x-{SPAN}-01".encode(), None),
        (f"00-{TRACE}-{SPAN[:-1]}z-01".encode(), None),
        (f"00-{TRACE}-{SPAN}-0x".encode(), None),
        (f"00_{TRACE}_{SPAN}_01".encode(), None),  # wrong separators
        (f"00-{TRACE}{SPAN}--01".encode(), None),
        (f"00-+{TRACE[1:]}-{SPAN}-01".encode(), None),  # int() would take a sign; we do not
    ],
)
def test_traceparent_table(header: bytes, expected: TraceParent | None) -> None:
    assert parse_traceparent(header) == expected


def test_a_valid_traceparent_goes_upstream_unchanged_with_its_tracestate() -> None:
    headers = [(b"host", b"a"), (b"traceparent", VALID), (b"tracestate", b"congo=t61rcWkgMzE")]
    trace_id, upstream = propagate(headers)
    assert trace_id == TRACE
    assert upstream == [(b"host", b"a"), (b"traceparent", VALID), (b"tracestate", b"congo=t61rcWkgMzE")]


@pytest.mark.parametrize(
    "client_headers",
    [
        [],
        [(b"traceparent", b"00-junk")],
        [(b"traceparent", VALID), (b"traceparent", VALID)],  # repeated: invalid
        [(b"traceparent", f"00-{'0' * 32}-{SPAN}-01".encode()), (b"tracestate", b"a=b")],
    ],
)
def test_a_new_trace_starts_without_a_valid_traceparent(client_headers: list[tuple[bytes, bytes]]) -> None:
    trace_id, upstream = propagate([(b"host", b"a"), *client_headers])
    sent = [value for name, value in upstream if name == b"traceparent"]
    assert len(sent) == 1
    parent = parse_traceparent(sent[0])
    assert parent is not None and parent.trace_id == trace_id and parent.sampled
    assert trace_id not in (TRACE, "0" * 32)
    assert not [pair for pair in upstream if pair[0] == b"tracestate"]  # no tracestate without its parent
    assert (b"host", b"a") in upstream


def test_each_new_trace_has_its_own_id() -> None:
    assert len({propagate([])[0] for _ in range(100)}) == 100


def test_tracer_off_propagates_and_records_nothing() -> None:
    tracer = Tracer()
    assert not tracer.enabled
    headers = [(b"traceparent", VALID)]
    trace = tracer.begin(headers, method="GET", scheme="http", target="/", http_version="1.1")
    assert trace.trace_id == TRACE
    attempt = trace.start_try("GET", "http", "10.0.0.1", 80, "/")
    assert attempt.inject(headers) == [(b"traceparent", VALID)]
    attempt.end(200)
    trace.end(ExchangeRecord(status=200))


def test_tracing_is_wanted_with_a_section_or_an_otlp_endpoint_in_the_environment() -> None:
    assert not tracing_wanted(None, {})
    assert tracing_wanted(TracingConfig(), {})
    assert tracing_wanted(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert tracing_wanted(None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing_wanted(TracingConfig(), {"OTEL_SDK_DISABLED": "true"})
    assert not tracing_wanted(TracingConfig(), {"OTEL_TRACES_EXPORTER": "none"})


def test_tracing_config_checks_the_endpoint() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        TracingConfig(otlp_endpoint="collector:4318")
    with pytest.raises(ValueError):
        TracingConfig(sample_ratio=1.5)


def test_nothing_of_opentelemetry_is_imported_when_tracing_is_off() -> None:
    code = (
        "import sys, fastgate, fastgate.server, fastgate.observability.metrics, fastgate.observability.access\n"
        "from fastgate.observability.tracing import Tracer\n"
        "tracer = Tracer.from_config(None, {})\n"
        "trace = tracer.begin([], method='GET', scheme='http', target='/', http_version='1.1')\n"
        "trace.start_try('GET', 'http', 'a', 80, '/').end(200)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry') or m.endswith('_otel')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_a_missing_otel_extra_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastgate.observability._otel", None)  # as if the import failed
    with pytest.raises(ConfigError, match=r"fastgate\[otel\]"):
        Tracer.from_config(TracingConfig(), {})
