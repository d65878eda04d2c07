"""The ``fastgate`` command, run for real as a subprocess where it matters (issue 2)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner

from fastgate import Gateway, GatewayConfig
from fastgate.cli import main
from tests.servers import RunningServer, _children, fastgate_process, free_port, wait_for_port, wait_until

pytestmark = pytest.mark.anyio


def test_proxy_requires_to() -> None:
    result = CliRunner().invoke(main, ["proxy", "--from", "127.0.0.1:0"])
    assert result.exit_code == 2
    assert "--to" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "ftp://127.0.0.1:9"], "config error: upstreams.default.url: must be an http:// or https:// URL"),
        (["--to", "http://127.0.0.1:9", "--from", "127.0.0.1:99999"], "config error: server.port"),
        (["--to", "http://127.0.0.1:9", "--max-connections", "0"], "upstreams.default.limits.max_connections"),
        (["--to", "http://127.0.0.1:9", "--read-timeout", "-1"], "upstreams.default.timeouts.read"),
    ],
)
def test_bad_config_gets_one_clear_message_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["proxy", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_check_validates_a_config_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("upstreams:\n  api: {url: 'http://127.0.0.1:9000'}\nroutes:\n  - {prefix: /api, upstream: api}\n")
    result = CliRunner().invoke(main, ["check", str(good)])
    assert result.exit_code == 0, result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams:\n  api: {url: 'http://127.0.0.1:9000'}\nroutes:\n  - {prefix: /api, upstream: nope}\n")
    result = CliRunner().invoke(main, ["check", str(bad)])
    assert result.exit_code == 2
    assert "routes[0].upstream: unknown upstream 'nope'" in result.output


def test_python_dash_m_fastgate_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "fastgate", "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "fastgate" in result.stdout


def test_port_in_use_exits_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "fastgate", "proxy", "--from", f"127.0.0.1:{port}", "--to", "http://127.0.0.1:9"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 3
    assert "address already in use" in result.stderr.lower()


async def test_access_log_line_has_method_path_status_bytes_duration_upstream_and_request_id(
    upstream: RunningServer, tmp_path: Path
) -> None:
    with fastgate_process(["--to", upstream.url], tmp_path / "log") as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            response = await client.get("/big?size=1234", headers={"x-request-id": "rid-42"})
        assert response.status_code == 200
        await anyio.sleep(0.2)
        lines = [line for line in gw.log().splitlines() if "rid-42" in line]
    assert len(lines) == 1
    line = lines[0]
    assert '"GET /big?size=1234 HTTP/1.1" 200 1234 ' in line
    assert "ms upstream=default request_id=rid-42" in line


async def test_no_access_log(upstream: RunningServer, tmp_path: Path) -> None:
    with fastgate_process(["--to", upstream.url, "--no-access-log"], tmp_path / "log") as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            assert (await client.get("/", headers={"x-request-id": "rid-43"})).status_code == 200
        await anyio.sleep(0.2)
        assert "rid-43" not in gw.log()


async def test_log_level_trace_shows_upstream_connect_reuse_and_close(upstream: RunningServer, tmp_path: Path) -> None:
    args = ["--to", upstream.url, "--log-level", "trace", "--keepalive-expiry", "0.3"]
    with fastgate_process(args, tmp_path / "log") as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            for _ in range(2):
                assert (await client.get("/")).status_code == 200
        await anyio.sleep(0.8)
        log = gw.log()
    assert "fastgate.upstream: default: connected" in log
    assert "fastgate.upstream: default: reusing" in log
    assert "fastgate.upstream: default: closing" in log


LOG_DICT = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "CUSTOM %(name)s %(message)s"}},
    "handlers": {"file": {"class": "logging.FileHandler", "filename": "__FILE__", "formatter": "plain"}},
    "loggers": {"fastgate": {"handlers": ["file"], "level": "INFO", "propagate": False}},
}

LOG_INI = """\
[loggers]
keys=root,fastgate

[handlers]
keys=file

[formatters]
keys=plain

[logger_root]
level=WARNING
handlers=

[logger_fastgate]
level=INFO
handlers=file
qualname=fastgate
propagate=0

[handler_file]
class=FileHandler
formatter=plain
args=('__FILE__',)

[formatter_plain]
format=CUSTOM %(name)s %(message)s
"""


@pytest.mark.parametrize("form", ["json", "yaml", "ini"])
async def test_log_config_accepts_json_yaml_and_ini(upstream: RunningServer, tmp_path: Path, form: str) -> None:
    import yaml

    out = tmp_path / "fastgate.log"
    config = tmp_path / f"logging.{form}"
    text = {
        "json": json.dumps(LOG_DICT),
        "yaml": yaml.safe_dump(LOG_DICT),
        "ini": LOG_INI,
    }[form].replace("__FILE__", str(out))
    config.write_text(text)
    with fastgate_process(["--to", upstream.url, "--log-config", str(config)], tmp_path / "stdout") as gw:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            assert (await client.get("/", headers={"x-request-id": f"rid-{form}"})).status_code == 200
        await anyio.sleep(0.2)
    assert "CUSTOM fastgate.access 127.0.0.1" in out.read_text()
    assert f"request_id=rid-{form}" in out.read_text()


def _workers(pid: int) -> list[int]:
    """Uvicorn's worker processes (spawned children), not multiprocessing's resource tracker."""
    return [c for c in _children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


async def test_workers_run_under_uvicorns_process_manager_and_a_killed_worker_is_replaced(
    upstream: RunningServer, tmp_path: Path
) -> None:
    with fastgate_process(["--to", upstream.url, "--workers", "2"], tmp_path / "log") as gw:
        await wait_until(lambda: len(_workers(gw.process.pid)) == 2, limit=20, interval=0.1)
        workers = _workers(gw.process.pid)
        async with httpx.AsyncClient(base_url=gw.url) as client:
            assert (await client.get("/")).status_code == 200
        victim = workers[-1]
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            current = _workers(gw.process.pid)
            return victim not in current and len(current) == 2

        await wait_until(replaced, limit=20, interval=0.1)
        async with httpx.AsyncClient(base_url=gw.url) as client:
            for _ in range(10):
                assert (await client.get("/")).status_code == 200


async def test_sigterm_drains_in_flight_requests_and_refuses_new_connections(
    upstream: RunningServer, tmp_path: Path
) -> None:
    with fastgate_process(["--to", upstream.url, "--graceful-timeout", "10"], tmp_path / "log") as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client, anyio.create_task_group() as tg:
            results: list[int] = []

            async def slow() -> None:
                results.append((await client.get("/slow?delay=1")).status_code)

            tg.start_soon(slow)
            await anyio.sleep(0.3)
            gw.process.send_signal(signal.SIGTERM)
            await anyio.sleep(0.2)
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
        assert results == [200]
        # uvicorn re-raises the captured SIGTERM once shutdown is complete
        assert gw.process.wait(10) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in gw.log()
    assert "Traceback" not in gw.log()


def _open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # the directory listing's own descriptor, closed by now
            pass
    return count


def test_building_a_gateway_opens_no_connection() -> None:
    # Pools belong to the lifespan (tests/test_app.py opens and closes them there): a Gateway built at import time,
    # as an app factory or a module-level ``app = Gateway(...)`` does, holds no socket.
    before = _open_sockets()
    gateway = Gateway(GatewayConfig.single("http://127.0.0.1:9"))
    assert _open_sockets() == before
    assert gateway.transports == {}


async def test_gateway_process_serves_example_upstream(tmp_path: Path) -> None:
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "examples/upstream.py", "--port", str(port)], cwd=Path(__file__).parent.parent
    )
    try:
        wait_for_port(port, process=upstream)
        with fastgate_process(["--to", f"http://127.0.0.1:{port}"], tmp_path / "log") as gw:
            async with httpx.AsyncClient(base_url=gw.url) as client:
                response = await client.post("/echo", content=b"hi")
                assert response.json()["body"] == "hi"
                started = time.monotonic()
                async with client.stream("GET", "/stream") as stream:
                    first = await stream.aiter_raw().__anext__()
                assert first.startswith(b"data: event 0") and time.monotonic() - started < 0.5
    finally:
        upstream.terminate()
        upstream.wait(10)


async def test_run_serves_routes_from_a_config_file(upstream: RunningServer, recorder: object, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"server: {{port: {port}, access_log: false}}\n"
        f"upstreams:\n  api: {{url: '{upstream.url}'}}\n"
        "routes:\n  - {prefix: /api, upstream: api, strip_prefix: true}\n"
    )
    log = (tmp_path / "log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "fastgate", "run", str(config)], stdout=log, stderr=log)
    try:
        wait_for_port(port, process=process)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            response = await client.get("/api/echo?x=1")
            assert response.status_code == 200
            assert response.json()["raw_path"] == "/echo"
            missing = await client.get("/other")
            assert missing.status_code == 404
            assert missing.json()["error"] == "route_not_found"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_check_warns_about_routes_that_can_never_match_and_exits_0(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        """
upstreams: {api: {url: 'http://127.0.0.1:9000'}}
routes:
  - {prefix: /, upstream: api}
  - {prefix: /api, upstream: api}
  - {prefix: /api/v1, upstream: api, headers: {x-version: "2"}, priority: -1}
  - {prefix: /admin, upstream: api, methods: []}
  - {regex: "^api/", upstream: api}
  - {path: /health, upstream: api}
"""
    )
    result = CliRunner().invoke(main, ["check", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{config}: ok (1 upstreams, 6 routes)\n"
    lines = result.stderr.splitlines()
    assert lines == [
        "warning: routes[2]: can never match: shadowed by routes[1] (which matches every request this one matches"
        " and wins: priority 0 > -1)",
        "warning: routes[3]: can never match: its methods list is empty",
        "warning: routes[4]: can never match: regex '^api/' cannot match a path, which starts with '/'",
    ]


@pytest.mark.parametrize(
    ("upstream", "route", "message"),
    [
        ("{url: 'http://127.0.0.1:9000'}", "{regex: '^/(v1', upstream: api}", "routes[0].regex: does not compile"),
        (
            "{url: 'http://127.0.0.1:9000', balancer: fastest}",
            "{upstream: api}",
            "upstreams.api.balancer: Input should",
        ),
        (
            "{targets: [{url: 'http://127.0.0.1:9000'}, {url: 'http://127.0.0.1:9001', weight: -2}]}",
            "{upstream: api}",
            "upstreams.api.targets[1].weight: Input should be greater than or equal to 1",
        ),
        (
            "{url: 'http://127.0.0.1:9000'}",
            "{upstream: api, plugins: [rc_missing_mod:Check]}",
            "routes[0].plugins[0].use: cannot import",
        ),
        (
            "{url: 'http://127.0.0.1:9000'}",
            "{upstream: api, plugins: [{use: rewrite, options: {nope: 1}}]}",
            "routes[0].plugins[0].options: rewrite did not accept them",
        ),
    ],
)
def test_check_exits_2_on_traffic_config_errors(tmp_path: Path, upstream: str, route: str, message: str) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(f"upstreams:\n  api: {upstream}\nroutes:\n  - {route}\n")
    result = CliRunner().invoke(main, ["check", str(config)])
    assert result.exit_code == 2
    assert f"config error: {message}" in result.stderr
    assert "Traceback" not in result.output


def test_check_imports_plugins_from_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rc_cwd_plugin.py").write_text("class Check:\n    pass\n")
    (tmp_path / "gw.yaml").write_text(
        "upstreams: {api: {url: 'http://127.0.0.1:9000'}}\n"
        "routes: [{upstream: api, plugins: [{use: 'rc_cwd_plugin:Check'}]}]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    result = CliRunner().invoke(main, ["check", "gw.yaml"])
    assert result.exit_code == 0, result.output
