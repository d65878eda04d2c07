"""The upstream that tests put fastgate in front of. It records what it received and what it saw happen.

/echo                 JSON of method, raw path, query, headers and body it got
/slow?delay=S         waits S seconds before answering; records a client disconnect and when it came
/stream?n=N&delay=S   N chunks of ``chunk i\\n``, no Content-Length (chunked), S seconds apart
/sse                  three server-sent events 0.2 s apart
/big?size=B           B bytes with Content-Length, in 256 KiB pieces
/status/CODE          that status with a small body (none for 204/304)
/cookies              two Set-Cookie headers
/gzip                 a gzip-encoded body with Content-Encoding and Content-Length
/upload               reads the body, records when its first byte arrived; answers size and sha256
/hop                  a response with hop-by-hop headers the gateway must strip
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import anyio

GZIP_BODY = gzip.compress(b"compressed payload " * 50)


@dataclass
class Recorder:
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnected: dict[str, float] = field(default_factory=dict)
    first_body_byte_at: float | None = None
    started: anyio.Event = field(default_factory=anyio.Event)
    disconnect_event: anyio.Event = field(default_factory=anyio.Event)

    def last(self) -> dict[str, Any]:
        return self.requests[-1]

    def header(self, name: str, index: int = -1) -> list[str]:
        return [v for k, v in self.requests[index]["headers"] if k == name]


class UpstreamApp:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
        record: dict[str, Any] = {
            "method": scope["method"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query_string": scope["query_string"].decode("latin-1"),
            "http_version": scope["http_version"],
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        }
        self.recorder.requests.append(record)
        self.recorder.started.set()
        if path == "/slow":
            await self._slow(float(query.get("delay", "5")), receive, send, path)
            return
        if path == "/upload":
            await self._upload(receive, send, record)
            return
        body = await _read_body(receive)
        record["body"] = body.decode("latin-1")
        if path == "/echo":
            await _respond(send, 200, json.dumps(record).encode(), [(b"content-type", b"application/json")])
        elif path == "/stream":
            await self._stream(receive, send, int(query.get("n", "3")), float(query.get("delay", "0.2")))
        elif path == "/sse":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            for n in range(3):
                await send({"type": "http.response.body", "body": f"data: {n}\n\n".encode(), "more_body": True})
                await anyio.sleep(0.2)
            await send({"type": "http.response.body", "body": b""})
        elif path == "/big":
            await _big(send, int(query.get("size", str(1 << 20))))
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            await _respond(send, code, b"" if code in (204, 304) else f"status {code}".encode())
        elif path == "/cookies":
            headers = [(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; Path=/; HttpOnly")]
            await _respond(send, 200, b"cookies", headers)
        elif path == "/gzip":
            await _respond(send, 200, GZIP_BODY, [(b"content-encoding", b"gzip"), (b"content-type", b"text/plain")])
        elif path == "/hop":
            headers = [
                (b"connection", b"x-upstream-secret, keep-alive"),
                (b"x-upstream-secret", b"1"),
                (b"keep-alive", b"timeout=5"),
                (b"proxy-connection", b"keep-alive"),
                (b"trailer", b"x-checksum"),
                (b"x-kept", b"yes"),
            ]
            await _respond(send, 200, b"hop", headers)
        else:
            await _respond(send, 200, b"hello from upstream", [(b"content-type", b"text/plain")])

    async def _slow(self, delay: float, receive: Any, send: Any, path: str) -> None:
        await _read_body(receive)
        with anyio.move_on_after(delay):
            message = await receive()
            if message["type"] == "http.disconnect":
                self.recorder.disconnected[path] = time.monotonic()
                self.recorder.disconnect_event.set()
                return
        await _respond(send, 200, b"slow done")

    async def _stream(self, receive: Any, send: Any, n: int, delay: float) -> None:
        """Stream while watching for the client (the gateway) going away."""

        async def watch() -> None:
            if (await receive())["type"] == "http.disconnect":
                self.recorder.disconnected["/stream"] = time.monotonic()
                self.recorder.disconnect_event.set()
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for i in range(n):
                await send({"type": "http.response.body", "body": f"chunk {i}\n".encode(), "more_body": True})
                await anyio.sleep(delay)
            await send({"type": "http.response.body", "body": b""})
            tg.cancel_scope.cancel()

    async def _upload(self, receive: Any, send: Any, record: dict[str, Any]) -> None:
        digest = hashlib.sha256()
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.recorder.disconnected["/upload"] = time.monotonic()
                self.recorder.disconnect_event.set()
                return
            chunk = message.get("body", b"")
            if chunk and self.recorder.first_body_byte_at is None:
                self.recorder.first_body_byte_at = time.monotonic()
            digest.update(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        record["body_size"] = size
        await _respond(send, 200, json.dumps({"size": size, "sha256": digest.hexdigest()}).encode())


async def _read_body(receive: Any) -> bytes:
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return body
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


async def _respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = list(headers or [])
    if status not in (204, 304):
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _big(send: Any, size: int) -> None:
    piece = b"x" * (256 * 1024)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(size).encode())]})
    left = size
    while left > 0:
        chunk = piece[: min(left, len(piece))]
        left -= len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
