"""Loggers, the TRACE level and the default logging configuration.

Loggers: ``fastgate.access`` (one line per request), ``fastgate.error`` (why a request failed),
``fastgate.upstream`` (connect/reuse/close events at TRACE). ``--log-config`` replaces the whole
configuration with a dictConfig JSON/YAML file or an ini file, exactly as Uvicorn's ``log_config`` does.
"""

from __future__ import annotations

import logging
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

LOGGING_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
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
        "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
    },
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        "fastgate": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "fastgate.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}


def apply_log_level(level: str) -> None:
    """Set fastgate's loggers to the CLI's ``--log-level`` (Uvicorn sets its own)."""
    for name in ("fastgate", "fastgate.access", "fastgate.error", "fastgate.upstream"):
        logging.getLogger(name).setLevel(LOG_LEVELS[level])
