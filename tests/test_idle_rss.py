"""Idle RSS of a real ``fastgate proxy`` process, per worker, after it has answered requests (issue 19).

Measured here with the test's own interpreter (2026-12-07, this venv): one worker ~44 MiB, each of two workers
~47 MiB (prometheus-client's multiprocess mode: +2.3 MiB), their manager ~42 MiB. The bounds leave 3.3-3.7 MiB of room
for another interpreter build or a loaded machine; what a change must not bring back, module by module, is pinned
exactly by tests/test_lazy_imports.py and tests/test_handoff.py. bench/memory.py says what the figure is made of.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.servers import GatewayProcess, RunningServer, fastgate_process, run_server

MIB = 1024 * 1024
ONE_WORKER_BOUND = 48 * MIB
WORKER_OF_SEVERAL_BOUND = 50 * MIB
MANAGER_BOUND = 45 * MIB
READY = "Application startup complete"


async def ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(autouse=True)
def _no_coverage_in_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway starts without coverage's tracer: CI runs the suite under coverage, whose subprocess patch loads
    it into every child process (about +5 MiB each), which is not what a user's gateway carries."""
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)
    monkeypatch.delenv("COVERAGE_RUN", raising=False)


@pytest.fixture
async def upstream() -> Any:
    async with run_server(ok) as server:
        yield server


def _vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _workers(gateway: GatewayProcess) -> list[int]:
    """The manager's worker processes (multiprocessing's resource tracker is not one)."""
    return [pid for pid in gateway.children() if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()]


async def _serve_some(gateway: GatewayProcess, upstream: RunningServer, count: int) -> None:
    # A new connection each: with workers, the kernel spreads them over their listeners.
    for _ in range(count):
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(gateway.url + "/x")
            assert response.status_code == 200, response.text


async def _wait_ready(gateway: GatewayProcess, workers: int) -> None:
    with anyio.fail_after(60):
        while gateway.log().count(READY) < workers:
            assert gateway.process.poll() is None, gateway.log()
            await anyio.sleep(0.05)


def _report(figures: dict[str, int]) -> str:
    return ", ".join(f"{name} {value / MIB:.1f} MiB" for name, value in figures.items())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
@pytest.mark.anyio
async def test_one_worker_idles_within_its_bound(upstream: RunningServer, tmp_path: Path) -> None:
    args = ["--to", upstream.url, "--workers", "1", "--no-access-log"]
    with fastgate_process(args, tmp_path / "gateway.log") as gateway:
        await _wait_ready(gateway, 1)
        await _serve_some(gateway, upstream, 4)
        rss = _vm_rss(gateway.process.pid)
    print(f"\nidle RSS, one worker: {rss / MIB:.1f} MiB")
    assert rss <= ONE_WORKER_BOUND, f"{rss / MIB:.1f} MiB, bound {ONE_WORKER_BOUND / MIB:.0f} MiB"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
@pytest.mark.anyio
async def test_each_of_two_workers_and_their_manager_idle_within_their_bounds(
    upstream: RunningServer, tmp_path: Path
) -> None:
    args = ["--to", upstream.url, "--workers", "2", "--no-access-log"]
    with fastgate_process(args, tmp_path / "gateway.log") as gateway:
        await _wait_ready(gateway, 2)
        await _serve_some(gateway, upstream, 16)
        workers = _workers(gateway)
        assert len(workers) == 2, workers
        figures = {"manager": _vm_rss(gateway.process.pid)}
        figures.update({f"worker {pid}": _vm_rss(pid) for pid in workers})
    print(f"\nidle RSS, two workers: {_report(figures)}")
    assert figures["manager"] <= MANAGER_BOUND, f"{_report(figures)}, manager bound {MANAGER_BOUND / MIB:.0f} MiB"
    del figures["manager"]
    over = {name: rss for name, rss in figures.items() if rss > WORKER_OF_SEVERAL_BOUND}
    assert not over, f"{_report(over)}, bound {WORKER_OF_SEVERAL_BOUND / MIB:.0f} MiB"
