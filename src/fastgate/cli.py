"""The ``fastgate`` command. Exit codes: 0 fine, 2 bad usage or config, 3 the server could not start."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import GatewayConfig, build_config, load_config
from .exceptions import ConfigError
from .handoff import validate_apart
from .observability.logging import LOG_LEVELS
from .plugins.registry import route_plugins
from .reloading import ConfigSource
from .routing import unreachable_routes


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"server.port: --from needs HOST:PORT with a port from 0 to 65535, got {value!r}")
    return host, int(port)


def _import_from_cwd() -> None:
    """Let ``plugins: [{use: "myplugins:Auth"}]`` find modules in the current directory, as uvicorn's --app-dir does."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _fail(exc: ConfigError) -> None:
    click.echo(f"config error: {exc.detail}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FASTGATE"})
@click.version_option(__version__, prog_name="fastgate")
def main() -> None:
    """fastgate: an async HTTP reverse proxy and API gateway on Uvicorn."""


def _server_options(fn: Any) -> Any:
    options = [
        click.option("--workers", type=int, default=None, help="Worker processes (Uvicorn's process manager)."),
        click.option(
            "--log-level",
            type=click.Choice(list(LOG_LEVELS)),
            default=None,
            help="Log level; trace shows upstream connection events.",
        ),
        click.option(
            "--log-config",
            type=click.Path(dir_okay=False),
            default=None,
            help="Logging config: dictConfig JSON/YAML or ini file.",
        ),
        click.option("--access-log/--no-access-log", default=None, help="One access line per request (default on)."),
        click.option(
            "--graceful-timeout", type=float, default=None, help="Seconds in-flight requests get on shutdown."
        ),
        # The client hop of WebSocket sessions; proxy's --ws-ping-interval etc. are the upstream hop.
        click.option(
            "--ws-client-max-size",
            type=int,
            default=None,
            help="Largest WebSocket message a client may send, bytes; larger: 1009 (default 16 MiB).",
        ),
        click.option(
            "--ws-client-ping-interval",
            type=float,
            default=None,
            help="Seconds between WebSocket pings to clients; 0: none (default 20).",
        ),
        click.option(
            "--ws-client-ping-timeout",
            type=float,
            default=None,
            help="Wait for a client's pong, then close with 1011; 0: forever (default 20).",
        ),
        click.option(
            "--ws-per-message-deflate/--no-ws-per-message-deflate",
            default=None,
            help="Compress WebSocket messages to clients that offer it (default off).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


CLIENT_PING_OPTIONS = ("ws_client_ping_interval", "ws_client_ping_timeout")


def _server_overrides(**values: Any) -> dict[str, Any]:
    overrides = {key: value for key, value in values.items() if value is not None}
    for key in CLIENT_PING_OPTIONS:
        if overrides.get(key) == 0:
            overrides[key] = None  # 0 on the command line: no client pings / wait forever
    return overrides


@main.command()
@click.option("--from", "listen", default="127.0.0.1:8080", show_default=True, help="Address to listen on, HOST:PORT.")
@click.option("--to", "upstream", required=True, help="Upstream URL; a path prefix in it is honoured.")
@click.option("--connect-timeout", type=float, default=5.0, show_default=True)
@click.option("--read-timeout", type=float, default=60.0, show_default=True, help="Wait for the response headers.")
@click.option("--write-timeout", type=float, default=60.0, show_default=True)
@click.option(
    "--pool-timeout", type=float, default=5.0, show_default=True, help="Wait for a free connection; then 503."
)
@click.option(
    "--stream-idle-timeout", type=float, default=None, help="Max silence between body chunks (default: none)."
)
@click.option("--max-connections", type=int, default=512, show_default=True)
@click.option("--max-keepalive-connections", type=int, default=128, show_default=True)
@click.option("--keepalive-expiry", type=float, default=4.0, show_default=True)
@click.option("--transport", type=click.Choice(["fastgate", "httpx"]), default="fastgate", show_default=True)
@click.option("--preserve-host/--no-preserve-host", default=True, show_default=True, help="Forward the client's Host.")
@click.option("--forwarded/--no-forwarded", default=False, show_default=True, help="Add an RFC 7239 Forwarded header.")
@click.option(
    "--ws-ping-interval", type=float, default=20.0, show_default=True, help="WebSocket pings to the upstream; 0: none."
)
@click.option("--ws-ping-timeout", type=float, default=20.0, show_default=True, help="Wait for a pong; 0: forever.")
@click.option("--ws-idle-timeout", type=float, default=None, help="Close WebSockets silent this long (default: never).")
@click.option("--ws-close-timeout", type=float, default=5.0, show_default=True, help="Wait for the upstream's close.")
@click.option("--ws-max-message-size", type=int, default=16 * 1024 * 1024, show_default=True, help="Larger: 1009.")
@click.option("--ws-allowed-origin", multiple=True, help="Admit only this browser Origin (repeatable; default: any).")
@_server_options
def proxy(listen: str, upstream: str, **options: Any) -> None:
    """Forward every request on --from to the --to URL."""
    try:
        host, port = _parse_listen(listen)
        server = {
            "host": host,
            "port": port,
            **_server_overrides(
                workers=options.pop("workers"),
                log_level=options.pop("log_level"),
                log_config=options.pop("log_config"),
                access_log=options.pop("access_log"),
                graceful_timeout=options.pop("graceful_timeout"),
                ws_client_max_size=options.pop("ws_client_max_size"),
                ws_client_ping_interval=options.pop("ws_client_ping_interval"),
                ws_client_ping_timeout=options.pop("ws_client_ping_timeout"),
                ws_per_message_deflate=options.pop("ws_per_message_deflate"),
            ),
        }
        config, dump = validate_apart(
            build_config,
            {
                "server": server,
                "upstreams": {
                    "default": {
                        "url": upstream,
                        "transport": options["transport"],
                        "preserve_host": options["preserve_host"],
                        "forwarded": options["forwarded"],
                        "timeouts": {
                            "connect": options["connect_timeout"],
                            "read": options["read_timeout"],
                            "write": options["write_timeout"],
                            "pool": options["pool_timeout"],
                            "stream_idle": options["stream_idle_timeout"],
                        },
                        "limits": {
                            "max_connections": options["max_connections"],
                            "max_keepalive_connections": options["max_keepalive_connections"],
                            "keepalive_expiry": options["keepalive_expiry"],
                        },
                        "websocket": {
                            "ping_interval": options["ws_ping_interval"] or None,
                            "ping_timeout": options["ws_ping_timeout"] or None,
                            "idle_timeout": options["ws_idle_timeout"],
                            "close_timeout": options["ws_close_timeout"],
                            "max_message_size": options["ws_max_message_size"],
                            "allowed_origins": options["ws_allowed_origin"] or None,
                        },
                    }
                },
                "routes": [{"prefix": "/", "upstream": "default"}],
            },
        )
    except ConfigError as exc:
        _fail(exc)
    _serve(config, dump=dump)


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--watch", is_flag=True, default=False, help="Reload CONFIG_FILE when it changes (as SIGHUP does).")
@_server_options
def run(config_file: str, watch: bool, **overrides: Any) -> None:
    """Serve the gateway described by CONFIG_FILE (YAML or JSON); SIGHUP reloads it."""
    _import_from_cwd()
    source = ConfigSource(Path(config_file), _server_overrides(**overrides))
    digest = source.digest()  # before loading: a change in between makes workers read the file anew
    try:
        config, dump = validate_apart(_load_checked, source)
    except ConfigError as exc:
        _fail(exc)
    _serve(config, source=source, watch=watch, digest=digest, dump=dump)


def _load_checked(source: ConfigSource) -> GatewayConfig:
    config = source.load()
    for index, route in enumerate(config.routes):
        route_plugins(route, index)  # a plugin rejecting its options: exit 2 here, not a traceback per worker
    return config


@main.command()
@click.argument("config_file", type=click.Path(dir_okay=False))
def check(config_file: str) -> None:
    """Validate CONFIG_FILE; exit 0 when it is good, 2 with the first problems when not.

    Routes that can never match are reported as warnings, one line each on stderr; they do not change the exit code.
    """
    _import_from_cwd()
    try:
        config = load_config(config_file)
        for index, route in enumerate(config.routes):
            route_plugins(route, index)  # builds each plugin as the gateway will: options it rejects fail here
    except ConfigError as exc:
        _fail(exc)
    for problem in unreachable_routes(config.routes, merge_slashes=config.server.merge_slashes):
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"{config_file}: ok ({len(config.upstreams)} upstreams, {len(config.routes)} routes)")


def _serve(
    config: GatewayConfig,
    *,
    source: ConfigSource | None = None,
    watch: bool = False,
    digest: str | None = None,
    dump: str | None = None,
) -> None:
    from .server import run as run_server

    run_server(config, source=source, watch=watch, digest=digest, dump=dump)
