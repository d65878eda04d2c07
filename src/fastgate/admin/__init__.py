"""The admin API (its own listener: health, readiness, config, upstreams, stats, reload, metrics, dashboard)."""

from .app import AdminApp
from .listener import serve_admin
from .redaction import redacted_config

__all__ = ["AdminApp", "redacted_config", "serve_admin"]
