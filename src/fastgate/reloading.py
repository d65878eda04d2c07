"""Hot reload, the pure part: what changed between two configs, and whether it can change without a restart.

>>> check_reloadable(running, loaded)        # ConfigError naming the first key that needs a restart
>>> diff_upstreams(running, loaded).kept     # upstreams whose transports (and pools) carry over

The gateway (app.py) does the I/O: it opens the transports of new or changed upstreams, starts the new plugin
chains, swaps its request-time snapshot, and closes what the old snapshot alone used once its requests end.
:class:`ConfigSource` reads the file a gateway was started from (``fastgate run FILE``) with the command line's
server overrides put over the file's keys before validation, so a reload sees what a restart would.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import GatewayConfig, build_config, read_config_data
from .exceptions import ConfigError

# The file a worker reloads, and the command line's server overrides (JSON), passed from the manager.
CONFIG_FILE_ENV = "FASTGATE_CONFIG_FILE"
CONFIG_OVERRIDES_ENV = "FASTGATE_CONFIG_OVERRIDES"
# The file's digest as the manager read it: a worker starting while the file is unchanged takes the manager's
# validated config and never parses the file (nor imports yaml: ~0.8 MB per worker, docs/performance.md).
CONFIG_DIGEST_ENV = "FASTGATE_CONFIG_DIGEST"

# Keys Uvicorn or the listening socket read once at start: a reload that changes one is refused, never ignored.
RESTART_ONLY_SERVER_KEYS = (
    "host",
    "port",
    "workers",
    "log_config",
    "access_log_format",
    "graceful_timeout",
    "max_header_bytes",
    "max_header_field_bytes",
    "max_uri_bytes",
    "header_timeout",
    "keepalive_timeout",
    "send_timeout",
    "min_request_body_rate",
    "max_requests_per_connection",
    "max_connections",
    "underscores_in_headers",
    "ws_client_max_size",
    "ws_client_ping_interval",
    "ws_client_ping_timeout",
    "ws_per_message_deflate",
)
# Set up once per process (exporters, collectors).
RESTART_ONLY_SECTIONS = ("metrics", "tracing")


def restart_only_changes(running: GatewayConfig, loaded: GatewayConfig) -> list[str]:
    """One ``"<key>: <problem>"`` per key that changed but only takes effect after a restart."""
    problems = []
    for key in RESTART_ONLY_SERVER_KEYS:
        old, new = getattr(running.server, key), getattr(loaded.server, key)
        if old != new:
            problems.append(f"server.{key}: cannot change without a restart ({_show(old)} -> {_show(new)})")
    old_listen = running.admin.listen if running.admin is not None else None
    new_listen = loaded.admin.listen if loaded.admin is not None else None
    if old_listen != new_listen:
        problems.append(f"admin.listen: cannot change without a restart ({_show(old_listen)} -> {_show(new_listen)})")
    if (running.server.tls is None) != (loaded.server.tls is None):
        problems.append("server.tls: turning TLS on or off cannot happen without a restart")
    for section in RESTART_ONLY_SECTIONS:
        if getattr(running, section) != getattr(loaded, section):
            problems.append(f"{section}: cannot change without a restart (set up once per process)")
    return problems


def check_reloadable(running: GatewayConfig, loaded: GatewayConfig) -> None:
    """Raise :class:`ConfigError` when ``loaded`` changes a key that needs a restart."""
    problems = restart_only_changes(running, loaded)
    if problems:
        raise ConfigError("; ".join(problems))


def _show(value: object) -> str:
    return "absent" if value is None else json.dumps(value.model_dump() if hasattr(value, "model_dump") else value)


@dataclass(frozen=True, slots=True)
class UpstreamDiff:
    """Upstream names by fate: ``kept`` (equal config: transport and pools reused), ``changed`` (new transport,
    the old one closes after its requests), ``added`` and ``removed``."""

    kept: tuple[str, ...]
    changed: tuple[str, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]

    def __str__(self) -> str:
        parts = [f"{label} {', '.join(names)}" for label, names in self._groups() if names]
        return "; ".join(parts) or "no upstream changed"

    def _groups(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return (("added", self.added), ("changed", self.changed), ("removed", self.removed))


def diff_upstreams(running: GatewayConfig, loaded: GatewayConfig) -> UpstreamDiff:
    old, new = running.upstreams, loaded.upstreams
    return UpstreamDiff(
        kept=tuple(name for name in new if name in old and old[name] == new[name]),
        changed=tuple(name for name in new if name in old and old[name] != new[name]),
        added=tuple(name for name in new if name not in old),
        removed=tuple(name for name in old if name not in new),
    )


def apply_overrides(config: GatewayConfig, overrides: dict[str, Any]) -> GatewayConfig:
    """``config`` with the command line's ``server`` keys (``--port``, ``--workers``...) over its own.

    A config is kept resolved (every route holds what it inherits), so this validates its dump again with the
    new server keys; a key a route inherits from the server keeps the route's resolved value. Files are loaded
    with :func:`with_overrides` instead, before validation, so that every key is decided once, from the file.
    """
    if not overrides:
        return config
    server = {**config.server.model_dump(), **overrides}
    return build_config({**config.model_dump(), "server": server})


def with_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A config file's data with the command line's ``server`` keys over the file's (nothing validated yet)."""
    if not overrides:
        return data
    server = data.get("server") or {}
    if not isinstance(server, dict):
        return data  # validation names the bad `server`
    return {**data, "server": {**server, **overrides}}


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where a running gateway's config comes from: a file plus the command line's server overrides."""

    path: Path
    overrides: dict[str, Any]

    def load(self) -> GatewayConfig:
        """Read and validate the file now (:class:`ConfigError` naming the key when it is wrong)."""
        return build_config(with_overrides(read_config_data(self.path), self.overrides))

    def digest(self) -> str | None:
        """The file's content digest now; ``None`` when it cannot be read."""
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def export(self, environ: Any, digest: str | None = None) -> None:
        """Pass this source on to worker processes through ``environ``.

        ``digest``: :meth:`digest` taken *before* the config the workers receive was loaded, so that a file
        changed in between never matches it (the worker then reads the file anew).
        """
        environ[CONFIG_FILE_ENV] = str(self.path.resolve())
        environ[CONFIG_OVERRIDES_ENV] = json.dumps(self.overrides)
        if digest is not None:
            environ[CONFIG_DIGEST_ENV] = digest
        else:
            environ.pop(CONFIG_DIGEST_ENV, None)

    def unchanged_since_export(self, environ: Any = None) -> bool:
        """Whether the file still holds what the exported config was loaded from."""
        exported = (os.environ if environ is None else environ).get(CONFIG_DIGEST_ENV)
        return exported is not None and exported == self.digest()

    @classmethod
    def from_environ(cls, environ: Any = None) -> ConfigSource | None:
        env = os.environ if environ is None else environ
        path = env.get(CONFIG_FILE_ENV)
        if not path:
            return None
        return cls(Path(path), json.loads(env.get(CONFIG_OVERRIDES_ENV) or "{}"))
