"""forward_auth: each request asked of a real auth server first (Traefik's ForwardAuth)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from fastgate import Gateway
from fastgate.config import build_config
from tests.servers import REFUSED_PORT, RunningServer, captured_logs, run_gateway, run_server
from tests.upstream_app import Recorder

from .helpers import assert_error_body, client_for, gateway_config

pytestmark = pytest.mark.anyio


@dataclass
class AuthServer:
    """Allows ``x-token: good`` (answering x-user and x-role), redirects ``x-token: login``, refuses the rest."""

    requests: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        message = await receive()
        self.requests.append({"method": scope["method"], "path": scope["path"], "headers": headers, "body": message})
        token = headers.get("x-token")
        if token == "good":
            status, out, body = 200, [(b"x-user", b"alice"), (b"x-role", b"admin")], b""
        elif token == "bob":
            status, out, body = 200, [(b"X-User", b"bob")], b""
        elif token == "anonymous":
            status, out, body = 204, [], b""
        elif token == "login":
            status, out, body = 302, [(b"location", b"https://login.test/?next=/x")], b"go log in"
        else:
            status, out, body = 401, [(b"www-authenticate", b'Bearer realm="sso"'), (b"x-reason", b"no")], b"denied"
        out.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def auth_server() -> Any:
    app = AuthServer()
    async with run_server(app, lifespan="off") as server:
        server.app = app
        yield server


def _plugin(url: str) -> dict[str, Any]:
    return {"use": "forward_auth", "options": {"url": url, "copy_headers": ["x-user"]}}


async def test_forward_auth_2xx_lets_the_request_through_with_copy_headers_and_no_body_to_the_auth_server(
    upstream: RunningServer, recorder: Recorder, auth_server: RunningServer
) -> None:
    config = gateway_config(upstream.url, _plugin(f"{auth_server.url}/check?v=1"))
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        response = await client.post(
            "/echo?q=1", content=b"the body", headers={"x-token": "good", "x-user": "spoofed", "host": "shop.test"}
        )
        assert response.status_code == 200
        assert recorder.last()["body"] == "the body"
        assert recorder.header("x-user") == ["alice"]  # from the auth server, the client's copy gone
        assert recorder.header("x-role") == []  # not in copy_headers
        seen = auth_server.app.requests[-1]
        assert (seen["method"], seen["path"]) == ("GET", "/check")  # the method travels in X-Forwarded-Method
        assert seen["body"]["body"] == b"" and "content-length" not in seen["headers"]
        assert seen["headers"]["x-forwarded-method"] == "POST"
        assert seen["headers"]["x-forwarded-uri"] == "/echo?q=1"
        assert seen["headers"]["x-forwarded-host"] == "shop.test"
        assert seen["headers"]["x-forwarded-proto"] == "http"
        assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert seen["headers"]["x-token"] == "good"

        anonymous = await client.get("/echo", headers={"x-token": "anonymous", "x-user": "spoofed"})
        assert anonymous.status_code == 200
        assert recorder.header("x-user") == []  # removed even though the auth server sent none


async def test_forward_auth_refusal_goes_back_to_the_client_as_the_auth_server_gave_it(
    upstream: RunningServer, recorder: Recorder, auth_server: RunningServer
) -> None:
    config = gateway_config(upstream.url, _plugin(f"{auth_server.url}/check"))
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        refused = await client.get("/echo", headers={"x-token": "bad"})
        assert (refused.status_code, refused.content) == (401, b"denied")
        assert refused.headers["www-authenticate"] == 'Bearer realm="sso"'
        assert refused.headers["x-reason"] == "no"
        assert refused.headers["x-request-id"]
        redirect = await client.get("/echo", headers={"x-token": "login"})
        assert (redirect.status_code, redirect.content) == (302, b"go log in")
        assert redirect.headers["location"] == "https://login.test/?next=/x"
        assert recorder.requests == []


async def test_forward_auth_server_down_is_503_json_and_one_log_line(
    upstream: RunningServer, recorder: Recorder
) -> None:
    config = gateway_config(upstream.url, _plugin(f"http://127.0.0.1:{REFUSED_PORT}/check"))
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        with captured_logs("fastgate.error", logging.WARNING) as logs:
            response = await client.get("/echo", headers={"x-token": "good"})
        assert_error_body(response, 503, "auth_unavailable")
        assert recorder.requests == []
    lines = [r.getMessage() for r in logs.records if "forward_auth" in r.getMessage()]
    assert len(lines) == 1 and "503" in lines[0] and response.headers["x-request-id"] in lines[0]


async def test_forward_auth_identity_header_from_names_the_caller_for_a_rate_limit_by_identity(
    upstream: RunningServer, recorder: Recorder, auth_server: RunningServer
) -> None:
    plugin = {"use": "forward_auth", "options": {"url": f"{auth_server.url}/check", "identity_header_from": "x-user"}}
    config = build_config(
        {
            "upstreams": {"main": {"url": upstream.url}},
            "routes": [
                {
                    "prefix": "/",
                    "upstream": "main",
                    "plugins": [plugin],
                    "rate_limit": {"rate": 1, "per": "1h", "key": "identity"},
                }
            ],
        }
    )
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        # alice and bob come from the same address: counted apart, each by the name the auth server gave
        assert (await client.get("/echo", headers={"x-token": "good", "x-user": "bob"})).status_code == 200
        assert (await client.get("/echo", headers={"x-token": "bob"})).status_code == 200
        assert (await client.get("/echo", headers={"x-token": "good"})).status_code == 429
        assert (await client.get("/echo", headers={"x-token": "bob", "x-user": "alice"})).status_code == 429
        assert len(recorder.requests) == 2
        assert recorder.header("x-user") == []  # bob's own request: the identity is not sent upstream by itself


def test_forward_auth_identity_header_from_must_be_a_header_name() -> None:
    from fastgate.plugins.auth.forward_auth import ForwardAuth

    with pytest.raises(ValueError, match="identity_header_from"):
        ForwardAuth("http://127.0.0.1:9/check", identity_header_from="bad header")
