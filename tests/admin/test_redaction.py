"""GET /config's redaction, pure: no secret of the running config reaches the admin API."""

from __future__ import annotations

import json

from fastgate.admin.redaction import REDACTED, redact_url, redacted_config
from fastgate.config import build_config

SECRETS = ("s3cret-admin", "redis-pass", "plugin-key", "bearer-value", "cookie-value", "upstream-pass", "nested-tok")


def test_config_redaction_hides_every_secret_and_keeps_the_rest() -> None:
    config = build_config(
        {
            "admin": {"listen": "127.0.0.1:9901", "token": "s3cret-admin"},
            "redis": {"url": "redis://default:redis-pass@127.0.0.1:6379/0"},
            "upstreams": {"api": {"url": "http://svc:upstream-pass@127.0.0.1:9000"}},
            "routes": [
                {
                    "prefix": "/api",
                    "upstream": "api",
                    "headers": {"x-api-key": "bearer-value", "x-tenant": "blue"},
                    "request_headers": {
                        "set": {"authorization": "Bearer bearer-value", "x-env": "prod"},
                        "add": {"cookie": "cookie-value"},
                    },
                    "rate_limit": {"rate": 10, "store": "redis", "key": "header:authorization"},
                    "plugins": [
                        {
                            "use": "tests.plugin_fixtures:Lifespan",
                            "options": {"api_key": "plugin-key", "inner": {"auth_token": "nested-tok", "n": 1}},
                        }
                    ],
                }
            ],
        }
    )
    data = redacted_config(config)
    text = json.dumps(data)
    for secret in SECRETS:
        assert secret not in text, secret
    assert data["admin"] == {"listen": "127.0.0.1:9901", "token": REDACTED}
    assert data["redis"]["url"] == "redis://default:***@127.0.0.1:6379/0"
    route = data["routes"][0]
    assert route["headers"] == {"x-api-key": REDACTED, "x-tenant": "blue"}
    assert route["request_headers"]["set"] == {"authorization": REDACTED, "x-env": "prod"}
    assert route["request_headers"]["add"] == {"cookie": REDACTED}
    assert route["rate_limit"]["key"] == "header:authorization"  # what to limit on is not a secret
    assert route["plugins"][0]["options"] == {"api_key": REDACTED, "inner": {"auth_token": REDACTED, "n": 1}}
    assert data["server"]["port"] == 8080


def test_url_redaction_touches_only_urls_with_a_password() -> None:
    assert redact_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("http://user@host/") == "http://user@host/"
    assert redact_url("header:authorization") == "header:authorization"
    assert redact_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
