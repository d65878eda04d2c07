"""One scrape sees every worker's counts: multiprocess mode with real processes (operations issue)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastgate.observability.metrics import MULTIPROC_ENV, metrics_mapping, prepare_multiprocess_dir

# A "worker": counts `n` requests, opens one WebSocket session, marks a target healthy, then waits on stdin
# (alive, as a worker serving traffic) until told to exit, cleanly (close) or not at all (killed).
WORKER = """
import sys
from fastgate.observability.metrics import Metrics
from fastgate.observability.record import ExchangeRecord
metrics = Metrics()
for _ in range(int(sys.argv[1])):
    metrics.observe(ExchangeRecord("0", "api", "10.0.0.1:9000", "GET", "/", status=200, duration_s=0.002))
metrics.upstream_try("api", "10.0.0.1:9000", 200)
metrics.websocket_opened("chat")
metrics.set_health("api", "10.0.0.1:9000", sys.argv[2] == "healthy")
metrics.set_upstream_connections("api", "10.0.0.1:9000", active=1, idle=2)
print("ready", flush=True)
if sys.stdin.readline().strip() == "close":
    metrics.close()
"""
SCRAPE = """
import sys
from fastgate.observability.metrics import Metrics
body, content_type = Metrics().render(sys.argv[1] if len(sys.argv) > 1 else "")
sys.stdout.write(content_type + "\\n" + body.decode())
"""


def _env(directory: Path) -> dict[str, str]:
    return {**os.environ, MULTIPROC_ENV: str(directory)}


def _worker(directory: Path, count: int, health: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(count), health],
        env=_env(directory),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def _scrape(directory: Path, accept: str = "") -> tuple[str, dict[str, float]]:
    result = subprocess.run(
        [sys.executable, "-c", SCRAPE, accept], env=_env(directory), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    content_type, _, body = result.stdout.partition("\n")
    return content_type, metrics_mapping(body) if not accept else {}


def test_one_scrape_aggregates_every_worker(tmp_path: Path) -> None:
    first, second = _worker(tmp_path, 3, "healthy"), _worker(tmp_path, 4, "unhealthy")
    try:
        _, values = _scrape(tmp_path)
        assert values['fastgate_requests_total{code="200",method="GET",route="0",upstream="api"}'] == 7
        assert values['fastgate_request_duration_seconds_count{route="0",upstream="api"}'] == 7
        assert values['fastgate_request_duration_seconds_bucket{le="0.0025",route="0",upstream="api"}'] == 7
        assert values['fastgate_upstream_requests_total{code="200",target="10.0.0.1:9000",upstream="api"}'] == 2
        assert values['fastgate_websocket_sessions{upstream="chat"}'] == 2  # livesum
        assert values['fastgate_upstream_connections{state="idle",target="10.0.0.1:9000",upstream="api"}'] == 4
        assert values['fastgate_health_status{target="10.0.0.1:9000",upstream="api"}'] == 0  # livemin
        assert values["process_resident_memory_bytes"] > 0
        assert values["process_cpu_seconds_total"] > 0

        # A worker that exits cleanly drops its live gauges; its counts stay.
        assert first.stdin is not None
        first.communicate("close\n", timeout=30)
        _, values = _scrape(tmp_path)
        assert values['fastgate_requests_total{code="200",method="GET",route="0",upstream="api"}'] == 7
        assert values['fastgate_websocket_sessions{upstream="chat"}'] == 1

        # A killed worker's live gauges are pruned by the next scrape.
        second.kill()
        second.wait(timeout=30)
        _, values = _scrape(tmp_path)
        assert values['fastgate_requests_total{code="200",method="GET",route="0",upstream="api"}'] == 7
        assert values.get('fastgate_websocket_sessions{upstream="chat"}', 0) == 0
    finally:
        for process in (first, second):
            process.kill()
            process.communicate(timeout=30)  # waits, and closes the pipes


def test_multiprocess_scrape_negotiates_openmetrics(tmp_path: Path) -> None:
    content_type, _ = _scrape(tmp_path, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")


def test_the_manager_prepares_an_empty_directory(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    cleanup = prepare_multiprocess_dir(environ)
    made = Path(environ[MULTIPROC_ENV])
    assert made.is_dir() and not list(made.iterdir())
    cleanup()
    assert not made.exists() and MULTIPROC_ENV not in environ

    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"stale")
    (given / "keep.txt").write_text("not ours")
    environ = {MULTIPROC_ENV: str(given)}
    prepare_multiprocess_dir(environ)()
    assert [path.name for path in given.iterdir()] == ["keep.txt"]  # wiped of *.db, kept
