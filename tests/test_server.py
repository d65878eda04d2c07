"""How ``fastgate.server`` configures Uvicorn, and how the CLI's server flags get there (issue 3 follow-ups)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner

import fastgate.server
from fastgate import GatewayConfig
from fastgate._ws_protocol import FastgateWebSocketProtocol
from fastgate.cli import main
from fastgate.config import ServerConfig
from fastgate.server import uvicorn_options, websocket_protocol

UPSTREAM = "http://127.0.0.1:9"
CLIENT_HOP_DEFAULTS = {
    "ws_max_size": 16 * 1024 * 1024,
    "ws_ping_interval": 20.0,
    "ws_ping_timeout": 20.0,
    "ws_per_message_deflate": False,
}


def test_uvicorn_serves_websockets_with_fastgates_protocol_and_client_hop_defaults() -> None:
    options = uvicorn_options(GatewayConfig.single(UPSTREAM))
    # The factory that imports FastgateWebSocketProtocol on the first upgrade (tests/test_lazy_imports.py); the
    # public name for `uvicorn --ws` is the class itself.
    assert options["ws"] is websocket_protocol
    assert fastgate.server.WebSocketProtocol is FastgateWebSocketProtocol
    assert {key: options[key] for key in CLIENT_HOP_DEFAULTS} == CLIENT_HOP_DEFAULTS
    assert set(options) <= set(inspect.signature(uvicorn.Config).parameters)  # every option is one Uvicorn takes


def test_client_hop_websocket_settings_reach_uvicorn() -> None:
    server = ServerConfig(
        ws_client_max_size=1000, ws_client_ping_interval=None, ws_client_ping_timeout=3.5, ws_per_message_deflate=True
    )
    options = uvicorn_options(GatewayConfig.single(UPSTREAM, server=server))
    assert options["ws_max_size"] == 1000
    assert options["ws_ping_interval"] is None
    assert options["ws_ping_timeout"] == 3.5
    assert options["ws_per_message_deflate"] is True


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[GatewayConfig]:
    """The configs the CLI would serve, instead of starting Uvicorn."""
    configs: list[GatewayConfig] = []
    monkeypatch.setattr("fastgate.server.run", lambda config, **source: configs.append(config))
    return configs


CLIENT_HOP_FLAGS = [
    "--ws-client-max-size",
    "2048",
    "--ws-client-ping-interval",
    "0",
    "--ws-client-ping-timeout",
    "7.5",
    "--ws-per-message-deflate",
]
CLIENT_HOP_SETTINGS = {
    "ws_client_max_size": 2048,
    "ws_client_ping_interval": None,  # 0 on the command line: no pings
    "ws_client_ping_timeout": 7.5,
    "ws_per_message_deflate": True,
}


def _client_hop(config: GatewayConfig) -> dict[str, Any]:
    return {key: getattr(config.server, key) for key in CLIENT_HOP_SETTINGS}


def test_proxy_client_hop_flags_set_the_server_and_leave_the_upstream_hop_alone(served: list[GatewayConfig]) -> None:
    args = ["proxy", "--to", UPSTREAM, *CLIENT_HOP_FLAGS, "--ws-ping-interval", "5", "--ws-max-message-size", "4096"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    [config] = served
    assert _client_hop(config) == CLIENT_HOP_SETTINGS
    websocket = config.upstreams["default"].websocket  # --ws-ping-interval etc. stay the upstream hop's
    assert (websocket.ping_interval, websocket.ping_timeout, websocket.max_message_size) == (5.0, 20.0, 4096)


def test_run_client_hop_flags_override_the_config_file(served: list[GatewayConfig], tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "server: {ws_client_max_size: 100, ws_client_ping_timeout: 1, ws_per_message_deflate: true}\n"
        f"upstreams:\n  api: {{url: '{UPSTREAM}'}}\nroutes:\n  - {{upstream: api}}\n"
    )
    assert CliRunner().invoke(main, ["run", str(path)]).exit_code == 0
    assert CliRunner().invoke(main, ["run", str(path), *CLIENT_HOP_FLAGS]).exit_code == 0
    result = CliRunner().invoke(main, ["run", str(path), "--no-ws-per-message-deflate"])
    assert result.exit_code == 0, result.output
    from_file, from_flags, deflate_off = served
    assert _client_hop(from_file) == {
        "ws_client_max_size": 100,
        "ws_client_ping_interval": 20.0,
        "ws_client_ping_timeout": 1.0,
        "ws_per_message_deflate": True,
    }
    assert _client_hop(from_flags) == CLIENT_HOP_SETTINGS
    assert deflate_off.server.ws_per_message_deflate is False
    assert deflate_off.server.ws_client_max_size == 100


def test_client_hop_flags_default_to_the_server_config_defaults(served: list[GatewayConfig]) -> None:
    assert CliRunner().invoke(main, ["proxy", "--to", UPSTREAM]).exit_code == 0
    assert served[0].server == ServerConfig(port=8080)


@pytest.mark.parametrize(
    ("flag", "key"),
    [
        ("--ws-client-max-size", "server.ws_client_max_size"),
        ("--ws-client-ping-timeout", "server.ws_client_ping_timeout"),
    ],
)
def test_bad_client_hop_value_is_a_config_error(served: list[GatewayConfig], flag: str, key: str) -> None:
    result = CliRunner().invoke(main, ["proxy", "--to", UPSTREAM, flag, "-1"])
    assert result.exit_code == 2
    assert f"config error: {key}:" in result.output
    assert not served


def test_protocols_load_by_their_public_import_strings() -> None:
    import uvicorn

    from fastgate._protocol import FastgateHttpProtocol
    from fastgate._ws_protocol import FastgateWebSocketProtocol
    from tests.upstream_app import Recorder, UpstreamApp

    config = uvicorn.Config(
        UpstreamApp(Recorder()),
        http="fastgate.server:HttpProtocol",
        ws="fastgate.server:WebSocketProtocol",
    )
    config.load()
    assert config.http_protocol_class is FastgateHttpProtocol
    assert config.ws_protocol_class is FastgateWebSocketProtocol
