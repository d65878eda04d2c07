"""jwt: bearer tokens verified against a JWKS file or a JWKS URL served by a real local server."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastgate import ConfigError, Gateway
from fastgate.config import build_config
from fastgate.plugins.auth.jwt_auth import MAX_TOKEN_CHARS
from tests.servers import REFUSED_PORT, RunningServer, captured_logs, run_gateway, run_server, wait_until
from tests.upstream_app import Recorder

from .helpers import (
    JwksApp,
    SigningKey,
    all_logs,
    assert_error_body,
    client_for,
    ec_key,
    gateway_config,
    jwks,
    log_text,
    rsa_key,
)

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


# --- issue 17 item 9: hostile headers, the iss CVE, JWKS refresh off the request path -------------------------------


def _signed(header: Any, claims: dict[str, Any] | None = None, key: SigningKey = RSA) -> str:
    """A token with exactly ``header`` (any JSON), signed correctly with ``key``: only the header is hostile."""
    now = int(time.time())
    body = {"sub": "mallory", "iss": "https://idp.test/", "aud": "api", "exp": now + 300, **(claims or {})}
    signing_input = _b64(json.dumps(header).encode()) + b"." + _b64(json.dumps(body).encode())
    signature = jwt.get_algorithm_by_name(key.alg).sign(signing_input, key.private)
    return (signing_input + b"." + _b64(signature)).decode()


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


MALLORY = rsa_key("mallory")  # a key of the attacker's own, in no JWKS we trust

HOSTILE_HEADERS: dict[str, tuple[str, str]] = {
    # name: (token, the 401's detail)
    "alg a list": (_signed({"alg": ["RS256"], "kid": "rsa-1"}), "token algorithm not accepted"),
    "alg an object": (_signed({"alg": {"RS256": 1}, "kid": "rsa-1"}), "token algorithm not accepted"),
    "alg a number": (_signed({"alg": 256, "kid": "rsa-1"}), "token algorithm not accepted"),
    "alg null": (_signed({"alg": None, "kid": "rsa-1"}), "token algorithm not accepted"),
    "alg missing": (_signed({"kid": "rsa-1"}), "token algorithm not accepted"),
    "alg in another case": (_signed({"alg": "rs256", "kid": "rsa-1"}), "token algorithm not accepted"),
    "kid a list": (_signed({"alg": "RS256", "kid": ["rsa-1"]}), "malformed token"),
    "kid an object": (_signed({"alg": "RS256", "kid": {"k": "rsa-1"}}), "malformed token"),
    "kid a number": (_signed({"alg": "RS256", "kid": 1}), "malformed token"),
    "typ a number": (_signed({"alg": "RS256", "kid": "rsa-1", "typ": 1}), "malformed token"),
    "typ a list": (_signed({"alg": "RS256", "kid": "rsa-1", "typ": ["JWT"]}), "malformed token"),
    "crit an unknown extension": (_signed({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1}), ""),
    "crit empty": (_signed({"alg": "RS256", "kid": "rsa-1", "crit": []}), ""),
    "crit a string": (_signed({"alg": "RS256", "kid": "rsa-1", "crit": "b64"}), ""),
    "header a list": (_signed(["RS256"]), "malformed token"),
    "header a string": (_signed("RS256"), "malformed token"),
    "oversized token": (_signed({"alg": "RS256", "kid": "rsa-1"}, {"pad": "x" * 20_000}), "token too large"),
    "two segments": (".".join(RSA.token().split(".")[:2]), "malformed token"),
    # keys named by the token itself are never used: only the configured JWKS verifies
    "jwk embedded, signed by it": (
        _signed({"alg": "RS256", "kid": "rsa-1", "jwk": MALLORY.jwk()}, key=MALLORY),
        "token signature invalid",
    ),
    "jku elsewhere, signed by it": (
        _signed({"alg": "RS256", "kid": "mallory", "jku": "http://127.0.0.1:9/jwks"}, key=MALLORY),
        "token key id not known",
    ),
    "x5u elsewhere, signed by it": (
        _signed({"alg": "RS256", "kid": "rsa-1", "x5u": "http://127.0.0.1:9/cert"}, key=MALLORY),
        "token signature invalid",
    ),
    "b64 false (RFC 7797 unencoded payload)": (_signed({"alg": "RS256", "kid": "rsa-1", "b64": False}), ""),
    "header not base64": ("%%%." + RSA.token().split(".", 1)[1], "malformed token"),
}


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
async def test_jwt_hostile_header_fields_are_401_with_no_error_log(
    upstream: RunningServer, recorder: Recorder, jwks_file: str, case: str
) -> None:
    """A header field of the wrong type was a 500 and an error log line per request (``alg: ["RS256"]``); every
    field we act on is now type-checked, ``crit`` is refused (RFC 7515 §4.1.11), a token over MAX_TOKEN_CHARS is
    not parsed. The signature is always valid: only the header is hostile."""
    token, detail = HOSTILE_HEADERS[case]
    config = gateway_config(upstream.url, _plugin(jwks_file=jwks_file))
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        with all_logs() as logs:
            response = await client.get("/echo", headers=_bearer(token))
    assert_error_body(response, 401, "unauthorized")
    if detail:
        assert response.json()["detail"] == detail
    assert response.headers["www-authenticate"].startswith('Bearer realm="fastgate", error="invalid_token"')
    assert [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING] == []
    assert recorder.requests == []


async def test_jwt_well_formed_optional_header_fields_still_pass(
    upstream: RunningServer, recorder: Recorder, jwks_file: str
) -> None:
    """The control of the table above: string ``kid`` and ``typ`` (any string, as RFC 7519 §5.1 allows) pass."""
    config = gateway_config(upstream.url, _plugin(jwks_file=jwks_file))
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        for typ in ("JWT", "at+jwt"):
            token = _signed({"alg": "RS256", "kid": "rsa-1", "typ": typ}, {"sub": f"typ-{typ}"})
            response = await client.get("/echo", headers=_bearer(token))
            assert response.status_code == 200, response.text
            assert recorder.header("x-fastgate-identity") == [f"typ-{typ}"]
        assert MAX_TOKEN_CHARS >= 8192
        near_limit = _signed({"alg": "RS256", "kid": "rsa-1"}, {"pad": "x" * 8000})
        assert (await client.get("/echo", headers=_bearer(near_limit))).status_code == 200


async def test_jwt_issuer_is_matched_exactly_not_as_a_substring(upstream: RunningServer, jwks_file: str) -> None:
    """CVE-2024-53861 (PyJWT 2.10.0 matched ``iss`` as a substring of the configured issuer); the floor is 2.10.1."""
    config = gateway_config(upstream.url, _plugin(jwks_file=jwks_file, issuer="abc"))
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        for iss in ("ab", "_abc_", "b", "abcd", ""):
            response = await client.get("/echo", headers=_bearer(RSA.token({"iss": iss})))
            assert_error_body(response, 401, "unauthorized")
            assert response.json()["detail"] == "token issuer not accepted", iss
        assert (await client.get("/echo", headers=_bearer(RSA.token({"iss": "abc"})))).status_code == 200


def test_pyjwt_floor_is_2_10_1() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"PyJWT[crypto]>=2.10.1"' in text


async def test_jwt_slow_jwks_endpoint_does_not_delay_tokens_with_a_known_kid(
    upstream: RunningServer, recorder: Recorder
) -> None:
    """The cache has expired and the IdP hangs: the refresh runs in the background, requests use the cached keys."""
    app = JwksApp(jwks(RSA))
    async with run_server(app, lifespan="off") as idp:
        options = {"jwks_url": f"{idp.url}/jwks", "cache_ttl": 0.2, "min_refresh_interval": 0, "timeout": 20}
        gateway = Gateway(gateway_config(upstream.url, _plugin(**options, token_cache_size=0)))
        (plugin,) = [p for _, p in gateway.plugin_chains[0].plugins]
        async with run_gateway(gateway) as gw, client_for(gw) as client:
            assert len(app.fetches) == 1
            app.stall = anyio.Event()
            try:
                await wait_until(lambda: time.monotonic() - plugin.fetched_at > 0.3)  # the cache has expired
                started = time.monotonic()
                for n in range(10):
                    response = await client.get("/echo", headers=_bearer(RSA.token({"sub": f"u{n}"})))
                    assert response.status_code == 200
                elapsed = time.monotonic() - started
                assert len(app.fetches) == 2  # one refresh in flight, hanging; the ten did not wait for it
                assert elapsed < 10, f"ten requests took {elapsed:.2f}s while the JWKS server hung (timeout 20 s)"
            finally:
                app.stall.set()
            await wait_until(lambda: plugin.fetched_at > started)  # the refresh completes in the background
            assert (await client.get("/echo", headers=_bearer(RSA.token()))).status_code == 200


async def test_jwt_flood_of_unknown_kids_costs_one_fetch_per_interval_and_the_flood_does_not_wait(
    upstream: RunningServer,
) -> None:
    app = JwksApp(jwks(RSA))
    async with run_server(app, lifespan="off") as idp:
        options = {"jwks_url": f"{idp.url}/jwks", "min_refresh_interval": 1.0, "timeout": 20}
        gateway = Gateway(gateway_config(upstream.url, _plugin(**options)))
        (plugin,) = [p for _, p in gateway.plugin_chains[0].plugins]
        async with run_gateway(gateway) as gw, client_for(gw) as client:
            assert len(app.fetches) == 1
            intervals = 3
            started = time.monotonic()
            with anyio.fail_after(30):
                while time.monotonic() - started < intervals:  # 3 s of made-up kids, 4 clients at once
                    async with anyio.create_task_group() as group:
                        for n in range(4):
                            group.start_soon(_refused_with_kid, client, f"made-up-{n}-{time.monotonic()}")
            # one fetch may start per min_refresh_interval: at most one per started second, plus the startup fetch
            assert 2 <= len(app.fetches) <= 1 + intervals + 1, app.fetches
            assert plugin.fetches == len(app.fetches)
            # a known kid still passes, without a fetch
            before = len(app.fetches)
            assert (await client.get("/echo", headers=_bearer(RSA.token()))).status_code == 200
            assert len(app.fetches) == before


async def _refused_with_kid(client: Any, kid: str) -> None:
    response = await client.get("/echo", headers=_bearer(RSA.token(kid=kid)))
    assert response.status_code == 401


async def test_jwt_unknown_kid_waits_for_the_fetch_in_flight_then_refuses_at_once_within_the_interval(
    upstream: RunningServer, recorder: Recorder
) -> None:
    """A rotation: the first token with the new kid waits for the (background) fetch and passes; a made-up kid
    within min_refresh_interval is refused without waiting even while the IdP hangs."""
    rotated = rsa_key("rsa-2")
    app = JwksApp(jwks(RSA))
    async with run_server(app, lifespan="off") as idp:
        options = {"jwks_url": f"{idp.url}/jwks", "min_refresh_interval": 60, "timeout": 20}
        async with run_gateway(Gateway(gateway_config(upstream.url, _plugin(**options)))) as gw:
            async with client_for(gw) as client:
                app.document = jwks(RSA, rotated)
                assert (await client.get("/echo", headers=_bearer(rotated.token({"sub": "bob"})))).status_code == 200
                assert len(app.fetches) == 2
                app.stall = anyio.Event()
                try:
                    started = time.monotonic()
                    response = await client.get("/echo", headers=_bearer(RSA.token(kid="made-up")))
                    assert response.status_code == 401
                    assert time.monotonic() - started < 10  # no fetch may start: no wait for the hanging IdP
                    assert len(app.fetches) == 2
                finally:
                    app.stall.set()


async def test_jwt_startup_that_fails_leaves_the_scopes_it_entered(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed startup gets no shutdown call from the chain: the plugin leaves its task group (and its client's)
    itself, or the task that ran startup would be left inside them."""
    from fastgate.plugins.auth import jwt_auth

    def broken(data: Any, source: str) -> Any:
        raise RuntimeError("unexpected")

    app = JwksApp(jwks(RSA))
    async with run_server(app, lifespan="off") as idp:
        plugin = jwt_auth.Jwt(jwks_url=f"{idp.url}/jwks")
        monkeypatch.setattr(jwt_auth, "parse_jwks", broken)
        with pytest.raises(RuntimeError, match="unexpected"):
            await plugin.startup()
        assert len(app.fetches) == 1
        with anyio.move_on_after(0.01) as scope:  # this task's own scopes still work
            await anyio.sleep(5)
        assert scope.cancelled_caught
        assert plugin.refresh(time.monotonic() + 3600) is None  # no task group left to start a fetch in
