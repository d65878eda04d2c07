"""The feature arms of the benchmark (issue 12): what each costs on S1, and the "full" configuration.

- `fastgate-full`: 2 targets behind round_robin, 20 routes (the last matches), a `request_headers` route plugin,
  metrics on, a memory rate limit that never triggers, traceparent propagation (always on), access log on.
- `fastgate-metrics-on` / `fastgate-metrics-off`: one route, `metrics: {enabled: true / false}`, access log off.
- `fastgate-ratelimit-memory`: one route with `rate_limit: {rate: 1000000, per: 1s, store: memory}`.
- `fastgate-ratelimit-redis`: the same with `store: redis`, on a redis-server the bench starts on a free port.
- `fastgate-jwt`: one route with the `jwt` plugin (RS256, `jwks_file`); wrk sends a valid token.

Each config is validated by this fastgate before the arm runs; one it does not accept yet (a key or plugin still
being wired) is reported as `skipped: <reason>` instead of failing the run.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import Procs, Skipped, Unavailable

ROUTES = 20
NEVER_LIMITS = {"rate": 1_000_000, "per": "1s", "store": "memory"}


@dataclass
class Extras:
    """What the feature arms share: a redis-server (started on first use) and JWT material (made on first use)."""

    root: Path
    procs: Procs
    redis_url: str | None = None
    jwks_file: Path | None = None
    token: str | None = None
    headers: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def redis(self) -> str:
        if self.redis_url is None:
            binary = shutil.which("redis-server")
            if binary is None:
                raise Skipped("skipped: redis-server is not installed (scripts/install installs it)")
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
            argv += ["--dir", str(self.root)]
            proc = self.procs.start("redis", argv, "0")
            deadline = time.monotonic() + 10
            while not _redis_ping(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise Unavailable(f"redis-server did not start: {self.procs.log_tail(proc)}")
                time.sleep(0.02)
            self.redis_url = f"redis://127.0.0.1:{port}/0"
        return self.redis_url

    def jwt(self) -> tuple[Path, str]:
        if self.jwks_file is None or self.token is None:
            try:
                import jwt
                from cryptography.hazmat.primitives.asymmetric import rsa
            except ImportError as exc:
                raise Skipped(f"skipped: {exc.name} is not installed (PyJWT and cryptography make the token)") from exc
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            numbers = key.public_key().public_numbers()
            jwk = {"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
                   "n": _b64(numbers.n), "e": _b64(numbers.e)}  # fmt: skip
            self.jwks_file = self.root / "jwks.json"
            self.jwks_file.write_text(json.dumps({"keys": [jwk]}))
            claims = {"sub": "bench", "iat": int(time.time()), "exp": int(time.time()) + 24 * 3600}
            self.token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
        return self.jwks_file, self.token


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def feature_config(arm: str, port: int, upstream: int, second: int, extras: Extras) -> dict[str, Any]:
    """The config of one feature arm (`arm` without the `fastgate-` prefix)."""
    url = f"http://127.0.0.1:{upstream}"
    server: dict[str, Any] = {"host": "127.0.0.1", "port": port, "access_log": False, "log_level": "warning"}
    route: dict[str, Any] = {"prefix": "/", "upstream": "api"}
    config: dict[str, Any] = {"server": server, "upstreams": {"api": {"url": url}}, "routes": [route]}
    if arm == "full":
        # fastgate's default access line (text, to stdout: the run's log file). The access logger follows
        # log_level, so "warning" would silently drop every line: "info" is what a default deployment runs.
        server["access_log"] = True
        server["log_level"] = "info"
        config["upstreams"] = {
            "api": {"targets": [{"url": url}, {"url": f"http://127.0.0.1:{second}"}], "balancer": "round_robin"}
        }
        route["plugins"] = [{"use": "request_headers", "options": {"set": {"x-bench": "full"}}}]
        route["rate_limit"] = dict(NEVER_LIMITS)
        others = [{"prefix": f"/api/v1/service{i}/", "upstream": "api"} for i in range(ROUTES - 1)]
        config["routes"] = [*others, route]
        config["metrics"] = {"enabled": True}
    elif arm in ("metrics-on", "metrics-off"):
        config["metrics"] = {"enabled": arm == "metrics-on"}
    elif arm == "ratelimit-memory":
        route["rate_limit"] = dict(NEVER_LIMITS)
    elif arm == "ratelimit-redis":
        route["rate_limit"] = {**NEVER_LIMITS, "store": "redis"}
        config["redis"] = {"url": extras.redis()}
    elif arm == "jwt":
        jwks_file, token = extras.jwt()
        route["plugins"] = [{"use": "jwt", "options": {"jwks_file": str(jwks_file), "algorithms": ["RS256"]}}]
        extras.headers[arm] = (f"Authorization: Bearer {token}",)
    else:
        raise ValueError(f"unknown feature arm {arm!r}")
    _check(arm, config)
    return config


def _check(arm: str, config: dict[str, Any]) -> None:
    """Skip the arm when this fastgate does not accept its config (a feature not wired yet)."""
    try:
        from fastgate.config import GatewayConfig
    except ImportError as exc:
        raise Unavailable(f"fastgate is not importable here to check the config: {exc}") from exc
    try:
        GatewayConfig.model_validate(config)
    except Exception as exc:  # ValidationError, ConfigError: the first line names the key
        reason = " ".join(str(exc).split()).split(" [type=", 1)[0][:200]
        raise Skipped(f"skipped: fastgate does not accept the {arm} config yet: {reason}") from exc


def wrk_headers(arm: str, extras: Extras) -> tuple[str, ...]:
    return extras.headers.get(arm, ())


def run_config_argv(prefix: list[str], path: Path, config: dict[str, Any]) -> list[str]:
    path.write_text(json.dumps(config))
    return [*prefix, "run", str(path)]
