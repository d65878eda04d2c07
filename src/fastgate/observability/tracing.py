"""W3C Trace Context for every exchange, and OpenTelemetry spans when tracing is configured.

How this works
--------------
Every request goes upstream with a ``traceparent`` (W3C Trace Context, level 1), so the upstream's logs and our
access line share a trace id:

* the client sent one valid ``traceparent``: tracing off, it goes on unchanged with its ``tracestate``; tracing
  on, its parent id becomes our CLIENT span's id (the trace id stays).
* none, several, or an invalid one (the spec's rules, section 3.2.2): a new trace starts, and a ``tracestate``
  without a valid ``traceparent`` is dropped (section 3.3.1: it cannot be trusted without its parent). The new
  header is sampled (flags ``01``) when tracing is off, so an upstream whose sampler follows its parent
  (OpenTelemetry's default) still records, as it did before we added the header.

:class:`Tracer` is the one object the proxy talks to. ``Tracer()`` (tracing off) does only the header work above;
nothing of OpenTelemetry is imported. ``Tracer.from_config`` with a ``tracing:`` section (or the ``OTEL_*``
environment) loads ``_otel.py``, which records one SERVER span per exchange and one CLIENT span per upstream try.

Parsing is by position and ``bytes.translate``, no regex: a ``traceparent`` is 55 bytes in version 00.
"""

from __future__ import annotations

import importlib
import os
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .record import ExchangeRecord

if TYPE_CHECKING:
    from ..config import TracingConfig

Headers = list[tuple[bytes, bytes]]

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
_HEX_AND_DASH = b"0123456789abcdef-"
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = 0x01
_SPAN_MASK = (1 << 64) - 1


class TraceParent(NamedTuple):
    """A parsed ``traceparent``: 32 hex digits of trace id, 16 of parent (span) id, the flags byte.

    >>> TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1).header()
    b'00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'
    """

    trace_id: str
    span_id: str
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def header(self) -> bytes:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}".encode("ascii")


def parse_traceparent(value: bytes) -> TraceParent | None:
    """The parsed header, or ``None`` when it is not valid (then a new trace starts).

    >>> parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").sampled
    True

    Version 00 is exactly 55 bytes. A later version may be longer, with a ``-`` after the flags, and is read as
    version 00 (section 4.3); version ``ff`` is invalid. Hex digits are lowercase; an all-zero trace or parent id
    is invalid.
    """
    value = value.strip(b" \t")
    if len(value) != 55:
        # A later version may add fields after the flags, each behind a '-'; version 00 may not.
        if len(value) < 55 or value[55] != 0x2D or value.startswith(b"00-"):
            return None
        value = value[:55]
    # Dashes exactly at 2, 35 and 52 and nowhere else; every other byte a lowercase hex digit.
    if value[2] != 0x2D or value[35] != 0x2D or value[52] != 0x2D or value.count(b"-") != 3:
        return None
    if value.translate(None, _HEX_AND_DASH) or value.startswith(b"ff"):
        return None
    text = value.decode("ascii")
    trace, span = text[3:35], text[36:52]
    if trace == _ZERO_TRACE or span == _ZERO_SPAN:
        return None
    return TraceParent(trace, span, int(text[53:55], 16))


def new_trace_id() -> str:
    """32 random lowercase hex digits, never all zero (what OpenTelemetry's id generator does)."""
    while True:
        bits = random.getrandbits(128)
        if bits:
            return f"{bits:032x}"


def new_span_id() -> str:
    """16 random lowercase hex digits, never all zero."""
    while True:
        bits = random.getrandbits(64)
        if bits:
            return f"{bits:016x}"


def _scan(headers: Headers) -> tuple[bytes | None, bool, list[bytes]]:
    """The last ``traceparent`` value, whether there were several, and the ``tracestate`` values: one pass."""
    found: bytes | None = None
    repeated = False
    states: list[bytes] = []
    for name, value in headers:
        if name == TRACEPARENT:
            repeated = found is not None
            found = value
        elif name == TRACESTATE:
            states.append(value)
    return found, repeated, states


def incoming_context(headers: Headers) -> tuple[TraceParent | None, list[bytes]]:
    """The client's ``traceparent`` (``None`` if absent, repeated or invalid) and its ``tracestate`` values."""
    found, repeated, states = _scan(headers)
    parent = parse_traceparent(found) if found is not None and not repeated else None
    return parent, states if parent is not None else []


def set_trace_headers(headers: Headers, parent: bytes, states: list[bytes]) -> Headers:
    """``headers`` with its ``traceparent``/``tracestate`` replaced by ``parent`` and ``states`` (in place)."""
    headers[:] = [pair for pair in headers if pair[0] != TRACEPARENT and pair[0] != TRACESTATE]
    headers.append((TRACEPARENT, parent))
    headers.extend((TRACESTATE, state) for state in states)
    return headers


def propagate(headers: Headers) -> tuple[str, Headers]:
    """The trace id of this exchange and the headers to send upstream (``headers``, changed in place if needed).

    >>> trace_id, upstream_headers = propagate([(b"host", b"a")])  # no traceparent: a new trace starts
    >>> upstream_headers[-1][0], len(trace_id)
    (b'traceparent', 32)

    This runs on every request: one pass over the headers, and for a new trace (sampled) one append when the
    client sent no trace headers at all.
    """
    found, repeated, states = _scan(headers)
    if found is not None and not repeated:
        parent = parse_traceparent(found)
        if parent is not None:
            return parent.trace_id, headers
    bits = random.getrandbits(192)  # both ids from one call
    trace, span = bits >> 64, bits & _SPAN_MASK
    if not trace or not span:  # all-zero ids are invalid (a 2**-64 chance)
        trace, span = int(new_trace_id(), 16), int(new_span_id(), 16)
    trace_id = f"{trace:032x}"
    value = f"00-{trace_id}-{span:016x}-01".encode("ascii")  # version 00, sampled
    if found is None and not states:
        headers.append((TRACEPARENT, value))
        return trace_id, headers
    return trace_id, set_trace_headers(headers, value, [])


class TryTrace(Protocol):
    """One upstream try: put its context in the try's headers, then end it with a status or an error."""

    def inject(self, headers: Headers) -> Headers: ...

    def end(self, status: int = 0, error: str = "") -> None: ...


class ExchangeTrace(Protocol):
    """One exchange: its trace id (for the log), a span per upstream try, and its end."""

    @property
    def trace_id(self) -> str: ...

    def start_try(self, method: str, scheme: str, host: str, port: int, target: str) -> TryTrace: ...

    def end(self, record: ExchangeRecord) -> None: ...


class _NoTry:
    __slots__ = ()

    def inject(self, headers: Headers) -> Headers:
        return headers

    def end(self, status: int = 0, error: str = "") -> None:
        pass


_NO_TRY = _NoTry()


class _PropagatedTrace:
    """Tracing off: the trace id was propagated, and nothing is recorded."""

    __slots__ = ("trace_id",)

    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id

    def start_try(self, method: str, scheme: str, host: str, port: int, target: str) -> TryTrace:
        return _NO_TRY

    def end(self, record: ExchangeRecord) -> None:
        pass


class Tracer:
    """Trace context for every exchange; OpenTelemetry spans when built with a tracer provider.

    >>> trace = Tracer().begin(head.headers, method="GET", scheme="http", target="/x", http_version="1.1")
    >>> record.trace_id = trace.trace_id   # head.headers now carry the traceparent to send upstream

    ``Tracer(provider)`` takes an OpenTelemetry SDK ``TracerProvider`` (tests pass one with an in-memory
    exporter); :meth:`from_config` builds the OTLP one.
    """

    __slots__ = ("_otel", "_provider")

    def __init__(self, provider: Any = None) -> None:
        self._provider = provider
        self._otel: Any = None
        if provider is not None:
            from . import _otel

            self._otel = _otel.OtelTracer(provider)

    @property
    def enabled(self) -> bool:
        return self._otel is not None

    def __repr__(self) -> str:
        return f"<Tracer {'otel' if self.enabled else 'propagation only'}>"

    @classmethod
    def from_config(cls, config: TracingConfig | None, environ: Mapping[str, str] = os.environ) -> Tracer:
        """Spans exported over OTLP when ``config`` is given or ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` is set.

        ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off whatever the config says.
        """
        if not tracing_wanted(config, environ):
            return cls()
        try:
            otel = importlib.import_module(f"{__package__}._otel")
        except ImportError:
            from ..exceptions import ConfigError

            raise ConfigError(
                "tracing: needs OpenTelemetry's SDK and OTLP exporter: pip install 'fastgate[otel]'"
            ) from None
        return cls(otel.build_provider(config, environ))

    def begin(
        self,
        headers: Headers,
        *,
        method: str,
        scheme: str,
        target: str,
        http_version: str,
        host: bytes = b"",
        client: str = "",
    ) -> ExchangeTrace:
        """Start an exchange: sets the upstream ``traceparent`` in ``headers`` (in place); starts the SERVER span."""
        if self._otel is None:
            return _PropagatedTrace(propagate(headers)[0])
        parent, states = incoming_context(headers)
        exchange: ExchangeTrace = self._otel.begin(
            headers, parent, states, method, scheme, target, http_version, host, client
        )
        return exchange

    def shutdown(self) -> None:
        """Flush and stop the exporter (the lifespan's shutdown)."""
        if self._provider is not None:
            self._provider.shutdown()


def tracing_wanted(config: TracingConfig | None, environ: Mapping[str, str]) -> bool:
    """Whether spans are to be exported: a ``tracing:`` section or an OTLP endpoint in the environment."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    if config is not None:
        return True
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
