"""``--workers N``: one SO_REUSEPORT listener per worker, so a burst of new connections is shared (issue 17 item 15).

The distribution is measured through a real ``fastgate run --workers 2`` process on ``port: 0`` (the manager picks the
port once; both workers listen on it). Each access line names the worker that wrote it: the test's log config puts
logging's ``%(process)d`` in front of the access format (any ``server.log_config`` can).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest

from fastgate.observability.logging import LOGGING_CONFIG
from fastgate.serving.listeners import balanced_reuse_port, worker_listeners
from tests.reload_support import gateway_config, write_config
from tests.servers import GatewayProcess, RunningServer, run_server

REQUESTS = 1000
CONCURRENCY = 16
MAX_SHARE = 0.70
RUNNING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
ACCESS = re.compile(r"^(\d+) .*\"GET /spread/(\d+) HTTP/1\.1\" 200", re.MULTILINE)
BURST_ACCESS = re.compile(r"^(\d+) .*\"GET /burst/(\d+) HTTP/1\.1\" 200", re.MULTILINE)
BURSTS, BURST_SIZE = 5, 100

needs_reuse_port = pytest.mark.skipif(not balanced_reuse_port(), reason="SO_REUSEPORT balancing is Linux's")


async def ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _log_config(path: Path) -> Path:
    """fastgate's logging configuration, with the writing process's id in front of each access line."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["access"] = {"format": "%(process)d %(message)s"}
    config["handlers"]["access"] = {
        "formatter": "access",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
    }
    path.write_text(json.dumps(config))
    return path


def _wait_for(
    log: Any, pattern: re.Pattern[str], count: int, process: subprocess.Popen[bytes], limit: float
) -> list[Any]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = pattern.findall(log())
        if len(found) >= count:
            return found
        if process.poll() is not None:
            raise AssertionError(f"fastgate exited with {process.returncode}:\n{log()}")
        time.sleep(0.05)
    raise AssertionError(f"{count} x {pattern.pattern!r} not in the log after {limit}s:\n{log()}")


@contextlib.contextmanager
def fastgate_run_port_zero(config_file: Path, log_path: Path, workers: int) -> Iterator[GatewayProcess]:
    """``fastgate run CONFIG --workers N`` on ``server.port: 0``: the port is read from the manager's log line, and
    the block starts once every worker has started."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fastgate", "run", str(config_file), "--workers", str(workers)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    running = GatewayProcess(process, 0, log_path)
    try:
        (port,) = _wait_for(running.log, RUNNING, 1, process, 30)
        _wait_for(running.log, re.compile("Application startup complete"), workers, process, 60)
        running.port = int(port)
        yield running
    finally:
        running.stop()


@pytest.fixture
async def upstream() -> Any:
    async with run_server(ok) as server:
        yield server


@needs_reuse_port
@pytest.mark.anyio
async def test_two_workers_share_a_burst_of_new_connections(upstream: RunningServer, tmp_path: Path) -> None:
    """1,000 requests on fresh connections, 16 at a time: neither worker serves more than 70% of them."""
    path = tmp_path / "gateway.yaml"
    data = gateway_config({"api": upstream.url}, [{"upstream": "api"}], port=0)
    data["server"].update(access_log=True, log_config=str(_log_config(tmp_path / "logging.json")))
    write_config(path, data)
    with fastgate_run_port_zero(path, tmp_path / "gateway.log", workers=2) as gateway:
        per_worker = await _spread(gateway, 0, REQUESTS)
        # Bursts: 100 connections opened at once, queued before a worker accepts them, then a request on each.
        with anyio.fail_after(120):
            for burst in range(BURSTS):
                await _burst(gateway.port, burst * BURST_SIZE, BURST_SIZE)
        bursts = _wait_for(gateway.log, BURST_ACCESS, BURSTS * BURST_SIZE, gateway.process, 30)
    burst_per_worker = collections.Counter(pid for pid, _ in bursts)
    # The figures the issue asks for (pytest -s shows them).
    print(f"requests per worker: {dict(per_worker)}; in bursts of {BURST_SIZE}: {dict(burst_per_worker)}")
    assert sum(per_worker.values()) == REQUESTS and len(per_worker) == 2, per_worker
    assert max(per_worker.values()) <= MAX_SHARE * REQUESTS, per_worker
    assert max(burst_per_worker.values()) <= MAX_SHARE * BURSTS * BURST_SIZE, burst_per_worker


async def _burst(port: int, first: int, size: int) -> None:
    streams = []
    try:
        for _ in range(size):
            streams.append(await anyio.connect_tcp("127.0.0.1", port))
        async with anyio.create_task_group() as group:
            for offset, stream in enumerate(streams):
                group.start_soon(_exchange, stream, first + offset)
    finally:
        for stream in streams:
            await stream.aclose()


async def _exchange(stream: anyio.abc.SocketStream, index: int) -> None:
    await stream.send(f"GET /burst/{index} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode())
    answer = b""
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            answer += await stream.receive()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]


@needs_reuse_port
def test_worker_listeners_on_port_zero_share_the_port_the_first_bind_picked() -> None:
    sockets = worker_listeners("127.0.0.1", 0, workers=3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1 and ports != {0}
        for sock in sockets:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            sock.listen(512)
        (port,) = ports
        # Every listener takes a share of new connections (the kernel hashes each connection's addresses).
        served: collections.Counter[int] = collections.Counter()
        for sock in sockets:
            sock.setblocking(False)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(150)]
        try:
            for index, sock in enumerate(sockets):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        conn, _ = sock.accept()
                        conn.close()
                        served[index] += 1
        finally:
            for client in clients:
                client.close()
        assert sum(served.values()) == 150
        assert len(served) == 3 and max(served.values()) < 100, served
    finally:
        for sock in sockets:
            sock.close()


@needs_reuse_port
def test_a_port_in_use_fails_the_start_with_one_line_and_exit_3(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "gateway.yaml"
        write_config(path, gateway_config({"api": "http://127.0.0.1:9"}, [{"upstream": "api"}], port=port))
        result = subprocess.run(
            [sys.executable, "-m", "fastgate", "run", str(path), "--workers", "2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Address already in use" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


STARTED = re.compile(r"Started server process \[(\d+)\]")
READY = re.compile("Application startup complete")


async def _spread(gateway: GatewayProcess, first: int, count: int) -> collections.Counter[str]:
    """``count`` requests on fresh connections, 16 at a time; the requests each worker served."""
    indexes = iter(range(first, first + count))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for index in indexes:
            assert (await client.get(f"/spread/{index}", headers={"connection": "close"})).status_code == 200

    fresh = httpx.Limits(max_keepalive_connections=0)
    with anyio.fail_after(60):
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=10, limits=fresh) as client,
            anyio.create_task_group() as group,
        ):
            for _ in range(CONCURRENCY):
                group.start_soon(client_loop, client)
    lines = _wait_for(gateway.log, ACCESS, first + count, gateway.process, 30)
    return collections.Counter(pid for pid, index in lines if int(index) >= first)


@needs_reuse_port
@pytest.mark.anyio
async def test_a_replaced_or_added_worker_listens_on_a_socket_of_its_own(
    upstream: RunningServer, tmp_path: Path
) -> None:
    """A killed worker's replacement takes over its listener (what the kernel queued there is served, not lost);
    a worker added by SIGTTIN gets a new listener on the same port."""
    path = tmp_path / "gateway.yaml"
    data = gateway_config({"api": upstream.url}, [{"upstream": "api"}], port=0)
    data["server"].update(access_log=True, log_config=str(_log_config(tmp_path / "logging.json")))
    write_config(path, data)
    with fastgate_run_port_zero(path, tmp_path / "gateway.log", workers=2) as gateway:
        first, second = _wait_for(gateway.log, STARTED, 2, gateway.process, 10)
        os.kill(int(second), signal.SIGKILL)
        _wait_for(gateway.log, READY, 3, gateway.process, 60)
        replacement = _wait_for(gateway.log, STARTED, 3, gateway.process, 10)[2]
        served = await _spread(gateway, 0, 200)
        assert set(served) == {first, replacement}, served
        assert min(served.values()) >= 40, served

        os.kill(gateway.process.pid, signal.SIGTTIN)
        _wait_for(gateway.log, READY, 4, gateway.process, 60)
        added = _wait_for(gateway.log, STARTED, 4, gateway.process, 10)[3]
        served = await _spread(gateway, 200, 300)
        assert set(served) == {first, replacement, added}, served
        assert min(served.values()) >= 45, served


def test_where_reuse_port_does_not_balance_workers_share_one_socket_and_bound_their_accept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn

    from fastgate import server
    from fastgate.serving import accept, listeners

    monkeypatch.setattr(listeners, "balanced_reuse_port", lambda: False)
    monkeypatch.setenv(listeners.SHARED_LISTENER_ENV, "")  # so that the test ends with it unset again
    config = uvicorn.Config(ok, host="127.0.0.1", port=0, workers=2)
    sockets, own = server._worker_sockets(config)
    try:
        assert len(sockets) == 1 and not own
        assert sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        assert os.environ[listeners.SHARED_LISTENER_ENV] == "1"  # inherited by the workers
        loop = accept.new_event_loop()
        try:
            assert isinstance(loop, accept.GreedyAcceptLoop) and loop.accept_batch == listeners.SHARED_ACCEPT_BATCH
        finally:
            loop.close()
    finally:
        for sock in sockets:
            sock.close()
    del os.environ[listeners.SHARED_LISTENER_ENV]
    loop = accept.new_event_loop()
    try:
        assert isinstance(loop, accept.GreedyAcceptLoop) and loop.accept_batch == accept.BATCH  # one process: all
    finally:
        loop.close()
