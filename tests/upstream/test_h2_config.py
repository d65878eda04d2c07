"""The upstream keys of HTTP/2: ``protocol`` and ``http2``; a bad value is one message naming the key, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fastgate.cli import main
from fastgate.config import UpstreamConfig, build_config
from fastgate.exceptions import ConfigError


def config(**upstream: Any) -> dict[str, Any]:
    return {"upstreams": {"api": upstream}, "routes": [{"prefix": "/", "upstream": "api"}]}


def test_defaults_are_http1_with_100_streams_and_a_30s_ping() -> None:
    upstream = UpstreamConfig(url="http://127.0.0.1:9000")
    assert upstream.protocol == "http1"
    assert (upstream.http2.max_concurrent_streams, upstream.http2.keepalive_interval) == (100, 30.0)


def test_http2_settings_are_validated_and_kept() -> None:
    built = build_config(config(url="https://a:8443", protocol="h2", http2={"keepalive_interval": None}))
    assert built.upstreams["api"].protocol == "h2" and built.upstreams["api"].http2.keepalive_interval is None
    targets = [{"url": "http://a:1"}, {"url": "http://b:1"}]
    assert build_config(config(targets=targets, protocol="h2c")).upstreams["api"].protocol == "h2c"


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        ({"url": "http://a:80", "protocol": "h2"}, "upstreams.api.protocol: h2 needs https:// URLs"),
        ({"url": "https://a:443", "protocol": "h2c"}, "upstreams.api.protocol: h2c needs http:// URLs"),
        (
            {"targets": [{"url": "http://a:1"}, {"url": "https://b:1"}], "protocol": "h2c"},
            "upstreams.api.protocol: h2c needs http:// URLs (h2c is HTTP/2 over plain TCP), got 'https://b:1'",
        ),
        (
            {"url": "http://a:80", "protocol": "h2c", "transport": "httpx"},
            "upstreams.api.protocol: h2c needs transport: fastgate",
        ),
        ({"url": "http://a:80", "protocol": "h3"}, "upstreams.api.protocol: "),
        ({"url": "http://a:80", "http2": {"max_concurrent_streams": 0}}, "upstreams.api.http2.max_concurrent_streams"),
        ({"url": "http://a:80", "http2": {"keepalive_interval": 0}}, "upstreams.api.http2.keepalive_interval"),
        ({"url": "http://a:80", "http2": {"pings": True}}, "upstreams.api.http2.pings"),
    ],
)
def test_a_bad_value_names_its_key(upstream: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(config(**upstream))
    assert message in str(caught.value)


def test_fastgate_check_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "upstreams:\n  api: {url: 'http://127.0.0.1:9000', protocol: h2}\nroutes:\n  - {prefix: /, upstream: api}\n"
    )
    result = CliRunner().invoke(main, ["check", str(bad)])
    assert result.exit_code == 2
    assert "upstreams.api.protocol: h2 needs https:// URLs (h2 is HTTP/2 over TLS)" in result.output
    process = subprocess.run(
        [sys.executable, "-m", "fastgate", "check", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert process.returncode == 2 and "upstreams.api.protocol" in process.stdout + process.stderr
