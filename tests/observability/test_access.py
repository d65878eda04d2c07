"""The access line from an ExchangeRecord: today's text line unchanged, or one JSON object (operations issue)."""

from __future__ import annotations

import json

import pytest

from fastgate.config import ServerConfig
from fastgate.observability.access import access_formatter, format_json, format_text
from fastgate.observability.record import ExchangeRecord

# The formats forward_http and forward_websocket log with today, copied from proxy/http.py and proxy/websocket.py.
HTTP_FORMAT = '%s - "%s %s HTTP/%s" %d %d %.1fms upstream=%s request_id=%s%s'
WEBSOCKET_FORMAT = '%s - "WebSocket %s" %d %.1fms upstream=%s request_id=%s%s'

HTTP_CASES = [
    ExchangeRecord("0", "api", "10.0.0.1:80", "GET", "/a?b=1", "1.1", "127.0.0.1:5000", 200, 1234, 0.01234, "ab12"),
    ExchangeRecord("1", "api", "", "POST", "/upload", "1.0", "-", 502, 0, 2.5, "cd34", outcome="upstream_error: x"),
    ExchangeRecord(
        "2", "b", "", "GET", "/slow", "1.1", "[::1]:9", 200, 10, 0.00004, "ef", outcome="client disconnected"
    ),
    ExchangeRecord("3", "b", "", "PUT", "/%", "1.1", "1.2.3.4:1", 0, 0, 31.0, "-", outcome="client disconnected"),
]


@pytest.mark.parametrize("record", HTTP_CASES)
def test_text_line_is_todays_http_line(record: ExchangeRecord) -> None:
    status = record.status if not record.outcome.startswith("client") else 499
    today = HTTP_FORMAT % (
        record.client,
        record.method,
        record.target,
        record.http_version,
        status,
        record.bytes_sent,
        record.duration_s * 1000,
        record.upstream,
        record.request_id,
        f" ({record.outcome})" if record.outcome else "",
    )
    assert format_text(record) == today


@pytest.mark.parametrize(
    ("status", "outcome"), [(101, "upstream closed with 1000"), (101, "client closed with 1001"), (502, "")]
)
def test_text_line_is_todays_websocket_line(status: int, outcome: str) -> None:
    record = ExchangeRecord(
        "0", "chat", "", "GET", "/ws?room=1", client="1.2.3.4:5", status=status, duration_s=12.25,
        request_id="ab", outcome=outcome, websocket=True,
    )  # fmt: skip
    today = WEBSOCKET_FORMAT % (
        "1.2.3.4:5",
        "/ws?room=1",
        status,
        12250.0,
        "chat",
        "ab",
        f" ({outcome})" if outcome else "",
    )
    assert format_text(record) == today


def test_text_line_carries_the_trace_id_after_the_request_id() -> None:
    record = ExchangeRecord(upstream="api", target="/", status=200, request_id="ab", trace_id="4bf9" * 8)
    assert format_text(record).endswith(f"request_id=ab trace_id={'4bf9' * 8}")


def test_json_line_has_the_stable_fields() -> None:
    record = ExchangeRecord(
        "users", "api", "10.0.0.7:9000", "POST", '/a"b\\c?\x01', "1.1", "1.2.3.4:5", 503, 17, 0.25,
        "req-1", "4bf92f3577b34da6a3ce929d0e0e4736", 2, "upstream_unavailable: no healthy target",
    )  # fmt: skip
    line = format_json(record, now=1_700_000_000.5)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.500Z",
        "client": "1.2.3.4:5",
        "method": "POST",
        "target": '/a"b\\c?\x01',
        "http_version": "1.1",
        "status": 503,
        "bytes": 17,
        "duration": 0.25,
        "route": "users",
        "upstream": "api",
        "upstream_address": "10.0.0.7:9000",
        "request_id": "req-1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "retries": 2,
        "outcome": "upstream_unavailable: no healthy target",
        "websocket": False,
    }


def test_json_line_counts_a_gone_client_as_499_and_escapes_non_ascii() -> None:
    record = ExchangeRecord(target="/caf\u00e9", status=200, outcome="client disconnected", websocket=False)
    fields = json.loads(format_json(record))
    assert (fields["status"], fields["target"]) == (499, "/caf\u00e9")
    assert format_json(record).isascii()


def test_access_log_format_picks_the_formatter() -> None:
    assert ServerConfig().access_log_format == "text"
    assert access_formatter(ServerConfig().access_log_format) is format_text
    assert access_formatter(ServerConfig(access_log_format="json").access_log_format) is format_json


def test_json_access_lines_are_logged_without_a_prefix() -> None:
    from fastgate.observability.logging import LOGGING_CONFIG, logging_config

    assert logging_config("text") is LOGGING_CONFIG
    assert logging_config("json")["formatters"]["access"] == {"format": "%(message)s"}
    assert LOGGING_CONFIG["formatters"]["access"] == {"format": "%(asctime)s %(message)s"}  # left as it was


def test_access_line_handler_writes_what_the_formatter_writes() -> None:
    """The default handler dates lines once a second; every line is still the formatter's own, character for
    character, across second boundaries, and any other formatter (JSON's ``%(message)s``) is used as it is."""
    import io
    import logging

    from fastgate.observability.logging import AccessLineHandler

    for fmt in ("%(asctime)s %(message)s", "%(message)s", "%(levelname)s %(asctime)s %(message)s"):
        formatter = logging.Formatter(fmt)
        handler = AccessLineHandler(io.StringIO())
        handler.setFormatter(formatter)
        for created in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.5, 1_700_000_001.0005, 1_700_003_600.25):
            record = logging.LogRecord(
                "fastgate.access", logging.INFO, __file__, 0, 'a - "GET / HTTP/1.1" 200', (), None
            )
            record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
            assert handler.format(record) == formatter.format(record)
    # A record with an exception goes through the formatter, traceback included.
    handler = AccessLineHandler(io.StringIO())
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("fastgate.access", logging.ERROR, __file__, 0, "line", (), sys.exc_info())
    assert "ValueError: boom" in handler.format(record)


def test_access_line_handler_writes_one_turns_lines_at_once_and_outside_a_loop_each_line() -> None:
    import asyncio
    import io
    import logging

    from fastgate.observability.logging import AccessLineHandler

    class Stream(io.StringIO):
        writes = 0

        def write(self, text: str) -> int:
            self.writes += 1
            return super().write(text)

    stream = Stream()
    handler = AccessLineHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))

    def line(text: str) -> logging.LogRecord:
        return logging.LogRecord("fastgate.access", logging.INFO, __file__, 0, text, (), None)

    handler.handle(line("outside"))  # no running loop: written at once
    assert (stream.getvalue(), stream.writes) == ("outside\n", 1)

    async def turns() -> None:
        for i in range(3):
            handler.handle(line(f"a{i}"))
        assert stream.getvalue() == "outside\n"  # still this turn: queued
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert stream.getvalue() == "outside\na0\na1\na2\n"
        assert stream.writes == 2  # the turn's three lines in one write
        handler.handle(line("last"))  # the loop ends before its turn is over: flush() (logging.shutdown) writes it

    asyncio.run(turns())
    handler.flush()
    assert stream.getvalue().endswith("a2\nlast\n")


def test_json_line_keeps_a_websockets_status_when_the_client_closed() -> None:
    record = ExchangeRecord(target="/ws", status=101, outcome="client closed with 1001", websocket=True)
    fields = json.loads(format_json(record, now=1_700_000_000.0))
    assert (fields["status"], fields["websocket"], fields["outcome"]) == (101, True, "client closed with 1001")


def test_json_time_is_rfc3339_utc_milliseconds_truncated_like_before() -> None:
    import time

    for now in (0.0, 0.0009, 1_700_000_000.5, 1_700_000_000.9999, 1_700_000_001.001, 1_700_003_599.123456):
        second = int(now)
        before = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{int((now - second) * 1000):03d}Z"
        assert json.loads(format_json(ExchangeRecord(), now=now))["time"] == before
