"""Shared pieces of the auth plugin tests: a gateway config, keys and tokens, a JWKS server, log capture."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fastgate.config import build_config
from tests.servers import LogCapture, RunningServer

LOGGERS = ("fastgate.access", "fastgate.error", "fastgate.upstream", "uvicorn.error", "uvicorn.access")


def gateway_config(upstream_url: str, *plugins: dict[str, Any], **server: Any) -> Any:
    routes = [{"prefix": "/", "upstream": "main", "plugins": list(plugins)}]
    return build_config({"server": server, "upstreams": {"main": {"url": upstream_url}}, "routes": routes})


def client_for(gw: RunningServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=gw.url, timeout=15)


@contextlib.contextmanager
def all_logs() -> Iterator[LogCapture]:
    """Every record of fastgate's and Uvicorn's loggers, down to DEBUG, for the duration of the block."""
    handler = LogCapture(logging.DEBUG)
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger, level in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)


def log_text(capture: LogCapture) -> str:
    return "\n".join(record.getMessage() for record in capture.records)


def assert_error_body(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail", "request_id"}
    assert body["error"] == error and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        data: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        data.update(kid=self.kid, alg=self.alg, use="sig")
        return data

    def token(self, claims: dict[str, Any] | None = None, **header: Any) -> str:
        now = int(time.time())
        body = {"sub": "alice", "iss": "https://idp.test/", "aud": "api", "iat": now, "exp": now + 300}
        body.update(claims or {})
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private, algorithm=self.alg, headers={"kid": self.kid, **header})


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.jwk() for key in keys]}


@dataclass
class JwksApp:
    """A JWKS endpoint whose key set the test changes (a rotation); it counts the fetches. While ``stall`` is set to
    an event, each answer waits for it (a slow IdP), at most ``STALL_LIMIT`` seconds."""

    document: dict[str, Any]
    fetches: list[float] = field(default_factory=list)
    stall: anyio.Event | None = None

    STALL_LIMIT = 30.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.fetches.append(time.monotonic())
        if self.stall is not None:
            with anyio.move_on_after(self.STALL_LIMIT):
                await self.stall.wait()
        body = json.dumps(self.document).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
