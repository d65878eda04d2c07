"""jwt: bearer tokens verified against a JWKS file or a JWKS URL served by a real local server."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastgate import ConfigError, Gateway
from fastgate.config import build_config
from tests.servers import REFUSED_PORT, RunningServer, captured_logs, run_gateway, run_server, wait_until
from tests.upstream_app import Recorder

from .helpers import JwksApp, all_logs, assert_error_body, client_for, ec_key, gateway_config, jwks, log_text, rsa_key

pytestmark = pytest.mark.anyio

RSA = rsa_key("rsa-1")
EC = ec_key("ec-1")


@pytest.fixture
def jwks_file(tmp_path: Path) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(RSA, EC)))
    return str(path)


def _plugin(**options: Any) -> dict[str, Any]:
    return {"use": "jwt", "options": {"issuer": "https://idp.test/", "audience": "api", **options}}


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_jwt_valid_rs256_and_es256_tokens_pass_with_sub_as_identity_and_authorization_stripped(
    upstream: RunningServer, recorder: Recorder, jwks_file: str
) -> None:
    config = gateway_config(upstream.url, _plugin(jwks_file=jwks_file))
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        for key in (RSA, EC):
            headers = {**_bearer(key.token({"sub": f"user-{key.kid}"})), "x-fastgate-identity": "admin"}
            response = await client.get("/echo", headers=headers)
            assert response.status_code == 200, response.text
            assert recorder.header("x-fastgate-identity") == [f"user-{key.kid}"]
            assert recorder.header("authorization") == []


async def test_jwt_refusals_are_401_with_a_bearer_challenge_and_never_reach_upstream(
    upstream: RunningServer, recorder: Recorder, jwks_file: str
) -> None:
    now = int(time.time())
    public_pem = RSA.private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    unsigned = jwt.encode({"sub": "eve", "aud": "api", "iss": "https://idp.test/", "exp": now + 60}, None, "none")
    cases = {
        "expired": RSA.token({"exp": now - 3600}),
        "not yet valid": RSA.token({"nbf": now + 3600}),
        "wrong audience": RSA.token({"aud": "other"}),
        "wrong issuer": RSA.token({"iss": "https://evil.test/"}),
        "no exp": RSA.token({"exp": None}),
        "no sub": RSA.token({"sub": None}),
        "unknown kid": RSA.token(kid="nobody"),
        "alg none": unsigned,
        # the classic confusion: HMAC with the RSA public key as the secret
        "hs256 with the public key": _hs256_with(public_pem, now),
        "tampered": RSA.token()[:-4] + "AAAA",
        "garbage": "not.a.jwt",
    }
    config = gateway_config(upstream.url, _plugin(jwks_file=jwks_file))
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        missing = await client.get("/echo")
        assert_error_body(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == 'Bearer realm="fastgate"'
        basic = await client.get("/echo", headers={"authorization": "Basic YTpi"})
        assert basic.status_code == 401
        for name, token in cases.items():
            response = await client.get("/echo", headers=_bearer(token))
            assert_error_body(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith('Bearer realm="fastgate", error="invalid_token"'), (
                name
            )
        assert recorder.requests == []


def _hs256_with(secret: bytes, now: int) -> str:
    """An HS256 token keyed with the RSA public key's PEM (PyJWT refuses to do it, so sign it by hand)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    claims = {"sub": "eve", "aud": "api", "iss": "https://idp.test/", "exp": now + 60}
    payload = b64(json.dumps(claims).encode())
    signature = b64(hmac.new(secret, header + b"." + payload, hashlib.sha256).digest())
    return (header + b"." + payload + b"." + signature).decode()


async def test_jwt_leeway_accepts_a_token_just_expired(upstream: RunningServer, jwks_file: str) -> None:
    config = gateway_config(upstream.url, _plugin(jwks_file=jwks_file, leeway=120))
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        response = await client.get("/echo", headers=_bearer(RSA.token({"exp": int(time.time()) - 30})))
        assert response.status_code == 200


async def test_jwt_jwks_url_refreshes_on_an_unknown_kid_at_most_once_per_interval(
    upstream: RunningServer, recorder: Recorder
) -> None:
    rotated = rsa_key("rsa-2")
    app = JwksApp(jwks(RSA))
    async with run_server(app, lifespan="off") as idp:
        config = gateway_config(upstream.url, _plugin(jwks_url=f"{idp.url}/.well-known/jwks.json"))
        async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
            assert len(app.fetches) == 1  # fetched at startup
            assert (await client.get("/echo", headers=_bearer(RSA.token()))).status_code == 200
            assert len(app.fetches) == 1  # a known kid costs no fetch
            app.document = jwks(RSA, rotated)  # the IdP rotates
            response = await client.get("/echo", headers=_bearer(rotated.token({"sub": "bob"})))
            assert response.status_code == 200
            assert recorder.header("x-fastgate-identity") == ["bob"]
            assert len(app.fetches) == 2
            # a flood of made-up kids: refused, and the JWKS server is not asked again within the interval
            for n in range(30):
                bogus = await client.get("/echo", headers=_bearer(RSA.token(kid=f"made-up-{n}")))
                assert bogus.status_code == 401
            assert len(app.fetches) == 2


async def test_jwt_token_never_reaches_the_logs(upstream: RunningServer, jwks_file: str) -> None:
    token = RSA.token()
    expired = RSA.token({"exp": int(time.time()) - 3600})
    config = gateway_config(upstream.url, _plugin(jwks_file=jwks_file), access_log=True)
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        with all_logs() as logs:
            assert (await client.get("/echo", headers=_bearer(token))).status_code == 200
            assert (await client.get("/echo", headers=_bearer(expired))).status_code == 401
    text = log_text(logs)
    assert "/echo" in text
    for secret in (token, expired, token.split(".")[2], expired.split(".")[2]):
        assert secret not in text


async def test_jwt_checks_websocket_handshakes(ws_upstream: RunningServer, ws_recorder: Any, jwks_file: str) -> None:
    routes = [{"upstream": "ws", "plugins": [_plugin(jwks_file=jwks_file)]}]
    config = build_config({"upstreams": {"ws": {"url": ws_upstream.url}}, "routes": routes})
    async with run_gateway(Gateway(config)) as gw:
        url = f"ws://127.0.0.1:{gw.port}/ws/echo"
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, open_timeout=10):
                pass
        assert info.value.response.status_code == 401
        assert info.value.response.headers["WWW-Authenticate"] == 'Bearer realm="fastgate"'
        assert ws_recorder.handshakes == []
        async with connect(url, additional_headers=_bearer(RSA.token({"sub": "carol"})), open_timeout=10) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        assert ws_recorder.header("x-fastgate-identity") == ["carol"]
        assert ws_recorder.header("authorization") == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "jwks_file, jwks_url: give exactly one"),
        ({"jwks_file": "x", "jwks_url": "http://127.0.0.1:9/"}, "jwks_file, jwks_url: give exactly one"),
        ({"jwks_url": "ftp://idp/jwks"}, "jwks_url: must be an absolute http"),
        ({"jwks_url": "http://127.0.0.1:9/", "algorithms": ["none"]}, "algorithms: 'none' is not allowed"),
        ({"jwks_url": "http://127.0.0.1:9/", "algorithms": ["HS256"]}, "algorithms: 'HS256' is not allowed"),
        ({"jwks_file": "/nonexistent/jwks.json"}, "jwks_file: cannot read"),
    ],
)
def test_jwt_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"routes\[0\]\.plugins\[0\]\.options: jwt did not accept them") as info:
        Gateway(gateway_config("http://127.0.0.1:9", {"use": "jwt", "options": options}))
    assert message in str(info.value)


def test_jwt_jwks_file_without_a_usable_key_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]}))
    with pytest.raises(ConfigError, match="jwks_file: no usable signing key"):
        Gateway(gateway_config("http://127.0.0.1:9", {"use": "jwt", "options": {"jwks_file": str(path)}}))


async def test_jwt_jwks_url_down_at_startup_still_starts_refuses_tokens_and_logs_one_line(
    upstream: RunningServer, recorder: Recorder
) -> None:
    config = gateway_config(upstream.url, _plugin(jwks_url=f"http://127.0.0.1:{REFUSED_PORT}/jwks"))
    with captured_logs("fastgate.error", logging.WARNING) as logs:
        async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
            for _ in range(5):
                response = await client.get("/echo", headers=_bearer(RSA.token()))
                assert_error_body(response, 401, "unauthorized")
    lines = [r.getMessage() for r in logs.records if "JWKS fetch" in r.getMessage()]
    assert len(lines) == 2  # the startup fetch, then one refresh for all five requests (min_refresh_interval)
    assert recorder.requests == []


async def test_jwt_token_cache_verifies_a_hot_token_once_and_still_honours_its_exp(
    upstream: RunningServer, jwks_file: str
) -> None:
    gateway = Gateway(gateway_config(upstream.url, _plugin(jwks_file=jwks_file, leeway=0)))
    (plugin,) = [p for _, p in gateway.plugin_chains[0].plugins]
    exp = int(time.time()) + 2
    token = RSA.token({"exp": exp})
    async with run_gateway(gateway) as gw, client_for(gw) as client:
        for _ in range(5):
            assert (await client.get("/echo", headers=_bearer(token))).status_code == 200
        assert plugin.verifications == 1
        await wait_until(lambda: time.time() > exp + 0.05, limit=10)
        expired = await client.get("/echo", headers=_bearer(token))
        assert_error_body(expired, 401, "unauthorized")
        assert expired.json()["detail"] == "token expired"
