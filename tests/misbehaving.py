"""Raw upstreams that misbehave on purpose: they speak HTTP/1.1 by hand over anyio sockets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import anyio.abc

Handler = Callable[[anyio.abc.SocketStream, int], Awaitable[None]]


async def read_head(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    return data


@contextlib.asynccontextmanager
async def raw_upstream(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """Serve ``handler(stream, connection_number)`` on 127.0.0.1; yields the URL and a list of connection numbers."""
    connections: list[int] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        connections.append(len(connections) + 1)
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await handler(stream, len(connections))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"http://127.0.0.1:{port}", connections
        tg.cancel_scope.cancel()
