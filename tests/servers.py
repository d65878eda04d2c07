"""Real servers on 127.0.0.1 for tests: uvicorn on a socket we bind to port 0 (no port races)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import uvicorn

from fastgate._protocol import FastgateHttpProtocol
from fastgate._types import ASGIApp, Message, Receive, Scope, Send
from fastgate._ws_protocol import FastgateWebSocketProtocol


async def answer_lifespan(receive: Any, send: Any) -> None:
    """Answer an ASGI lifespan conversation: startup complete, then shutdown complete (for the tests' small apps)."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


def bind_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@dataclass
class RunningServer:
    host: str
    port: int
    server: uvicorn.Server
    app: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def run_server(app: ASGIApp, *, http: Any = "httptools", **options: Any) -> AsyncIterator[RunningServer]:
    """Serve ``app`` with uvicorn in the current event loop for the duration of the block."""
    sock = bind_socket()
    options.setdefault("log_level", "warning")
    options.setdefault("lifespan", "auto")
    config = uvicorn.Config(app, http=http, **options)
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn exposes only a flag
                await anyio.sleep(0.005)
        try:
            yield RunningServer("127.0.0.1", sock.getsockname()[1], server, app)
        finally:
            # Shut down directly rather than waiting for uvicorn's 0.1 s main-loop tick to notice should_exit.
            with anyio.CancelScope(shield=True), anyio.fail_after(10):
                await server.shutdown()
            tg.cancel_scope.cancel()
    sock.close()


@contextlib.asynccontextmanager
async def run_gateway(
    app: ASGIApp, *, http: Any = FastgateHttpProtocol, ws: Any = FastgateWebSocketProtocol, **options: Any
) -> AsyncIterator[RunningServer]:
    """Serve a gateway the way ``fastgate.server`` does (no proxy headers, fastgate's own protocols)."""
    options.setdefault("lifespan", "on")
    options.setdefault("proxy_headers", False)
    options.setdefault("server_header", False)
    options.setdefault("date_header", False)
    options.setdefault("access_log", False)
    options.setdefault("ws_per_message_deflate", False)  # ServerConfig's default, unlike Uvicorn's
    async with run_server(app, http=http, ws=ws, **options) as server:
        yield server


async def wait_until(predicate: Any, limit: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate()`` until it is true (state that offers no event to wait on), at most ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await anyio.sleep(interval)


class Spec24:
    """Present ``app`` as running on an ASGI spec 2.4 server: ``send`` after a disconnect raises OSError."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["asgi"] = {**scope.get("asgi", {}), "spec_version": "2.4"}
        gone = False

        async def wrapped_receive() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def wrapped_send(message: Message) -> None:
            if gone:
                raise OSError("client disconnected")
            await send(message)

        await self.app(scope, wrapped_receive, wrapped_send)


def free_port() -> int:
    """A port for a child process that binds it by number (fastgate's CLI, an example script).

    In-process servers get a socket bound to port 0 instead (``bind_socket``): no race at all. For a child process
    the port is closed here and bound there, a window another process on this loopback would have to hit.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# A port whose connections are refused: bound but never listening, and held for the whole run, so nothing else can
# take it meanwhile (a port found free and closed again could be anybody's by the time it is dialled).
_REFUSING = socket.socket()
_REFUSING.bind(("127.0.0.1", 0))
REFUSED_PORT: int = _REFUSING.getsockname()[1]


# Every server path the project supports, for tests that must hold on each: fastgate's own protocol (a disconnect
# callback), and stock Uvicorn's two (a watcher task), each also as an ASGI spec 2.4 server (send raises once the
# client is gone).
SERVER_PATHS: dict[str, tuple[Any, bool]] = {
    "fastgate-protocol": (FastgateHttpProtocol, False),
    "httptools": ("httptools", False),
    "httptools-spec-2.4": ("httptools", True),
    "h11": ("h11", False),
    "h11-spec-2.4": ("h11", True),
}


class LogCapture(logging.Handler):
    """Keeps the records a logger receives at ``level`` and above (Uvicorn's logging config stops them short of
    pytest's own capture). Attach it once the servers run: starting one reconfigures logging."""

    def __init__(self, level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def captured_logs(name: str, level: int = logging.DEBUG) -> Iterator[LogCapture]:
    handler = LogCapture(level)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@dataclass
class GatewayProcess:
    """``fastgate proxy`` running as a real subprocess; its stdout+stderr go to ``log_path``."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self, include_children: bool = True) -> int:
        pids = [self.process.pid]
        if include_children:
            pids += self.children()
        total = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def children(self) -> list[int]:
        """The process ids of its children and theirs (``--workers N``: the workers, multiprocessing's tracker)."""
        return _children(self.process.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            found.append(int(child))
            found += _children(int(child))
    return found


def wait_for_port(port: int, timeout: float = 15.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def fastgate_process(
    args: list[str], log_path: Path, *, port: int | None = None, wait: bool = True
) -> Iterator[GatewayProcess]:
    """Start ``python -m fastgate proxy --from 127.0.0.1:PORT ARGS...`` and stop it (SIGTERM) afterwards."""
    port = port or free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fastgate", "proxy", "--from", f"127.0.0.1:{port}", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    running = GatewayProcess(process, port, log_path)
    try:
        if wait:
            wait_for_port(port, process=process)
        yield running
    finally:
        running.stop()
