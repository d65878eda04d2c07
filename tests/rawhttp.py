"""Byte-exact HTTP/1.x over a plain socket, for tests where a client library would normalise what we send."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import anyio.abc


@dataclass
class RawResponse:
    status: int
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]


def parse_response(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    version, status = lines[0].split(b" ", 2)[:2]
    headers = [tuple(line.split(b":", 1)) for line in lines[1:]]
    return RawResponse(int(status), version, [(k, v.strip()) for k, v in headers], body, raw)  # type: ignore[misc]


async def read_until_closed(stream: anyio.abc.ByteStream, limit: float = 10) -> bytes:
    data = b""
    with anyio.fail_after(limit):
        while True:
            try:
                chunk = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return data
            data += chunk


async def raw_exchange(port: int, request: bytes, limit: float = 10) -> RawResponse:
    """Send ``request`` bytes (the request should say ``Connection: close``) and read until the server closes."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        return parse_response(await read_until_closed(stream, limit))


def dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        body = rest[size + 2 :]
    raise ValueError("chunked body did not end with a zero-size chunk")
