"""The admin API on its own listener (issue 11): every endpoint, the token, the dashboard's static files."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastgate import Gateway
from fastgate.admin import app as admin_app
from fastgate.config import build_config
from fastgate.reloading import ConfigSource
from tests.reload_support import NamedUpstream, gateway_config, write_config
from tests.servers import REFUSED_PORT, RunningServer, free_port, run_gateway, run_server
from tests.upstream_app import Recorder, UpstreamApp

pytestmark = pytest.mark.anyio

TOKEN = "s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@dataclass
class Admin:
    gateway: Gateway
    proxy: httpx.AsyncClient
    admin: httpx.AsyncClient
    path: Path
    upstream_url: str

    def write(self, **changes: Any) -> None:
        write_config(self.path, self.data(**changes))

    def data(self, upstream: str = "api", token: str | None = TOKEN, **sections: Any) -> dict[str, Any]:
        return gateway_config(
            {upstream: self.upstream_url},
            [{"prefix": "/", "upstream": upstream}],
            admin={"listen": self.listen, **({"token": token} if token else {})},
            redis={"url": "redis://user:hunter2@127.0.0.1:6379/0"},
            **sections,
        )

    listen: str = ""


@pytest.fixture
async def upstream() -> AsyncIterator[RunningServer]:
    async with run_server(NamedUpstream("api")) as server:
        yield server


@pytest.fixture
async def admin(upstream: RunningServer, tmp_path: Path) -> AsyncIterator[Admin]:
    setup = Admin(None, None, None, tmp_path / "gateway.yaml", upstream.url, listen=f"127.0.0.1:{free_port()}")  # type: ignore[arg-type]
    setup.write()
    source = ConfigSource(setup.path, {})
    gateway = Gateway(source.load(), source=source)
    async with (
        run_gateway(gateway) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=10) as proxy,
        httpx.AsyncClient(base_url=f"http://{setup.listen}", timeout=10) as client,
    ):
        setup.gateway, setup.proxy, setup.admin = gateway, proxy, client
        yield setup


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/config"),
        ("GET", "/upstreams"),
        ("GET", "/stats"),
        ("GET", "/metrics"),
        ("POST", "/reload"),
    ],
)
async def test_admin_endpoints_without_the_token_answer_401(admin: Admin, method: str, path: str) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        response = await admin.admin.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthorized"


async def test_healthz_and_readyz_answer_200_while_serving(admin: Admin) -> None:
    assert (await admin.admin.get("/healthz", headers=AUTH)).json() == {"status": "ok"}
    response = await admin.admin.get("/readyz", headers=AUTH)
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


async def test_readyz_answers_503_while_not_ready(admin: Admin) -> None:
    admin.gateway.readiness = "draining"  # what SIGTERM sets (tests/test_reload_process.py sends the real one)
    response = await admin.admin.get("/readyz", headers=AUTH)
    assert (response.status_code, response.json()) == (503, {"status": "draining"})


async def test_config_shows_the_running_config_with_secrets_redacted(admin: Admin) -> None:
    response = await admin.admin.get("/config", headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    data = response.json()
    assert data["admin"]["token"] == "***" and TOKEN not in response.text
    assert data["redis"]["url"] == "redis://***@127.0.0.1:6379/0" and "hunter2" not in response.text
    assert data["upstreams"]["api"]["url"] == admin.upstream_url


async def test_upstreams_describes_each_target_of_this_worker(admin: Admin) -> None:
    for _ in range(3):
        assert (await admin.proxy.get("/x")).status_code == 200
    body = (await admin.admin.get("/upstreams", headers=AUTH)).json()
    address = admin.upstream_url.removeprefix("http://")
    assert body == {
        "upstreams": [
            {
                "name": "api",
                "balancer": "round_robin",
                "targets": [
                    {
                        "address": address,
                        "weight": 1,
                        "healthy": True,
                        "ejected": False,
                        "active": 0,
                        "idle": 1,
                        "requests": 3,
                        "errors": 0,
                    }
                ],
            }
        ]
    }


async def test_stats_reports_this_workers_requests_latency_and_routes(admin: Admin) -> None:
    assert (await admin.proxy.get("/x")).status_code == 200
    body = (await admin.admin.get("/stats", headers=AUTH)).json()
    assert body["pid"] == os.getpid() and body["time"] > 0
    assert body["requests"] >= 1 and body["errors"] == 0
    assert set(body["latency_ms"]) == {"p50", "p90", "p99"}
    assert body["recent_errors"] == []
    assert body["routes"] == [{"index": 0, "name": "0", "match": "prefix /", "upstream": "api"}]


async def test_post_reload_swaps_a_valid_file_and_answers_200(admin: Admin) -> None:
    admin.write(upstream="renamed")
    response = await admin.admin.post("/reload", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"result": "ok", "detail": "added renamed; removed api"}
    assert list(admin.gateway.config.upstreams) == ["renamed"]
    assert (await admin.proxy.get("/x")).status_code == 200


async def test_post_reload_refuses_an_invalid_file_with_400_and_the_error(admin: Admin) -> None:
    admin.write(server={"port": 1})
    response = await admin.admin.post("/reload", headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {
        "error": "config_invalid",
        "detail": "server.port: cannot change without a restart (0 -> 1)",
    }
    admin.path.write_text("routes: [")
    response = await admin.admin.post("/reload", headers=AUTH)
    assert response.status_code == 400 and "not valid YAML" in response.json()["detail"]
    assert (await admin.proxy.get("/x")).status_code == 200


async def test_a_new_admin_token_applies_on_reload(admin: Admin) -> None:
    admin.write(token="fresh")
    assert (await admin.admin.post("/reload", headers=AUTH)).status_code == 200
    # The listener stays; the token it checks is the running config's.
    assert (await admin.admin.get("/healthz", headers={"authorization": "Bearer fresh"})).status_code == 200
    assert (await admin.admin.get("/healthz", headers=AUTH)).status_code == 401


async def test_metrics_answers_prometheus_text_and_openmetrics_on_accept(admin: Admin) -> None:
    assert (await admin.proxy.get("/x")).status_code == 200
    text = await admin.admin.get("/metrics", headers=AUTH)
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "fastgate_config_last_reload_success_timestamp_seconds" in text.text
    assert 'fastgate_config_reload_total{result="error"} 0.0' in text.text
    open_metrics = await admin.admin.get(
        "/metrics", headers={**AUTH, "accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")


async def test_the_dashboards_static_files_are_served_without_the_token(
    admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>fastgate</title>")
    (static / "dashboard.js").write_text("console.log(1)")
    (static / "dashboard.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("outside")
    monkeypatch.setattr(admin_app.resources, "files", lambda package: tmp_path)  # the package's static/ as built
    gateway = admin.gateway
    app = admin_app.AdminApp(gateway)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin") as client:
        for path, kind in (("/", "text/html"), ("/dashboard.js", "text/javascript"), ("/dashboard.css", "text/css")):
            response = await client.get(path)
            assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert (await client.get("/")).text.startswith("<!doctype html>")
        for path in ("/missing.js", "/../secret.txt", "/..%2Fsecret.txt", "/static/index.html", "/.hidden.css"):
            assert (await client.get(path)).status_code == 404, path
        assert (await client.post("/")).status_code == 405


async def test_upstream_target_errors_count_failed_tries_and_5xx_answers() -> None:

    async with run_server(UpstreamApp(Recorder())) as upstream:
        await _count_errors(upstream.url, REFUSED_PORT)


async def _count_errors(url: str, refused_port: int) -> None:
    config = build_config(
        {
            "upstreams": {
                "good": {"url": url},
                "dead": {"url": f"http://127.0.0.1:{refused_port}", "retries": {"max_retries": 0}},
            },
            "routes": [{"prefix": "/dead", "upstream": "dead"}, {"prefix": "/", "upstream": "good"}],
        }
    )
    gateway = Gateway(config)
    async with run_gateway(gateway) as server, httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for status in (200, 200, 404, 429, 500, 503):
            assert (await client.get(f"/status/{status}")).status_code == status
        for _ in range(2):
            assert (await client.get("/dead")).status_code == 502
        by_name = {entry["name"]: entry["targets"] for entry in admin_app.upstreams(gateway)}
    ((good,), (dead,)) = by_name["good"], by_name["dead"]
    assert (good["requests"], good["errors"]) == (6, 2)  # the 500 and the 503; not the 404 nor the 429
    assert (dead["requests"], dead["errors"]) == (2, 2)  # connect errors
