"""A private redis-server for tests: ``RedisServer().start()``, then ``.url``, ``.stop()``, ``.start()`` again.

It listens on a Unix socket in a fresh temporary directory and on no TCP port (``--port 0``), so there is no port to
race for and a restart comes back at the same address. Nothing is persisted. A missing ``redis-server`` fails the
test with a pointer to scripts/install: these tests are never skipped quietly.

    server = RedisServer(); server.start()      # or the ``redis_server`` fixture in tests/conftest.py
    store = RedisStore(server.url)               # unix:///tmp/fg-redis-xxxx/redis.sock
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

START_TIMEOUT = 10.0


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail("redis-server is not installed; run scripts/install (it installs Debian's redis-server)")
    return path


class RedisServer:
    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="fg-redis-"))  # short: a socket path has ~100 bytes at most
        self.socket_path = self.directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> None:
        """Start redis-server and return once it answers PING (or fail the test after ``START_TIMEOUT``)."""
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket_path),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.stop()
                pytest.fail(f"redis-server did not start within {START_TIMEOUT:g}s; its log:\n{log}")
            time.sleep(0.01)

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and wait until it is gone."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # in case a test paused it
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.socket_path.unlink(missing_ok=True)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers, like a Redis stuck in a slow call."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
