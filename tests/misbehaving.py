"""Raw upstreams that misbehave on purpose: they speak HTTP/1.1 by hand over anyio sockets."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

Handler = Callable[[anyio.abc.SocketStream, int], Awaitable[None]]


class _Recording:
    """A socket stream that appends whatever it receives to ``sink`` (what the upstream was sent, byte for byte)."""

    def __init__(self, stream: anyio.abc.SocketStream, sink: bytearray) -> None:
        self._stream = stream
        self._sink = sink

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._stream.receive(max_bytes)
        self._sink += data
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def reset(stream: anyio.abc.SocketStream) -> None:
    """Make the coming close a TCP reset (SO_LINGER 0) rather than an orderly FIN."""
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def read_head(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    return data


@contextlib.asynccontextmanager
async def raw_upstream(
    handler: Handler, received: dict[int, bytearray] | None = None
) -> AsyncIterator[tuple[str, list[int]]]:
    """Serve ``handler(stream, connection_number)`` on 127.0.0.1; yields the URL and a list of connection numbers.

    With ``received``, every byte each connection receives is recorded there under its connection number.
    """
    connections: list[int] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        number = len(connections) + 1
        connections.append(number)
        async with stream:
            handled: Any = stream
            if received is not None:
                handled = _Recording(stream, received.setdefault(number, bytearray()))
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await handler(handled, number)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"http://127.0.0.1:{port}", connections
        tg.cancel_scope.cancel()
