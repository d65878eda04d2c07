"""The access line's fast path (issue 12): under the default logging configuration the line goes straight to the
handler's per-turn buffer, character for character what logging writes; any other configuration takes logging's
own path, as before."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import logging.config
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fastgate.observability.access import format_json, format_text
from fastgate.observability.exchange import Observability
from fastgate.observability.logging import AccessLineHandler, access_logger, logging_config, write_access_line
from fastgate.observability.record import ExchangeRecord

RECORDS = [
    ExchangeRecord("0", "api", "10.0.0.1:80", "GET", "/a?b=1", "1.1", "127.0.0.1:5000", 200, 1234, 0.01234, "ab12"),
    ExchangeRecord("1", "api", "", "POST", "/up", "1.0", "-", 502, 0, 2.5, "cd34", "4bf9" * 8, 1, "upstream_error: x"),
    ExchangeRecord("2", "b", "", "GET", "/slow", "1.1", "[::1]:9", 200, 10, 0.00004, "ef", outcome="client gone"),
    ExchangeRecord("3", "chat", "", "GET", "/ws", client="1.2.3.4:5", status=101, duration_s=1.5, websocket=True),
]


@contextlib.contextmanager
def default_logging(access_log_format: str = "text") -> Iterator[tuple[AccessLineHandler, io.StringIO]]:
    """fastgate's default logging configuration, as ``fastgate run`` applies it, its access stream captured; the
    loggers' previous handlers, filters, levels and propagation are put back afterwards."""
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "fastgate", "fastgate.access")
    saved = {
        name: (logger.handlers[:], logger.filters[:], logger.level, logger.propagate, logger.disabled)
        for name in names
        for logger in [logging.getLogger(name)]
    }
    logging.config.dictConfig(logging_config(access_log_format))
    (handler,) = access_logger.handlers
    assert type(handler) is AccessLineHandler
    stream = io.StringIO()
    handler.setStream(stream)
    try:
        yield handler, stream
    finally:
        handler.flush()
        for name, (handlers, filters, level, propagate, disabled) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.filters[:] = handlers, filters
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled


def logged_line(message: str, created: float, fmt: str) -> str:
    """What logging's own Formatter writes for an INFO record of ``message`` created at ``created``."""
    record = logging.LogRecord("fastgate.access", logging.INFO, __file__, 0, message, (), None)
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    return logging.Formatter(fmt).format(record) + "\n"


def candidates(message: str, start: float, end: float, fmt: str) -> set[str]:
    """The lines logging could have written for ``message`` at any millisecond from ``start`` to ``end``."""
    stamps = {start, end} | {(ms + 0.5) / 1000 for ms in range(int(start * 1000), int(end * 1000) + 1)}
    return {logged_line(message, t, fmt) for t in stamps}


@pytest.mark.parametrize("record", RECORDS)
def test_fast_path_writes_the_line_logging_writes_character_for_character(record: ExchangeRecord) -> None:
    observability = Observability(format_access=format_text)
    with default_logging() as (handler, stream):
        assert write_access_line("probe") and stream.getvalue().endswith(" probe\n")  # the fast path is taken
        stream.seek(0)
        stream.truncate()
        start = time.time()
        observability.finish(record)
        end = time.time()
        assert stream.getvalue() in candidates(format_text(record), start, end, "%(asctime)s %(message)s")


def test_fast_path_dates_lines_across_second_boundaries_like_logging() -> None:
    """The date part is formatted once a second; lines either side of a boundary each carry their own second."""
    with default_logging() as (handler, stream):
        start = end = time.time()
        while int(end) < int(start) + 2 and end - start < 3:  # bounded: two boundaries, at most three seconds
            assert write_access_line("tick")
            end = time.time()
        assert write_access_line("tick")  # the first line of the third second
        end = time.time()
        lines = set(stream.getvalue().splitlines(keepends=True))
        assert lines <= candidates("tick", start, end, "%(asctime)s %(message)s")
        assert len({line[:19] for line in lines}) == 3  # three seconds' dates


def test_fast_path_writes_the_json_line_as_the_message_alone() -> None:
    observability = Observability(format_access=format_json)
    with default_logging("json") as (handler, stream):
        record = RECORDS[1]
        observability.finish(record)
        line = stream.getvalue()
        assert line.endswith("\n") and line.count("\n") == 1
        assert line[: -len('"websocket":false}\n')].startswith('{"time":"')
        assert line.split(",", 1)[1] == format_json(record, now=0.0).split(",", 1)[1] + "\n"  # all but the time


def test_fast_path_keeps_order_and_writes_a_turns_lines_at_the_turns_end() -> None:
    with default_logging() as (handler, stream):

        async def turn() -> None:
            for i in range(5):
                assert write_access_line(f"line {i}")
            assert stream.getvalue() == ""  # still this turn: queued
            access_logger.info("slow path line")  # a record through logging joins the same queue, in order
            assert write_access_line("line 5")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            written = [line.split(" ", 2)[2] for line in stream.getvalue().splitlines()]
            assert written == [*(f"line {i}" for i in range(5)), "slow path line", "line 5"]
            assert write_access_line("last")

        asyncio.run(turn())
        handler.flush()  # what logging.shutdown does at exit
        assert stream.getvalue().endswith(" last\n")


def test_fast_path_outside_a_loop_writes_each_line_at_once() -> None:
    with default_logging() as (handler, stream):
        assert write_access_line("one")
        assert stream.getvalue().endswith(" one\n")


class Seen(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return True


class Subclass(AccessLineHandler):
    pass


def _added_handler(handler: AccessLineHandler) -> Callable[[], object]:
    extra = logging.StreamHandler(io.StringIO())
    access_logger.addHandler(extra)
    return lambda: extra.stream.getvalue()


def _logger_filter(handler: AccessLineHandler) -> Callable[[], object]:
    seen = Seen()
    access_logger.addFilter(seen)
    return lambda: seen.messages


def _handler_filter(handler: AccessLineHandler) -> Callable[[], object]:
    seen = Seen()
    handler.addFilter(seen)
    return lambda: seen.messages


def _custom_formatter(handler: AccessLineHandler) -> Callable[[], object]:
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    return lambda: handler.stream.getvalue()


def _formatter_subclass(handler: AccessLineHandler) -> Callable[[], object]:
    class Upper(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return super().format(record).upper()

    handler.setFormatter(Upper("%(message)s"))
    return lambda: handler.stream.getvalue()


def _formatter_assigned(handler: AccessLineHandler) -> Callable[[], object]:
    handler.formatter = logging.Formatter("[%(message)s]")  # not through setFormatter
    return lambda: handler.stream.getvalue()


def _propagates(handler: AccessLineHandler) -> Callable[[], object]:
    access_logger.propagate = True
    parent = logging.getLogger("fastgate")
    extra = logging.StreamHandler(io.StringIO())
    parent.addHandler(extra)
    return lambda: extra.stream.getvalue()


def _handler_subclass(handler: AccessLineHandler) -> Callable[[], object]:
    access_logger.removeHandler(handler)
    other = Subclass(handler.stream)
    other.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access_logger.addHandler(other)
    return lambda: other.stream.getvalue()


def _record_factory(handler: AccessLineHandler) -> Callable[[], object]:
    factory = logging.getLogRecordFactory()
    made: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        made.append(record.getMessage())
        return record

    logging.setLogRecordFactory(counting)
    return lambda: made


SLOW_PATHS = {
    "added_handler": _added_handler,
    "logger_filter": _logger_filter,
    "handler_filter": _handler_filter,
    "custom_formatter": _custom_formatter,
    "formatter_subclass": _formatter_subclass,
    "formatter_assigned": _formatter_assigned,
    "propagate": _propagates,
    "handler_subclass": _handler_subclass,
    "record_factory": _record_factory,
}


@pytest.mark.parametrize("change", SLOW_PATHS.values(), ids=SLOW_PATHS.keys())
def test_any_other_logging_configuration_takes_loggings_own_path(change: Callable[..., Any]) -> None:
    """An added handler, a filter, another formatter, propagation, a handler subclass or a record factory: the
    fast path steps aside and the line reaches them as a LogRecord, as before."""
    factory = logging.getLogRecordFactory()
    parent_handlers = logging.getLogger("fastgate").handlers[:]
    try:
        with default_logging() as (handler, stream):
            observed = change(handler)
            assert not write_access_line("not written")
            assert "not written" not in stream.getvalue()
            Observability(format_access=format_text).finish(RECORDS[0])
            handler.flush()
            access_logger.handlers[0].flush()
            assert format_text(RECORDS[0]) in str(observed()) or format_text(RECORDS[0]).upper() in str(observed())
    finally:
        logging.setLogRecordFactory(factory)
        logging.getLogger("fastgate").handlers[:] = parent_handlers


def test_custom_formatter_gets_loggings_line_and_the_fast_path_returns_with_the_default_one() -> None:
    with default_logging() as (handler, stream):
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        Observability(format_access=format_text).finish(RECORDS[0])
        assert stream.getvalue() == f"INFO {format_text(RECORDS[0])}\n"
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        assert write_access_line("fast again")


def test_a_quiet_or_disabled_access_logger_writes_nothing() -> None:
    """Reload toggles ``access_logger.disabled`` and sets levels; ``logging.disable`` silences everything."""
    observability = Observability(format_access=format_text)
    with default_logging() as (handler, stream):
        access_logger.disabled = True
        observability.finish(RECORDS[0])
        access_logger.disabled = False
        access_logger.setLevel(logging.WARNING)
        observability.finish(RECORDS[0])
        access_logger.setLevel(logging.INFO)
        handler.setLevel(logging.WARNING)
        observability.finish(RECORDS[0])
        handler.setLevel(logging.NOTSET)
        logging.disable(logging.INFO)
        try:
            observability.finish(RECORDS[0])
        finally:
            logging.disable(logging.NOTSET)
        assert stream.getvalue() == ""
        observability.finish(RECORDS[0])
        assert stream.getvalue().endswith(f" {format_text(RECORDS[0])}\n")


def test_the_default_configuration_takes_the_fast_path_for_text_and_json() -> None:
    for form in ("text", "json"):
        with default_logging(form) as (handler, stream):
            assert write_access_line("fast")
            assert re.fullmatch(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} )?fast\n", stream.getvalue())
            assert stream.getvalue().startswith("fast") == (form == "json")
