"""One scrape sees every worker's counts: multiprocess mode with real processes (operations issue)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from fastgate.observability.metrics import MULTIPROC_ENV, metrics_mapping, prepare_multiprocess_dir
from tests.servers import RunningServer, fastgate_process

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


REQUESTS = 'fastgate_requests_total{code="200",method="GET",route="0",upstream="default"}'
# The count in the whole directory (one scrape), then each worker's own: its *_<pid>.db files alone, scraped.
SPLIT_SCRAPE = """
import json, shutil, sys, tempfile
from pathlib import Path
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from fastgate.observability.metrics import Metrics, metrics_mapping

def count(text):
    return metrics_mapping(text).get(sys.argv[2], 0)

directory = Path(sys.argv[1])
counts = {"all": count(Metrics(process_metrics=False).render()[0].decode())}
for pid in {file.stem.rpartition("_")[2] for file in directory.glob("*.db")}:
    with tempfile.TemporaryDirectory() as alone:
        for file in directory.glob(f"*_{pid}.db"):
            shutil.copyfile(file, Path(alone) / file.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, alone)
        counts[pid] = count(generate_latest(registry).decode())
print(json.dumps(counts))
"""


def _counts(directory: Path) -> dict[str, float]:
    """``{"all": n, "<pid>": n, ...}``: what one scrape sees, and what each worker counted."""
    result = subprocess.run(
        [sys.executable, "-c", SPLIT_SCRAPE, str(directory), REQUESTS],
        env=_env(directory),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    counts: dict[str, float] = json.loads(result.stdout)
    return counts


@pytest.mark.anyio
async def test_one_scrape_sees_both_workers_of_a_gateway_run_with_two_workers(
    upstream: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"stale")  # the manager empties a given directory
    monkeypatch.setenv(MULTIPROC_ENV, str(directory))  # inherited by the gateway process only (read there)
    args = ["--to", upstream.url, "--workers", "2", "--no-access-log"]
    with fastgate_process(args, tmp_path / "gateway.log") as gateway:
        sent = 0
        counts: dict[str, float] = {}

        async def one(client: httpx.AsyncClient) -> None:
            nonlocal sent
            assert (await client.get("/echo")).status_code == 200
            sent += 1

        # New connections, 16 at a time, until both workers have served some (bounded: 20 rounds, 60 s). A request
        # is counted just after its last byte went out: poll until the count has caught up.
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        with anyio.fail_after(60):
            async with httpx.AsyncClient(base_url=gateway.url, timeout=10, limits=no_keepalive) as client:
                for _ in range(20):
                    async with anyio.create_task_group() as group:
                        for _ in range(16):
                            group.start_soon(one, client)
                    while (counts := _counts(directory))["all"] != sent:  # noqa: ASYNC110 - files, no event
                        await anyio.sleep(0.1)
                    if sum(1 for pid, count in counts.items() if pid != "all" and count) >= 2:
                        break
        assert not (directory / "counter_999999.db").exists()
        workers = {pid: count for pid, count in counts.items() if pid != "all"}
        assert sorted(workers.values())[-2] > 0, counts  # both workers served requests...
        assert counts["all"] == sum(workers.values()) == sent  # ...and one scrape sums them
