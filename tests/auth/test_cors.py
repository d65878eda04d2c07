"""cors: preflights answered at the gateway, actual requests marked, disallowed origins left without CORS headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastgate import ConfigError, Gateway
from tests.servers import RunningServer, run_gateway
from tests.upstream_app import Recorder

from .helpers import assert_error_body, client_for, gateway_config

pytestmark = pytest.mark.anyio

APP = "https://app.test"
OPTIONS = {
    "allow_origins": [APP, "http://localhost:3000"],
    "allow_methods": ["GET", "POST", "PUT"],
    "allow_headers": ["Content-Type", "Authorization"],
    "expose_headers": ["X-Total"],
    "max_age": 600,
    "allow_credentials": True,
}


def _cors(**options: Any) -> dict[str, Any]:
    return {"use": "cors", "options": {**OPTIONS, **options}}


def _preflight(origin: str, method: str = "PUT", headers: str = "content-type") -> dict[str, str]:
    return {"origin": origin, "access-control-request-method": method, "access-control-request-headers": headers}


async def test_cors_preflight_is_answered_by_the_gateway_with_204_and_never_reaches_upstream(
    upstream: RunningServer, recorder: Recorder
) -> None:
    async with run_gateway(Gateway(gateway_config(upstream.url, _cors()))) as gw, client_for(gw) as client:
        response = await client.options("/echo", headers=_preflight(APP))
        assert response.status_code == 204 and response.content == b""
        assert response.headers["access-control-allow-origin"] == APP
        assert response.headers["access-control-allow-methods"] == "GET, POST, PUT"
        assert response.headers["access-control-allow-headers"] == "content-type, authorization"
        assert response.headers["access-control-allow-credentials"] == "true"
        assert response.headers["access-control-max-age"] == "600"
        assert response.headers["vary"] == "Origin"
        assert recorder.requests == []


async def test_cors_preflight_from_a_disallowed_origin_method_or_header_gets_403_without_cors_headers(
    upstream: RunningServer, recorder: Recorder
) -> None:
    async with run_gateway(Gateway(gateway_config(upstream.url, _cors()))) as gw, client_for(gw) as client:
        for headers in (
            _preflight("https://evil.test"),
            _preflight(APP, method="DELETE"),
            _preflight(APP, headers="x-secret"),
        ):
            response = await client.options("/echo", headers=headers)
            assert_error_body(response, 403, "forbidden")
            assert not [name for name in response.headers if name.startswith("access-control-")]
        assert recorder.requests == []


async def test_cors_actual_request_from_an_allowed_origin_gets_allow_origin_and_vary(
    upstream: RunningServer, recorder: Recorder
) -> None:
    async with run_gateway(Gateway(gateway_config(upstream.url, _cors()))) as gw, client_for(gw) as client:
        response = await client.get("/echo", headers={"origin": APP})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == APP
        assert response.headers["access-control-allow-credentials"] == "true"
        assert response.headers["access-control-expose-headers"] == "X-Total"
        assert response.headers["vary"] == "Origin"
        assert recorder.last()["method"] == "GET"
        plain = await client.get("/echo")  # no Origin: no CORS headers, but caches must key on Origin
        assert "access-control-allow-origin" not in plain.headers and plain.headers["vary"] == "Origin"
        # an OPTIONS without Access-Control-Request-Method is not a preflight: it goes upstream
        assert (await client.options("/echo", headers={"origin": APP})).status_code == 200
        assert recorder.last()["method"] == "OPTIONS"


async def test_cors_actual_request_from_a_disallowed_origin_gets_no_cors_headers(
    upstream: RunningServer, recorder: Recorder
) -> None:
    async with run_gateway(Gateway(gateway_config(upstream.url, _cors()))) as gw, client_for(gw) as client:
        response = await client.get("/echo", headers={"origin": "https://evil.test"})
        assert response.status_code == 200  # the browser, not the gateway, withholds it from the page
        assert not [name for name in response.headers if name.startswith("access-control-")]


async def test_cors_any_origin_without_credentials_answers_star(upstream: RunningServer) -> None:
    plugin = {"use": "cors", "options": {"allow_origins": ["*"]}}
    async with run_gateway(Gateway(gateway_config(upstream.url, plugin))) as gw, client_for(gw) as client:
        preflight = await client.options("/echo", headers=_preflight("https://any.test", headers="x-a, x-b"))
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert preflight.headers["access-control-allow-headers"] == "x-a, x-b"  # echoed when not configured
        actual = await client.get("/echo", headers={"origin": "https://any.test"})
        assert actual.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in actual.headers


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"allow_origins": ["*"], "allow_credentials": True},
            "allow_origins: '*' cannot be used with allow_credentials",
        ),
        ({"allow_origins": ["app.test"]}, "allow_origins: 'app.test' is not an origin"),
        ({"allow_origins": "https://app.test"}, "allow_origins: a list"),
        ({"allow_origins": []}, "allow_origins: list at least one"),
        ({"allow_origins": ["*"], "max_age": -1}, "max_age"),
    ],
)
def test_cors_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"routes\[0\]\.plugins\[0\]\.options") as info:
        Gateway(gateway_config("http://127.0.0.1:9", {"use": "cors", "options": options}))
    assert message in str(info.value)


async def test_cors_headers_are_on_an_auth_refusal_and_a_rate_limit_refusal_of_the_same_route(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("web:s3cret-key-for-the-browser\n")
    plugins = [
        _cors(),
        {"use": "api_key", "options": {"keys_file": str(keys)}},
        {"use": "rate_limit", "options": {"rate": 1, "per": "1h"}},
    ]
    config = gateway_config(upstream.url, *plugins)
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        refused = await client.get("/echo", headers={"origin": APP})  # no key: the api_key plugin's own 401
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == APP
        assert refused.headers["access-control-allow-credentials"] == "true"
        assert refused.headers["access-control-expose-headers"] == "X-Total"
        assert "Origin" in refused.headers["vary"]
        assert refused.headers["x-request-id"]

        key = {"origin": APP, "x-api-key": "s3cret-key-for-the-browser"}
        assert (await client.get("/echo", headers=key)).status_code == 200
        limited = await client.get("/echo", headers=key)  # rate_limit raises RateLimited: an error answer
        assert_error_body(limited, 429, "rate_limited")
        assert limited.headers["access-control-allow-origin"] == APP
        assert limited.headers["retry-after"]

        other = await client.get("/echo", headers={"origin": "https://evil.test"})  # not an allowed origin
        assert other.status_code == 401 and "access-control-allow-origin" not in other.headers
        assert len(recorder.requests) == 1
