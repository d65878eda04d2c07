"""A worker imports an optional dependency only when a feature that needs it is configured (issue 12, memory).

Each check runs in a fresh interpreter: it builds the app the way a worker does (``fastgate.server.create_app`` from
the config in the environment), runs its lifespan and one proxied request through it, and lists the packages it
has imported. bench/memory.py measures what each of the remaining imports costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from fastgate import GatewayConfig
from fastgate.handoff import CONFIG_PICKLE_ENV, export_validated
from fastgate.reloading import ConfigSource
from fastgate.server import CONFIG_ENV

# Needed only by a feature: tracing exporters, `transport: httpx`, a redis store, the jwt plugin.
OPTIONAL_PACKAGES = ("opentelemetry", "httpx", "redis", "jwt")

WORKER = """
import asyncio, json, sys
from fastgate.server import create_app

async def main():
    app = create_app()
    lifespan = asyncio.Queue()
    await lifespan.put({"type": "lifespan.startup"})
    sent = []

    async def lifespan_send(message):
        sent.append(message)
        if message["type"].startswith("lifespan.startup"):
            await lifespan.put({"type": "lifespan.shutdown"})

    running = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                        lifespan.get, lifespan_send))
    while not any(m["type"].startswith("lifespan.startup") for m in sent):
        await asyncio.sleep(0.01)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/x", "raw_path": b"/x", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"gw")], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
             "state": {}}
    statuses = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await asyncio.wait_for(app(scope, receive, send), 30)
    await asyncio.wait_for(running, 30)
    return statuses

statuses = asyncio.run(main())
import pydantic, fastgate.config as models
built = sorted(name for name, model in vars(models).items()
               if isinstance(model, type) and issubclass(model, pydantic.BaseModel) and model.__pydantic_complete__)
print(json.dumps({"statuses": statuses, "modules": sorted({m.split(".")[0] for m in sys.modules}), "built": built,
                  "ws_client": "websockets.asyncio.client" in sys.modules,
                  "fastgate": sorted(m for m in sys.modules if m.startswith("fastgate."))}))
"""


def worker_modules(
    config: GatewayConfig, source: ConfigSource | None = None, digest: str | None = None
) -> tuple[list[int], set[str]]:
    out = run_worker(config, source, digest)
    return out["statuses"], set(out["modules"])


def run_worker(
    config: GatewayConfig,
    source: ConfigSource | None = None,
    digest: str | None = None,
    handoff: bool = False,
) -> dict[str, Any]:
    """What a worker did: ``statuses`` of one request to ``/x``, the top-level packages it imported (``modules``),
    the config models whose validators it built (``built``), whether it loaded the WebSocket client, and the
    modules of fastgate it imported (``fastgate``).

    ``source`` and ``digest``: the worker was started by ``fastgate run FILE``, whose manager loaded ``config`` from
    the file when it had that digest. ``handoff``: the manager exports its validated ``config`` as with
    ``--workers N``.
    """
    env = {**os.environ, CONFIG_ENV: config.model_dump_json()}
    env.pop(CONFIG_PICKLE_ENV, None)
    if source is not None:
        source.export(env, digest)
    remove = export_validated(config, env) if handoff else None
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    try:
        res = subprocess.run(
            [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        if remove is not None:
            remove()
    assert res.returncode == 0, res.stderr[-2000:]
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def test_a_worker_without_optional_features_imports_no_optional_package() -> None:
    # Port 9 (discard) is closed on test machines: the request is answered with a 502 by the gateway itself.
    statuses, modules = worker_modules(GatewayConfig.single("http://127.0.0.1:9"))
    assert statuses and statuses[0] in (502, 503, 504)
    assert modules.isdisjoint(OPTIONAL_PACKAGES), sorted(modules & set(OPTIONAL_PACKAGES))


def test_a_worker_given_its_config_never_imports_yaml() -> None:
    _, modules = worker_modules(GatewayConfig.single("http://127.0.0.1:9"))
    assert "yaml" not in modules


def test_a_worker_of_an_unchanged_config_file_takes_the_managers_config_without_parsing_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    config = GatewayConfig.single("http://127.0.0.1:9")
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    source = ConfigSource(path, {})
    statuses, modules = worker_modules(config, source, source.digest())
    assert statuses and statuses[0] in (502, 503, 504)
    assert "yaml" not in modules


def test_a_worker_of_a_config_file_changed_since_the_manager_read_it_serves_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    started = GatewayConfig.single("http://127.0.0.1:9")
    path.write_text(yaml.safe_dump(started.model_dump(mode="json")))
    source = ConfigSource(path, {})
    digest = source.digest()
    changed = started.model_dump(mode="json")
    changed["routes"] = [{"prefix": "/elsewhere", "upstream": "default"}]
    path.write_text(yaml.safe_dump(changed))
    statuses, modules = worker_modules(started, source, digest)
    assert statuses == [404]  # the file's routes: /x matches none (the manager's config would answer 502)
    assert "yaml" in modules


def test_a_worker_handed_the_managers_validated_config_builds_no_config_validator() -> None:
    out = run_worker(GatewayConfig.single("http://127.0.0.1:9"), handoff=True)
    assert out["statuses"] and out["statuses"][0] in (502, 503, 504)
    assert out["built"] == []


def test_a_worker_without_the_handoff_validates_the_json_config() -> None:
    assert "GatewayConfig" in run_worker(GatewayConfig.single("http://127.0.0.1:9"))["built"]


def test_a_worker_that_proxied_no_websocket_has_not_imported_the_websocket_client() -> None:
    assert run_worker(GatewayConfig.single("http://127.0.0.1:9"))["ws_client"] is False


def test_a_worker_that_proxied_no_websocket_has_not_imported_websockets_at_all() -> None:
    # The server side too: Uvicorn's ws_protocol_class is fastgate.server.websocket_protocol, which imports
    # fastgate._ws_protocol (and websockets, importlib.metadata, zipfile with it) on the first upgrade (~1.2 MB).
    _, modules = worker_modules(GatewayConfig.single("http://127.0.0.1:9"))
    assert "websockets" not in modules


def test_a_worker_never_scraped_has_not_imported_prometheus_client() -> None:
    # Metrics are on by default; in a single process their families are plain numbers (local_metrics.py) and
    # prometheus-client, with the HTTP exposition server its package imports, loads at the first scrape (~2.8 MB).
    config = GatewayConfig.single("http://127.0.0.1:9")
    assert config.metrics.enabled
    _, modules = worker_modules(config)
    assert "prometheus_client" not in modules


def test_a_worker_without_an_admin_listener_has_not_imported_the_admin_package() -> None:
    out = run_worker(GatewayConfig.single("http://127.0.0.1:9"))
    assert not [name for name in out["fastgate"] if name.startswith("fastgate.admin")]
