"""The pure part of hot reload: what changed, and whether it may change without a restart (no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastgate.config import GatewayConfig, build_config
from fastgate.exceptions import ConfigError
from fastgate.reloading import ConfigSource, apply_overrides, check_reloadable, diff_upstreams, restart_only_changes
from tests.reload_support import gateway_config, write_config

A = "http://127.0.0.1:9001"
B = "http://127.0.0.1:9002"


def config(upstreams: dict[str, str] | None = None, **sections: Any) -> GatewayConfig:
    upstreams = upstreams or {"a": A}
    routes = sections.pop("routes", [{"prefix": "/", "upstream": next(iter(upstreams))}])
    return build_config(gateway_config(upstreams, routes, port=8080, **sections))


def test_routes_and_upstreams_may_change_without_a_restart() -> None:
    running = config()
    loaded = config({"a": A, "b": B}, routes=[{"prefix": "/b", "upstream": "b"}, {"prefix": "/", "upstream": "a"}])
    assert restart_only_changes(running, loaded) == []
    check_reloadable(running, loaded)


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"server": {"port": 8081}}, "server.port: cannot change without a restart (8080 -> 8081)"),
        ({"server": {"host": "0.0.0.0"}}, 'server.host: cannot change without a restart ("127.0.0.1" -> "0.0.0.0")'),
        ({"server": {"workers": 4}}, "server.workers: cannot change without a restart (1 -> 4)"),
        ({"admin": {"listen": "127.0.0.1:9901"}}, 'admin.listen: cannot change without a restart (absent -> "127.0'),
        ({"metrics": {"enabled": False}}, "metrics: cannot change without a restart"),
    ],
)
def test_a_change_that_needs_a_restart_is_refused_naming_the_key(sections: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_reloadable(config(), config(**sections))
    assert info.value.detail.startswith(key)


def test_the_admin_token_and_log_level_may_change_without_a_restart() -> None:
    running = config(admin={"listen": "127.0.0.1:9901", "token": "one"})
    loaded = config(admin={"listen": "127.0.0.1:9901", "token": "two"}, server={"log_level": "debug"})
    assert restart_only_changes(running, loaded) == []


def test_upstream_diff_sorts_upstreams_into_kept_changed_added_removed() -> None:
    running = config({"kept": A, "changed": A, "removed": A}, routes=[{"upstream": "kept"}])
    loaded = config({"kept": A, "changed": B, "added": B}, routes=[{"upstream": "kept"}])
    diff = diff_upstreams(running, loaded)
    assert (diff.kept, diff.changed, diff.added, diff.removed) == (("kept",), ("changed",), ("added",), ("removed",))
    assert str(diff) == "added added; changed changed; removed removed"
    assert str(diff_upstreams(running, running)) == "no upstream changed"


def test_an_upstream_whose_target_weights_change_is_changed() -> None:
    running = build_config({"upstreams": {"a": {"targets": [{"url": A}, {"url": B}]}}, "routes": [{"upstream": "a"}]})
    loaded = build_config(
        {"upstreams": {"a": {"targets": [{"url": A}, {"url": B, "weight": 3}]}}, "routes": [{"upstream": "a"}]}
    )
    assert diff_upstreams(running, loaded).changed == ("a",)


def test_the_command_lines_server_overrides_apply_again_on_every_load(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    write_config(path, gateway_config({"a": A}, [{"upstream": "a"}], port=8080))
    source = ConfigSource(path, {"port": 9000, "workers": 2})
    first = source.load()
    assert (first.server.port, first.server.workers) == (9000, 2)
    write_config(path, gateway_config({"a": B}, [{"upstream": "a"}], port=8080))
    second = source.load()
    assert second.server.port == 9000 and second.upstreams["a"].targets[0].url == B
    check_reloadable(first, second)  # the file's own port never reaches the running gateway
    assert apply_overrides(first, {}) is first


def test_a_config_source_reaches_workers_through_the_environment(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    assert ConfigSource.from_environ(environ) is None
    ConfigSource(tmp_path / "gateway.yaml", {"port": 1}).export(environ)
    assert ConfigSource.from_environ(environ) == ConfigSource((tmp_path / "gateway.yaml").resolve(), {"port": 1})


def test_an_admin_listener_on_the_proxy_port_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"admin.listen: must not be the proxy's port 8080"):
        config(admin={"listen": "127.0.0.1:8080"})
    with pytest.raises(ConfigError, match=r"admin.listen: must be HOST:PORT"):
        config(admin={"listen": "9901"})


def test_turning_tls_on_is_refused_but_new_certificate_files_may_come(tmp_path: Path) -> None:
    import trustme

    pairs = []
    for name in ("one", "two"):
        issued = trustme.CA().issue_cert("127.0.0.1")
        cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        pairs.append({"cert_file": str(cert), "key_file": str(key)})
    with pytest.raises(ConfigError) as info:
        check_reloadable(config(), config(server={"tls": pairs[0]}))
    assert info.value.detail.startswith("server.tls: turning TLS on or off cannot happen without a restart")
    assert restart_only_changes(config(server={"tls": pairs[0]}), config(server={"tls": pairs[1]})) == []


def test_a_config_source_is_unchanged_since_export_only_while_the_file_matches_the_exported_digest(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("a: 1\n")
    source = ConfigSource(path, {})
    environ: dict[str, str] = {}
    source.export(environ)
    assert not source.unchanged_since_export(environ)  # no digest exported: always read the file
    source.export(environ, source.digest())
    assert source.unchanged_since_export(environ)
    path.write_text("a: 2\n")
    assert not source.unchanged_since_export(environ)
    path.unlink()
    assert source.digest() is None and not source.unchanged_since_export(environ)
