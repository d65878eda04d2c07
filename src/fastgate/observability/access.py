"""The access line for one :class:`ExchangeRecord`: today's text line, or one JSON object for log shippers.

``server.access_log_format`` picks the formatter once (:func:`access_formatter`); the per-request cost is one
f-string (text) or one f-string with C-escaped strings (JSON), never ``json.dumps`` of a dict. The line goes to
``fastgate.access`` as a message without arguments, so logging does no ``%`` formatting of its own; the JSON
format needs the handler's formatter to be ``%(message)s`` (:func:`fastgate.observability.logging.logging_config`).

JSON fields (stable, for log shippers): ``time`` (RFC 3339, UTC, milliseconds), ``client``, ``method``, ``target``,
``http_version``, ``status``, ``bytes``, ``duration`` (seconds), ``route``, ``upstream``, ``upstream_address``,
``request_id``, ``trace_id``, ``retries``, ``outcome``, ``websocket``; on a gRPC request only, ``grpc_status``
(a number, or null when the exchange ended without one). The text line of a gRPC request has ``grpc_status=N``
(``-``: none) after the request id and trace id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_str  # the C encoder: quotes and escapes one str
from typing import Literal

from .record import CLIENT_CLOSED_STATUS, ExchangeRecord

AccessLogFormat = Literal["text", "json"]
Formatter = Callable[[ExchangeRecord], str]


def format_text(record: ExchangeRecord) -> str:
    """Today's access line, character for character; ``trace_id=`` follows ``request_id=`` once a trace id is set.

    >>> format_text(ExchangeRecord(upstream="api", method="GET", target="/", status=200, request_id="ab"))
    '- - "GET / HTTP/1.1" 200 0 0.0ms upstream=api request_id=ab'
    """
    trace_id = record.trace_id
    outcome = record.outcome
    if record.websocket:
        return (
            f'{record.client} - "WebSocket {record.target}" {record.status} {record.duration_s * 1000:.1f}ms'
            f" upstream={record.upstream} request_id={record.request_id}"
            f"{f' trace_id={trace_id}' if trace_id else ''}{f' ({outcome})' if outcome else ''}"
        )
    # record.logged_status, inline (a property call costs more than the test); one f-string for the whole line.
    status = CLIENT_CLOSED_STATUS if outcome and outcome.startswith("client") else record.status
    return (
        f'{record.client} - "{record.method} {record.target} HTTP/{record.http_version}" {status}'
        f" {record.bytes_sent} {record.duration_s * 1000:.1f}ms upstream={record.upstream}"
        f" request_id={record.request_id}{f' trace_id={trace_id}' if trace_id else ''}"
        f"{_grpc_text(record) if record.grpc else ''}{f' ({outcome})' if outcome else ''}"
    )


def _grpc_text(record: ExchangeRecord) -> str:
    code = record.grpc_status
    return f" grpc_status={'-' if code is None else code}"


_MILLISECONDS = tuple(f"{ms:03d}" for ms in range(1000))  # a timestamp's ".%03d", formatted once


class _Clock:
    """RFC 3339 timestamps; the part up to the second is formatted once per second."""

    __slots__ = ("_second", "_prefix")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self._prefix}{_MILLISECONDS[int((now - second) * 1000)]}Z"


_rfc3339 = _Clock()


def format_json(record: ExchangeRecord, now: float | None = None) -> str:
    """One JSON object on one line (``now``: the Unix time to stamp it with, default the current time).

    >>> format_json(ExchangeRecord(method="GET", target="/", status=200), now=0.0)[:40]
    '{"time":"1970-01-01T00:00:00.000Z","clie'
    """
    stamp = _rfc3339(time.time() if now is None else now)
    outcome = record.outcome
    websocket = record.websocket
    # record.logged_status, inline (a property call costs more than the test).
    status = CLIENT_CLOSED_STATUS if outcome and not websocket and outcome.startswith("client") else record.status
    return (
        f'{{"time":"{stamp}","client":{_json_str(record.client)},"method":{_json_str(record.method)}'
        f',"target":{_json_str(record.target)},"http_version":{_json_str(record.http_version)}'
        f',"status":{status},"bytes":{record.bytes_sent},"duration":{record.duration_s:.6f}'
        f',"route":{_json_str(record.route)},"upstream":{_json_str(record.upstream)}'
        f',"upstream_address":{_json_str(record.upstream_address)},"request_id":{_json_str(record.request_id)}'
        f',"trace_id":{_json_str(record.trace_id)},"retries":{record.retries},"outcome":{_json_str(outcome)}'
        f',"websocket":{"true" if websocket else "false"}{_grpc_json(record) if record.grpc else ""}}}'
    )


def _grpc_json(record: ExchangeRecord) -> str:
    code = record.grpc_status
    return f',"grpc_status":{"null" if code is None else code}'


def access_formatter(access_log_format: AccessLogFormat) -> Formatter:
    """The formatter for ``server.access_log_format``: pick it once, call it per exchange.

    >>> line = access_formatter("json")(record)
    """
    return format_json if access_log_format == "json" else format_text
