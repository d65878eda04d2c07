"""The admin API as an ASGI app: health, readiness, config, upstreams, stats, reload, metrics, the dashboard.

>>> app = AdminApp(gateway)   # served by admin/listener.py on the admin address

Every JSON and action endpoint needs ``Authorization: Bearer <admin.token>`` when the running config sets a token
(401 otherwise; a reload may change it); the dashboard's static files carry no data and are served without it.
The JSON shapes are docs/operations.md's.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
import signal
import time
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from .._types import Receive, Scope, Send
from ..exceptions import ConfigError
from ..observability.metrics import metrics_app
from ..observability.record import route_label
from ..process_signals import MANAGER_PID_ENV
from ..upstream.cluster import Cluster
from .redaction import redacted_config

if TYPE_CHECKING:
    from ..app import Gateway
    from ..config import RouteConfig

STATIC_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".ico": b"image/x-icon",
    ".json": b"application/json",
}
JSON_ENDPOINTS = frozenset({"/healthz", "/readyz", "/config", "/upstreams", "/stats", "/reload", "/metrics"})


class AdminApp:
    """ASGI app of the admin listener, reading the live state of ``gateway`` (this worker's)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._metrics = metrics_app(gateway.metrics) if gateway.metrics is not None else None
        self._static = resources.files("fastgate.admin").joinpath("static")

    def __repr__(self) -> str:
        return f"<AdminApp {self.gateway!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path not in JSON_ENDPOINTS:
            if method not in ("GET", "HEAD"):
                await _json(send, 405, {"error": "method_not_allowed"}, [(b"allow", b"GET, HEAD")])
            else:
                await self._serve_static(send, path, head=method == "HEAD")
            return
        admin = self.gateway.config.admin
        if admin is not None and admin.token is not None and not _authorized(scope, admin.token):
            body = {"error": "unauthorized", "detail": "send Authorization: Bearer <admin.token>"}
            await _json(send, 401, body, [(b"www-authenticate", b"Bearer")])
            return
        wanted = "POST" if path == "/reload" else "GET"
        if method != wanted and not (wanted == "GET" and method == "HEAD"):
            await _json(send, 405, {"error": "method_not_allowed"}, [(b"allow", wanted.encode())])
            return
        if path == "/metrics":
            await self._serve_metrics(scope, receive, send)
        elif path == "/reload":
            status, body = await self._reload()
            await _json(send, status, body)
        else:
            status, body = self._read(path)
            await _json(send, status, body)

    def _read(self, path: str) -> tuple[int, Any]:
        gateway = self.gateway
        if path == "/healthz":
            return 200, {"status": "ok"}
        if path == "/readyz":
            readiness = gateway.readiness
            return (200 if readiness == "ready" else 503), {"status": readiness}
        if path == "/config":
            return 200, redacted_config(gateway.config)
        if path == "/upstreams":
            return 200, {"upstreams": upstreams(gateway)}
        return 200, self._stats()

    def _stats(self) -> dict[str, Any]:
        live = _as_dict(self.gateway.observability.live.snapshot())
        routes = [
            {
                "index": index,
                "name": route_label(index, route.name),
                "match": describe_match(route),
                "upstream": route.upstream,
            }
            for index, route in enumerate(self.gateway.config.routes)
        ]
        return {"time": time.time(), "pid": os.getpid(), **live, "routes": routes}

    async def _reload(self) -> tuple[int, dict[str, Any]]:
        gateway = self.gateway
        manager = os.environ.get(MANAGER_PID_ENV)
        try:
            if manager:
                gateway.validate()  # each worker loads the file again on the manager's SIGHUP
            else:
                changes = await gateway.reload()
        except ConfigError as exc:
            if manager:  # reload() logs and counts its own refusals
                gateway.reload_refused(exc)
            return 400, {"error": "config_invalid", "detail": exc.detail}
        if manager:
            os.kill(int(manager), signal.SIGHUP)
            return 200, {"result": "ok", "detail": "valid; the process manager reloads every worker"}
        return 200, {"result": "ok", "detail": changes}

    async def _serve_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._metrics is None:
            await _json(send, 404, {"error": "not_found", "detail": "metrics are off (metrics.enabled: false)"})
            return
        await self._metrics({**scope, "path": "/metrics"}, receive, send)

    async def _serve_static(self, send: Send, path: str, *, head: bool) -> None:
        name = "index.html" if path == "/" else path[1:]
        suffix = "." + name.rpartition(".")[2] if "." in name else ""
        # Only plain file names straight under static/: no directories, no dot files, no "..".
        if "/" in name or "\\" in name or name.startswith(".") or suffix not in STATIC_TYPES:
            await _json(send, 404, {"error": "not_found"})
            return
        resource = self._static.joinpath(name)
        try:
            body = await anyio.to_thread.run_sync(resource.read_bytes)
        except OSError:
            await _json(send, 404, {"error": "not_found"})
            return
        headers = [
            (b"content-type", STATIC_TYPES[suffix]),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})


def upstreams(gateway: Gateway) -> list[dict[str, Any]]:
    """``GET /upstreams``: each upstream of the running config and its targets' state in this worker."""
    out = []
    for name, transport in gateway.transports.items():
        upstream = gateway.config.upstreams[name]
        targets = []
        if isinstance(transport, Cluster):
            for stats in transport.stats():
                pool = stats.pool
                targets.append(
                    {
                        "address": stats.address,
                        "weight": stats.weight,
                        "healthy": stats.state != "unhealthy",
                        "ejected": stats.state == "ejected",
                        "active": pool.busy if pool is not None else None,
                        "idle": pool.idle if pool is not None else None,
                        "requests": stats.requests,
                        "errors": stats.errors,
                    }
                )
        out.append({"name": name, "balancer": upstream.balancer, "targets": targets})
    return out


def describe_match(route: RouteConfig) -> str:
    """A route's matchers in a few words: ``"prefix /api"``, ``"host api.example.com, path /v1, GET POST"``."""
    parts = []
    if route.host is not None:
        parts.append(f"host {route.host}")
    for kind in ("prefix", "path", "regex"):
        value = getattr(route, kind)
        if value is not None:
            parts.append(f"{kind} {value}")
    if route.methods:
        parts.append(" ".join(route.methods))
    if route.headers:
        parts.append("headers " + ", ".join(sorted(route.headers)))
    if route.query:
        parts.append("query " + ", ".join(sorted(route.query)))
    return ", ".join(parts) or "any"


def _authorized(scope: Scope, token: str) -> bool:
    expected = b"Bearer " + token.encode()
    for name, value in scope["headers"]:
        if name == b"authorization":
            return hmac.compare_digest(value, expected)
    return False


def _as_dict(value: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"live stats snapshot is neither a mapping nor a dataclass: {type(value).__name__}")


async def _json(send: Send, status: int, body: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(data)),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
