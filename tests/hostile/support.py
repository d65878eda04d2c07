"""Helpers for the hostile-client suites: an upstream that records every byte, a byte-exact client, process stats."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httptools

from tests.rawhttp import RawResponse, dechunk
from tests.servers import GatewayProcess, free_port, wait_for_port

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-type: text/plain\r\n\r\nok"


@dataclass
class UpstreamRequest:
    method: bytes
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]


@dataclass
class UpstreamConnection:
    data: bytearray = field(default_factory=bytearray)
    requests: list[UpstreamRequest] = field(default_factory=list)
    error: str = ""
    closed: anyio.Event = field(default_factory=anyio.Event)


class _RequestParser:
    """httptools callbacks collecting whole requests on one upstream connection."""

    def __init__(self, connection: UpstreamConnection) -> None:
        self.connection = connection
        self.parser = httptools.HttpRequestParser(self)
        self.current: UpstreamRequest | None = None
        self.complete = 0

    def on_message_begin(self) -> None:
        self.current = UpstreamRequest(b"", b"", "", [])

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method()
        self.current.version = self.parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.connection.requests.append(self.current)
        self.current = None
        self.complete += 1


class RecordingUpstream:
    """A raw HTTP/1.1 upstream on 127.0.0.1 that keeps every byte of every connection and answers each request
    ``200 ok``. ``connections`` is what the tests assert on: nothing at all for a request the gateway refused."""

    def __init__(self) -> None:
        self.connections: list[UpstreamConnection] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def received(self) -> bytes:
        return b"".join(bytes(c.data) for c in self.connections)

    @property
    def requests(self) -> list[UpstreamRequest]:
        return [r for c in self.connections for r in c.requests]

    async def _serve(self, stream: anyio.abc.SocketStream) -> None:
        connection = UpstreamConnection()
        self.connections.append(connection)
        parser = _RequestParser(connection)
        async with stream:
            try:
                await self._relay(stream, connection, parser)
            finally:
                connection.closed.set()

    async def wait_closed(self, limit: float = 5) -> None:
        """Wait until every connection the gateway opened has been closed and read to its end."""
        with anyio.fail_after(limit):
            for connection in list(self.connections):
                await connection.closed.wait()

    @staticmethod
    async def _relay(stream: anyio.abc.SocketStream, connection: UpstreamConnection, parser: _RequestParser) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            while True:
                data = await stream.receive()
                connection.data += data
                before = parser.complete
                try:
                    parser.parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    connection.error = str(exc)
                    await stream.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                for _ in range(parser.complete - before):
                    await stream.send(OK)


@contextlib.asynccontextmanager
async def recording_upstream() -> AsyncIterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    upstream.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, upstream._serve)
        yield upstream
        tg.cancel_scope.cancel()


def split_responses(raw: bytes) -> tuple[list[RawResponse], bytes]:
    """Complete HTTP/1.1 responses at the start of ``raw`` (Content-Length or chunked), and what is left over."""
    responses: list[RawResponse] = []
    while b"\r\n\r\n" in raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            break
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in lines[1:])]
        values = dict(headers)
        if status < 200 or status in (204, 304):
            body, end = b"", 0
        elif b"content-length" in values:
            end = int(values[b"content-length"])
            if len(rest) < end:
                break
            body = rest[:end]
        elif values.get(b"transfer-encoding", b"").lower() == b"chunked":
            if b"\r\n0\r\n\r\n" not in b"\r\n" + rest:
                break
            end = (b"\r\n" + rest).index(b"\r\n0\r\n\r\n") + 5
            body = dechunk(rest[:end])
        else:  # close-delimited: everything left
            body, end = rest, len(rest)
        responses.append(
            RawResponse(status, lines[0].split(b" ", 1)[0], headers, body, head + b"\r\n\r\n" + rest[:end])
        )
        raw = rest[end:]
    return responses, raw


@dataclass
class Observed:
    responses: list[RawResponse]
    closed: bool
    leftover: bytes = b""
    sent_all: bool = True
    waited_for_close: bool = True

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]

    def describe(self) -> str:
        parts = [str(r.status) + ("" if _is_json_error(r) or r.status < 400 else " (not JSON)") for r in self.responses]
        text = ", ".join(parts) if parts else "no response"
        if self.leftover:
            text += f" + {len(self.leftover)} unparsed bytes"
        if self.closed:
            return text + "; closed"
        return text + ("; left open" if self.waited_for_close else "")


def _is_json_error(response: RawResponse) -> bool:
    try:
        body = json.loads(response.body)
    except ValueError:
        return False
    return isinstance(body, dict) and {"error", "detail", "request_id"} <= body.keys()


async def exchange(
    port: int, request: bytes | list[bytes], *, responses: int = 1, wait_for_close: bool = True, limit: float = 5
) -> Observed:
    """Send ``request`` (one write per element) and read what comes back.

    Reads until the server closes, or, when ``wait_for_close`` is false, until ``responses`` responses are in.
    Gives up after ``limit`` seconds: the result then says "left open".
    """
    pieces = [request] if isinstance(request, bytes) else request
    raw = b""
    closed = False
    sent_all = True
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        try:
            for piece in pieces:
                await stream.send(piece)
        except (anyio.BrokenResourceError, OSError):
            sent_all = False
        with anyio.move_on_after(limit):
            while True:
                try:
                    raw += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    closed = True
                    break
                if not wait_for_close and len(split_responses(raw)[0]) >= responses:
                    break
    parsed, leftover = split_responses(raw)
    return Observed(parsed, closed, leftover, sent_all, wait_for_close or len(parsed) < responses)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards ``wanted`` (never past the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def proc_status(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status in bytes (VmRSS, VmHWM), 0 when the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def proc_read_bytes(pid: int) -> int:
    """Bytes the process has read with read(2)/recv(2) so far (``rchar`` of /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/PID/io")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def gateway_process(config: dict[str, Any], tmp_path: Path, *, nofile: int | None = None) -> Iterator[GatewayProcess]:
    """``python -m fastgate run CONFIG`` as a subprocess (one worker), its server section completed with a free port.

    The child inherits this process's RLIMIT_NOFILE, so raise it first (``raise_fd_limit``) for many connections.
    """
    port = free_port()
    config = {**config, "server": {"host": "127.0.0.1", "port": port, "access_log": False, **config.get("server", {})}}
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(config))
    log_path = tmp_path / "gateway.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fastgate", "run", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    running = GatewayProcess(process, port, log_path)
    try:
        wait_for_port(port, process=process)
        yield running
    finally:
        running.stop(timeout=10)
