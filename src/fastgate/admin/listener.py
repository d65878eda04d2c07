"""The admin listener: :class:`~fastgate.admin.app.AdminApp` served on its own address, on the worker's loop.

It is Uvicorn's httptools protocol on an asyncio server of our own (a second ``uvicorn.Server`` would take over
the process's signal handlers). With ``--workers N`` every worker binds the address with ``SO_REUSEPORT``, and the
kernel spreads admin connections over them. Entered by the gateway's lifespan after its pools opened, left before
they close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.server import ServerState

from ..config import AdminConfig
from ..exceptions import ConfigError
from ..observability.logging import error_logger
from .app import AdminApp

if TYPE_CHECKING:
    from ..app import Gateway

CLOSE_TIMEOUT = 5.0


def bind_admin_socket(admin: AdminConfig, *, reuse_port: bool) -> socket.socket:
    """A listening socket on ``admin.listen``; ConfigError naming ``admin.listen`` when it cannot be bound."""
    host = admin.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, admin.port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"admin.listen: cannot listen on {admin.listen}: {exc.strerror or exc}") from None
    return sock


@contextlib.asynccontextmanager
async def serve_admin(gateway: Gateway, admin: AdminConfig) -> AsyncIterator[asyncio.Server]:
    """Serve the admin API of ``gateway`` on ``admin.listen`` for the duration of the block."""
    config = uvicorn.Config(
        AdminApp(gateway),
        http="httptools",
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )
    config.load()
    state = ServerState()
    sock = bind_admin_socket(admin, reuse_port=gateway.config.server.workers > 1)
    loop = asyncio.get_running_loop()

    def protocol() -> asyncio.Protocol:
        return config.http_protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg]

    server = await loop.create_server(protocol, sock=sock)
    error_logger.info("admin API on http://%s", admin.listen)
    try:
        yield server
    finally:
        server.close()
        for connection in list(state.connections):
            connection.shutdown()
        with contextlib.suppress(TimeoutError):
            # asyncio.timeout's raw Task.cancel is safe here: the block awaits sleeps and wait_closed, nothing shielded
            async with asyncio.timeout(CLOSE_TIMEOUT):
                while state.connections:  # noqa: ASYNC110 - Uvicorn's ServerState offers no event
                    await asyncio.sleep(0.01)
                await server.wait_closed()
