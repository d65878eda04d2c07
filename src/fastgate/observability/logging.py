"""Loggers, the TRACE level and the default logging configuration.

Loggers: ``fastgate.access`` (one line per request), ``fastgate.error`` (why a request failed),
``fastgate.upstream`` (connect/reuse/close events at TRACE). ``--log-config`` replaces the whole
configuration with a dictConfig JSON/YAML file or an ini file, exactly as Uvicorn's ``log_config`` does.

The default configuration hides the INFO lines that Uvicorn writes on ``uvicorn.error`` for every WebSocket
session (``"WebSocket /path" [accepted]``, its denial status, and the websockets library's ``connection open``,
``connection closed`` and ``connection rejected``, logged there too): fastgate's access line says all of it once,
with the upstream, duration and request id (:class:`WebSocketNoiseFilter`). They show again at ``--log-level
debug``, and a ``--log-config`` of your own sees them as Uvicorn writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from typing import Any

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

access_logger = logging.getLogger("fastgate.access")
error_logger = logging.getLogger("fastgate.error")
upstream_logger = logging.getLogger("fastgate.upstream")

LOG_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}

# Uvicorn's and websockets' per-session WebSocket lines on uvicorn.error (their format strings, not the result).
WEBSOCKET_SESSION_MESSAGES = frozenset(
    {
        '%s - "WebSocket %s" [accepted]',
        '%s - "WebSocket %s" %d',
        '%s - "WebSocket %s" 403',
        "connection open",
        "connection closed",
        "connection rejected (%d %s)",
        "HTTP response sent (%d %s)",
    }
)


class WebSocketNoiseFilter(logging.Filter):
    """Drops per-session WebSocket INFO lines that repeat fastgate's access line, unless the logger is at DEBUG.

    >>> logging.getLogger("uvicorn.error").addFilter(WebSocketNoiseFilter())
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not isinstance(record.msg, str):
            return True
        if record.msg not in WEBSOCKET_SESSION_MESSAGES:
            return True
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


class AccessLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The default access-log handler: a ``StreamHandler`` that dates lines once a second, not once a line, and
    writes once per turn of the event loop, not once a line.

    With a formatter that writes ``%(asctime)s %(message)s`` in the default date format (the default configuration's
    text access line), each line is the date of its second, formatted once, the milliseconds and the message:
    character for character what the formatter writes, for about 2 µs less a line. Whether the formatter is such a
    one is checked when it is set, by comparing its output on a probe record; any other formatter is used as is.

    The same check recognises a formatter that writes the message alone (the JSON access line's ``%(message)s``).
    With either, :meth:`write_message` queues a message as the formatter would write it, without a ``LogRecord``
    (the access line's fast path, :func:`write_access_line`).
    """

    _dated: logging.Formatter | None = None  # writes "%(asctime)s %(message)s"
    _dated_comma: logging.Formatter | None = None  # the same, with logging's "%s,%03d" milliseconds
    _bare: logging.Formatter | None = None  # writes "%(message)s"
    _second = -1
    _date = ""
    _pending: list[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the line; the lines of one turn of the event loop leave in one ``write`` when the turn ends.

        A turn of a busy proxy's loop finishes many exchanges, and with an unbuffered stdout (``PYTHONUNBUFFERED``,
        as containers set it) each line was a system call of its own. Outside a running loop a line is written at
        once; ``flush`` (``logging.shutdown`` at exit) writes what a last turn left.
        """
        try:
            line = self.format(record) + self.terminator
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._queue(line)

    def write_message(self, message: str) -> bool:
        """Queue ``message`` as the formatter would write an INFO record of it made now, without making one.

        False (nothing written) when the formatter is not one :meth:`setFormatter` recognised: the caller logs the
        message the ordinary way. Takes the handler's lock, as ``Handler.handle`` does around ``emit``.
        """
        formatter = self.formatter
        if formatter is None:
            return False
        if formatter is self._dated_comma:
            # LogRecord's created and msecs (Python 3.11, 3.12: from time.time()), formatTime's "%s,%03d".
            now = time.time()
            second = int(now)
            if second != self._second:
                self._date = time.strftime(formatter.default_time_format, formatter.converter(second))
                self._second = second
            line = f"{self._date},{_MILLISECONDS[int((now - second) * 1000)]} {message}{self.terminator}"
        elif formatter is self._bare:
            line = message + self.terminator
        else:
            return False
        with self.lock or _NO_LOCK:
            pending = self._pending
            if pending is not None:
                pending.append(line)  # _queue's common case, inline: not the turn's first line
            else:
                self._queue(line)
        return True

    def _queue(self, line: str) -> None:
        pending = self._pending
        if pending is not None:
            pending.append(line)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._pending = [line]
            self.flush()
            return
        self._pending = [line]
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued lines in one ``write``, then flush the stream (``StreamHandler.flush``), under one lock."""
        with self.lock or _NO_LOCK:  # Handler.acquire/release, less two Python calls
            pending, self._pending = self._pending, None
            try:
                if pending:
                    self.stream.write("".join(pending))
            except Exception:
                self.handleError(logging.makeLogRecord({"name": "fastgate.access", "msg": "".join(pending or ())}))
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        super().setFormatter(fmt)
        self._dated = self._dated_comma = self._bare = None
        self._second = -1
        if type(fmt) is logging.Formatter and fmt.datefmt is None:
            probe = logging.LogRecord("probe", logging.INFO, __file__, 0, "probe message", (), None)
            written = fmt.format(probe)
            if written == f"{self._stamp(fmt, probe.created, probe.msecs)} probe message":
                self._dated = fmt
                if fmt.default_msec_format == "%s,%03d":
                    self._dated_comma = fmt
            elif written == "probe message":
                self._bare = fmt
            self._second = -1

    def _stamp(self, fmt: logging.Formatter, created: float, msecs: float) -> str:
        """``fmt.formatTime`` of a record ``created`` then, with the date part formatted once a second."""
        second = int(created)
        if second != self._second:
            self._date = time.strftime(fmt.default_time_format, fmt.converter(second))
            self._second = second
        return fmt.default_msec_format % (self._date, msecs) if fmt.default_msec_format else self._date

    def format(self, record: logging.LogRecord) -> str:
        dated = self._dated
        if dated is None or dated is not self.formatter or record.exc_info or record.stack_info:
            return super().format(record)
        return f"{self._stamp(dated, record.created, record.msecs)} {record.getMessage()}"


def write_access_line(message: str) -> bool:
    """The access line's fast path: queue ``message`` on ``fastgate.access``'s handler directly, or return False.

    Call it once ``access_logger.isEnabledFor(logging.INFO)`` holds (that checks the logger's level, ``disabled``
    and ``logging.disable``). It writes only where the result is the one logging would give: the logger has one
    handler, an :class:`AccessLineHandler` (this class, not a subclass) at INFO or below with a formatter it
    recognises; no filters on either; the logger does not propagate; the logger's class and the record factory
    are logging's own. That is the default configuration (:data:`LOGGING_CONFIG`, text or JSON). A
    ``--log-config``, an added handler or filter, another formatter or record factory: False, and the caller logs
    the message the ordinary way (a ``LogRecord`` through ``Logger.handle``). Checked on every call, so a reload
    or a library changing the configuration takes effect from the next line.
    """
    logger = access_logger
    handlers = logger.handlers
    if len(handlers) != 1 or logger.filters or logger.propagate or _get_factory() is not _LogRecord or not _PLAIN:
        return False
    handler = handlers[0]
    if type(handler) is not AccessLineHandler or handler.filters or handler.level > logging.INFO:
        return False
    return handler.write_message(message)


_NO_LOCK = contextlib.nullcontext()  # for a handler whose lock is None (Handler.acquire checks for it too)
_MILLISECONDS = tuple(f"{ms:03d}" for ms in range(1000))  # "%03d" of a line's milliseconds, formatted once
_get_factory = logging.getLogRecordFactory
_LogRecord = logging.LogRecord
_PLAIN = type(access_logger) is logging.Logger  # not a logging.setLoggerClass class, with a handle() of its own


LOGGING_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"websocket_noise": {"()": "fastgate.observability.logging.WebSocketNoiseFilter"}},
    "formatters": {
        "default": {
            "()": "uvicorn.logging.DefaultFormatter",
            "fmt": "%(levelprefix)s %(name)s: %(message)s",
            "use_colors": None,
        },
        "access": {"format": "%(asctime)s %(message)s"},
    },
    "handlers": {
        "default": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        "access": {
            "formatter": "access",
            "class": "fastgate.observability.logging.AccessLineHandler",
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO", "filters": ["websocket_noise"]},
        "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        "fastgate": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "fastgate.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}


def logging_config(access_log_format: str = "text") -> dict[str, Any]:
    """The default configuration for ``server.access_log_format``: a JSON access line is the message alone.

    >>> uvicorn.run(..., log_config=server.log_config or logging_config(server.access_log_format))
    """
    if access_log_format != "json":
        return LOGGING_CONFIG
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["access"] = {"format": "%(message)s"}  # the line carries its own "time"
    return config


def apply_log_level(level: str) -> None:
    """Set fastgate's loggers to the CLI's ``--log-level`` (Uvicorn sets its own)."""
    for name in ("fastgate", "fastgate.access", "fastgate.error", "fastgate.upstream"):
        logging.getLogger(name).setLevel(LOG_LEVELS[level])
