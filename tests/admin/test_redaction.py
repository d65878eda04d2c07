"""GET /config's redaction (issue 17 item 11): decided by schema, so no secret of the running config leaks.

A config with a secret in every place one can go is redacted purely, served by a real admin listener, and served by
a real ``fastgate run`` process whose error log (an unreachable Redis, JWKS and auth server, each URL carrying
secrets) must not carry them either.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import typing
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from fastgate import Gateway
from fastgate.admin.redaction import FIELDS, NESTED, PLUGIN_OPTIONS, PLUGINS, REDACTED, redacted_config
from fastgate.config import AdminConfig, GatewayConfig, TracingConfig, build_config
from fastgate.exceptions import ConfigError
from fastgate.observability.safe_url import safe_url
from fastgate.plugins import BUILTIN_PLUGINS, create_plugin, resolve_plugin
from tests.reload_support import fastgate_run, write_config
from tests.servers import REFUSED_PORT, free_port, run_gateway

DEAD = f"127.0.0.1:{REFUSED_PORT}"

# Every string below is a secret: none may appear anywhere in GET /config or in the log.
SECRETS = (
    "s3cret-admin",
    "redis-user",
    "redis-pass",
    "s3cret",  # ?password=s3cret on the Redis URL (the reproduction)
    "upstream-pass",
    "target-user",
    "target-pass",
    "health-tok",
    "origin-pass",
    "otlp-pass",
    "otlp-key",
    "x-internal-key-value",
    "query-matcher-value",
    "upstream-key-value",
    "signature-value",
    "added-cookie-value",
    "response-secret",
    "jwks-query-secret",
    "fa-user",
    "fa-pass",
    "fa-query-secret",
    "cors-origin-pass",
    "plugin-api-key",
    "plugin-nested",
    "plugin-list-item",
    "rl-redis-secret",
)


def secret_config(admin_port: int, proxy_port: int = 0) -> dict[str, Any]:
    """A config with a secret in every field that can hold one, and a safe value beside each."""
    return {
        "server": {"port": proxy_port, "access_log": False, "graceful_timeout": 5},
        "admin": {"listen": f"127.0.0.1:{admin_port}", "token": "s3cret-admin"},
        "redis": {"url": f"redis://redis-user:redis-pass@{DEAD}/0?password=s3cret", "timeout": 0.5},
        "tracing": {"otlp_endpoint": "http://otlp-user:otlp-pass@127.0.0.1:4318/?api_key=otlp-key"},
        "upstreams": {
            "api": {
                "url": f"http://svc:upstream-pass@{DEAD}/base",
                "health_check": {"path": "/healthz?token=health-tok", "interval": 60},
                "websocket": {"allowed_origins": ["https://app.example", "https://o:origin-pass@other.example"]},
            },
            "pool": {"targets": [{"url": f"http://target-user:target-pass@{DEAD}", "weight": 2}]},
        },
        "routes": [
            {
                "name": "internal",
                "prefix": "/internal",
                "upstream": "api",
                "headers": {"x-internal-key": "x-internal-key-value", "x-tenant": "blue"},
                "query": {"sig": "query-matcher-value"},
                "request_headers": {
                    "set": {"x-upstream-key": "upstream-key-value", "x-signature": "signature-value"},
                    "add": {"cookie": "added-cookie-value"},
                    "remove": ["x-debug"],
                },
                "response_headers": {"set": {"x-leak": "response-secret"}},
            },
            {
                "name": "limited",
                "prefix": "/limited",
                "upstream": "api",
                "rate_limit": {"rate": 100, "store": "redis", "key": "header:authorization"},
            },
            {
                "name": "jwt",
                "prefix": "/jwt",
                "upstream": "api",
                "plugins": [
                    {
                        "use": "jwt",
                        "options": {
                            "jwks_url": f"http://{DEAD}/jwks.json?key=jwks-query-secret",
                            "issuer": "https://issuer.example",
                        },
                    }
                ],
            },
            {
                "name": "fa",
                "prefix": "/fa",
                "upstream": "api",
                "plugins": [
                    {
                        "use": "forward_auth",
                        "options": {
                            "url": f"http://fa-user:fa-pass@{DEAD}/check?token=fa-query-secret",
                            "copy_headers": ["x-user"],
                        },
                    },
                    {"use": "cors", "options": {"allow_origins": ["https://u:cors-origin-pass@app.example"]}},
                    {"use": "rate_limit", "options": {"rate": 5, "redis": {"url": "redis://:rl-redis-secret@x"}}},
                ],
            },
            {
                "name": "custom",
                "prefix": "/custom",
                "upstream": "api",
                "plugins": [
                    {
                        "use": "tests.admin.redaction_fixtures:Keyring",
                        "options": {
                            "region": "eu-west-1",
                            "retries": 3,
                            "api_key": "plugin-api-key",
                            "inner": {"n": "plugin-nested"},
                            "list": ["plugin-list-item"],
                            "timeout": 5,
                        },
                    }
                ],
            },
        ],
    }


def assert_no_secret(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"leaked {leaked}"


def test_config_redaction_hides_every_secret_and_shows_what_is_safe() -> None:
    data = redacted_config(build_config(secret_config(9901)))
    assert_no_secret(json.dumps(data))
    assert data["admin"] == {"listen": "127.0.0.1:9901", "token": REDACTED}
    assert data["redis"]["url"] == f"redis://***@{DEAD}/0?password=***"
    assert data["redis"]["timeout"] == 0.5
    assert data["tracing"]["otlp_endpoint"] == "http://***@127.0.0.1:4318/?api_key=***"
    api = data["upstreams"]["api"]
    assert api["url"] == f"http://***@{DEAD}/base" and "targets" not in api
    assert api["health_check"]["path"] == "/healthz?token=***" and api["health_check"]["interval"] == 60
    assert api["websocket"]["allowed_origins"] == ["https://app.example", "https://***@other.example"]
    assert api["timeouts"]["read"] == 60 and api["retries"]["backoff"]["max"] == 0.25
    assert data["upstreams"]["pool"]["targets"] == [{"url": f"http://***@{DEAD}", "weight": 2}]
    internal, limited, jwt, fa, custom = data["routes"]
    assert internal["headers"] == {"x-internal-key": REDACTED, "x-tenant": REDACTED}  # every matcher value
    assert internal["query"] == {"sig": REDACTED}
    assert internal["request_headers"] == {
        "set": {"x-upstream-key": REDACTED, "x-signature": REDACTED},
        "add": {"cookie": REDACTED},
        "remove": ["x-debug"],
    }
    assert internal["response_headers"]["set"] == {"x-leak": REDACTED}
    assert internal["prefix"] == "/internal" and internal["name"] == "internal" and internal["upstream"] == "api"
    assert limited["rate_limit"]["key"] == "header:authorization"  # what to limit on is a name, not a secret
    assert jwt["plugins"] == [
        {
            "use": "jwt",
            "options": {"jwks_url": f"http://{DEAD}/jwks.json?key=***", "issuer": "https://issuer.example"},
        }
    ]
    assert fa["plugins"][0]["options"] == {"url": f"http://***@{DEAD}/check?token=***", "copy_headers": ["x-user"]}
    assert fa["plugins"][1]["options"] == {"allow_origins": ["https://***@app.example"]}
    assert fa["plugins"][2]["options"] == {"rate": 5, "redis": REDACTED}
    # A plugin of yours: only the options its class declares in public_options are shown.
    assert custom["plugins"][0]["options"] == {
        "region": "eu-west-1",
        "retries": 3,
        "api_key": REDACTED,
        "inner": REDACTED,
        "list": REDACTED,
        "timeout": REDACTED,
    }
    assert data["server"]["port"] == 0 and data["metrics"] == {"enabled": True}


def _models_in(annotation: Any) -> set[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    found: set[type[BaseModel]] = set()
    for arg in typing.get_args(annotation):
        found |= _models_in(arg)
    return found


def _reachable_models() -> dict[type[BaseModel], set[str]]:
    """Every model reachable from GatewayConfig -> the names of its fields that hold models."""
    seen: dict[type[BaseModel], set[str]] = {}
    todo: list[type[BaseModel]] = [GatewayConfig]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        model.model_rebuild()
        seen[model] = set()
        for name, field in model.model_fields.items():
            inner = _models_in(field.annotation)
            if inner:
                seen[model].add(name)
                todo.extend(inner)
    return seen


def test_every_field_of_every_config_model_is_classified() -> None:
    """A field added to a config model without a place in FIELDS fails here: nothing is shown by default."""
    reachable = _reachable_models()
    assert set(FIELDS) == set(reachable), "models not classified (or classified but gone)"
    for model, nested in reachable.items():
        assert set(FIELDS[model]) == set(model.model_fields), f"{model.__name__}: fields and FIELDS differ"
        walked = {name for name, kind in FIELDS[model].items() if kind in (NESTED, PLUGINS)}
        assert walked == nested, f"{model.__name__}: NESTED must be exactly the fields that hold models"


def test_every_option_of_every_builtin_plugin_is_classified() -> None:
    assert set(PLUGIN_OPTIONS) == set(BUILTIN_PLUGINS)
    for name in BUILTIN_PLUGINS:
        factory = resolve_plugin(name)
        assert isinstance(factory, type)
        parameters = {
            key
            for key, parameter in inspect.signature(factory).parameters.items()
            if parameter.kind is not inspect.Parameter.VAR_KEYWORD
        }
        assert parameters <= set(PLUGIN_OPTIONS[name]), (
            f"{name}: unclassified options {parameters - set(PLUGIN_OPTIONS[name])}"
        )
        if parameters != set(PLUGIN_OPTIONS[name]):  # the rest are the **options its model validates
            accepts_more = any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(factory).parameters.values()
            )
            assert accepts_more, f"{name}: PLUGIN_OPTIONS lists options it does not take"


def test_an_unclassified_field_is_shown_as_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed at run time too: a field missing from the table shows ``***``, not its value."""
    admin_fields = dict(FIELDS[AdminConfig])
    del admin_fields["listen"]
    monkeypatch.setitem(FIELDS, AdminConfig, admin_fields)
    assert redacted_config(build_config(secret_config(9901)))["admin"]["listen"] == REDACTED


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://default:pw@cache:6379/0?password=pw&db=1", "redis://***@cache:6379/0?password=***&db=***"),
        ("redis://:pw@cache:6379/0", "redis://***@cache:6379/0"),
        ("rediss://cache:6380/0", "rediss://cache:6380/0"),
        ("unix:///run/redis.sock?password=pw", "unix:///run/redis.sock?password=***"),
        ("http://token@github.example/x", "http://***@github.example/x"),
        ("http://a.example/jwks?pw", "http://a.example/jwks?***"),
        ("http://a.example/p#pw", "http://a.example/p#***"),
        ("http://[::1]:9000/p?k=pw", "http://[::1]:9000/p?k=***"),
        ("http://u:p@w@host/", "http://***@host/"),  # the last '@' ends the userinfo, as urlsplit reads it
        ("redis://u:p#w@host/0", "redis://***"),  # unescaped '#', '?' or '/' in a password: nothing of it shown
        ("redis://u:p?w@host/0", "redis://***"),
        ("redis://u:p/w@host/0", "redis://***"),
        ("/healthz?token=pw", "/healthz?token=***"),
        ("header:authorization", "header:authorization"),
        ("127.0.0.1:9901", "127.0.0.1:9901"),
        ("http://h.example/users/@me?e=a@pw", "http://h.example/users/@me?e=***"),
    ],
)
def test_safe_url(url: str, shown: str) -> None:
    assert safe_url(url) == shown
    assert "pw" not in shown and ":p@" not in shown


@pytest.mark.anyio
async def test_get_config_over_a_real_admin_listener_shows_no_secret() -> None:
    admin_port = free_port()
    gateway = Gateway(build_config(secret_config(admin_port)))
    async with (
        run_gateway(gateway),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}", timeout=10) as admin,
    ):
        response = await admin.get("/config", headers={"authorization": "Bearer s3cret-admin"})
    assert response.status_code == 200
    assert_no_secret(response.text)
    assert response.json()["routes"][0]["headers"] == {"x-internal-key": REDACTED, "x-tenant": REDACTED}


def _wait_for(log: typing.Callable[[], str], needle: str, limit: float = 20.0) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        text = log()
        if needle in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"no {needle!r} in the log after {limit}s:\n{log()}")


def test_fastgate_run_shows_no_secret_in_get_config_nor_in_its_error_log(tmp_path: Path) -> None:
    """The issue's reproduction: an unreachable Redis URL carrying ``?password=s3cret``, a jwks_url and a
    forward_auth URL with secrets in their query, through a real ``fastgate run`` process."""
    admin_port, proxy_port = free_port(), free_port()
    path = tmp_path / "gateway.yaml"
    write_config(path, secret_config(admin_port, proxy_port))
    with fastgate_run(path, tmp_path / "gateway.log", proxy_port) as gw, httpx.Client(timeout=10) as client:
        limited = client.get(f"{gw.url}/limited/x")  # Redis unreachable: on_error allow, one warning
        assert limited.status_code == 502  # through (fail open) to an upstream that refuses connections
        denied = client.get(f"{gw.url}/fa/x")  # the auth server refuses: 503 and one error line
        assert denied.status_code == 503
        config = client.get(f"http://127.0.0.1:{admin_port}/config", headers={"authorization": "Bearer s3cret-admin"})
        _wait_for(gw.log, "rate limit: Redis at redis://***@")
        _wait_for(gw.log, "jwt: JWKS fetch from http://")
        log = _wait_for(gw.log, "forward_auth: GET /fa/x -> 503")
    assert config.status_code == 200
    assert_no_secret(config.text)
    assert config.json()["redis"]["url"] == f"redis://***@{DEAD}/0?password=***"
    assert_no_secret(log)
    assert f"redis://***@{DEAD}/0?password=***" in log
    assert f"http://{DEAD}/jwks.json?key=***" in log
    assert f"http://***@{DEAD}/check?token=***" in log


def _upstream(**upstream: Any) -> dict[str, Any]:
    return {"upstreams": {"api": upstream}, "routes": [{"upstream": "api"}]}


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (_upstream(url="ftp://u:err-secret@host/"), "upstreams.api.url"),
        (_upstream(url="http://host/?key=err-secret"), "upstreams.api.url"),
        (_upstream(url="http://u:err-secret@host:99999/"), "upstreams.api.url"),
        (_upstream(targets=[{"url": "http://u:err-secret@h"}, {"url": "http://u:err-secret@h"}]), "targets[1]"),
        (_upstream(url="http://h", websocket={"allowed_origins": ["https://u:err-secret@h/x"]}), "allowed_origins"),
        ({**_upstream(url="http://h"), "redis": {"url": "http://u:err-secret@h/0"}}, "redis.url"),
        ({**_upstream(url="http://h"), "tracing": {"otlp_endpoint": "grpc://h/?k=err-secret"}}, "otlp_endpoint"),
    ],
)
def test_a_config_error_names_the_key_but_not_the_secret_in_its_url(data: dict[str, Any], key: str) -> None:
    """Config errors reach stderr and, on a refused reload, the error log: a URL in one is rendered by safe_url."""
    with pytest.raises(ConfigError) as caught:
        build_config(data)
    assert key in caught.value.detail
    assert "err-secret" not in caught.value.detail


def test_a_plugin_url_error_does_not_show_the_url_s_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        create_plugin("forward_auth", {"url": "ftp://u:err-secret@h/check"}, "routes[0].plugins[0]")
    assert "url: must be an absolute" in caught.value.detail and "err-secret" not in caught.value.detail


def test_the_otlp_exporters_log_lines_lose_the_endpoints_secrets(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The exporter logs its connection errors with the endpoint's path and query (urllib3's message)."""
    from fastgate.observability._otel import build_provider

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3")  # a retry or two, then give up: a short test
    caplog.set_level(logging.WARNING)
    endpoint = f"http://otlp-user:otlp-pass@{DEAD}/v1/traces?api_key=otlp-key"
    provider = build_provider(TracingConfig(otlp_endpoint=endpoint), {})
    with provider.get_tracer("test").start_as_current_span("one"):
        pass
    provider.force_flush(10)
    provider.shutdown()
    exporter_lines = [record.getMessage() for record in caplog.records if "export" in record.getMessage()]
    assert exporter_lines, caplog.text
    assert_no_secret(caplog.text)
    assert any("/v1/traces?api_key=***" in line for line in exporter_lines), exporter_lines


def test_library_reprs_and_errors_show_upstream_urls_safely() -> None:
    from fastgate.integrations.client import UpstreamClient
    from fastgate.integrations.fastapi import Upstreams

    url = "http://svc:upstream-pass@127.0.0.1:9000/base"
    assert "upstream-pass" not in repr(Upstreams(api=url))
    client = UpstreamClient("api", url)
    assert "upstream-pass" not in repr(client)


@pytest.mark.parametrize("value", ["Bearer err-secret\n", "err-secret\u65e5", ["err-secret"]])
def test_a_bad_header_value_is_named_by_its_key_not_shown(value: object) -> None:
    """A header value is often a credential: a refused reload's log line names the key and the problem only."""
    with pytest.raises(ConfigError) as caught:
        build_config({**_upstream(url="http://h"), "routes": [{"upstream": "api", "headers": {"x-key": value}}]})
    assert "routes[0].headers.x-key" in caught.value.detail and "err-secret" not in caught.value.detail
