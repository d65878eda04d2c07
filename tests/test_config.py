from __future__ import annotations

from pathlib import Path

import pytest

from fastgate import ConfigError, GatewayConfig, PoolLimits, Timeouts, UpstreamConfig, load_config
from fastgate.config import build_config


def test_gateway_defaults_are_explicit_and_not_the_client_librarys() -> None:
    t = Timeouts()
    assert (t.connect, t.read, t.write, t.pool, t.stream_idle) == (5.0, 60.0, 60.0, 5.0, None)
    limits = PoolLimits()
    assert limits.keepalive_expiry < 5.0
    assert limits.max_connections == 512


def test_upstream_url_parts() -> None:
    upstream = UpstreamConfig(url="http://127.0.0.1:9000/api/")
    assert (upstream.host, upstream.port, upstream.path_prefix, upstream.authority) == (
        "127.0.0.1",
        9000,
        b"/api",
        b"127.0.0.1:9000",
    )
    assert UpstreamConfig(url="https://[::1]/").authority == b"[::1]"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"upstreams": {"a": {"url": "http://x"}}, "routes": []}, "routes: at least one route is required"),
        ({"upstreams": {"a": {"url": "nope"}}, "routes": [{"upstream": "a"}]}, "upstreams.a.url: must be an http"),
        ({"upstreams": {"a": {"url": "http://x?q=1"}}, "routes": [{"upstream": "a"}]}, "may not carry a query"),
        (
            {"upstreams": {"a": {"url": "http://x", "timeouts": {"read": 0}}}, "routes": [{"upstream": "a"}]},
            "upstreams.a.timeouts.read: Input should be greater than 0",
        ),
        ({"upstreams": {"a": {"url": "http://x", "colour": 1}}, "routes": [{"upstream": "a"}]}, "upstreams.a.colour"),
        ({"upstreams": {"a": {"url": "http://x"}}, "routes": [{"prefix": "api", "upstream": "a"}]}, "routes[0].prefix"),
    ],
)
def test_bad_config_names_the_key_and_the_problem(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(data)
    assert message in str(info.value)


def test_load_config_reads_yaml_and_json(tmp_path: Path) -> None:
    yaml_file = tmp_path / "gw.yaml"
    yaml_file.write_text("server: {port: 9999}\nupstreams: {a: {url: 'http://x:1'}}\nroutes: [{upstream: a}]\n")
    assert load_config(yaml_file).server.port == 9999
    json_file = tmp_path / "gw.json"
    json_file.write_text('{"upstreams": {"a": {"url": "http://x:1"}}, "routes": [{"upstream": "a"}]}')
    assert isinstance(load_config(json_file), GatewayConfig)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path / "broken.json")


def test_log_level_choices_match_the_logging_levels() -> None:
    from typing import get_args

    from fastgate.config import ServerConfig
    from fastgate.observability.logging import LOG_LEVELS

    assert set(get_args(ServerConfig.model_fields["log_level"].annotation)) == set(LOG_LEVELS)
