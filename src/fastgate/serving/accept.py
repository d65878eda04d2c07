"""uvloop's event loop, accepting every queued connection in the turn where one arrives.

libuv (since 1.45: libuv/libuv#3696, "don't accept() connections in a loop") accepts one connection per readiness
event of a listening socket and relies on level-triggered polling for the next one. Under load one loop turn
lasts tens of milliseconds (every ready connection's requests are handled in it), so a burst of new connections
drains at one per turn: about 25 per second at 1,000 connections on the benchmark machine, which gave S5 its
multi-second tail and its timeouts (bench/accept_burst.py reproduces it without fastgate). asyncio's own loop
accepts up to ``backlog`` connections per turn.

:func:`new_event_loop` makes a uvloop loop whose plain-TCP servers do the same: when uvloop accepts a connection,
one callback in the same turn accepts the rest of the listen queue (at most :data:`BATCH`) and hands each socket
to ``connect_accepted_socket``, which opens it exactly as uvloop's own accept does. A turn without a new
connection costs nothing. Uvicorn takes the factory as its ``loop`` option
(``"fastgate.serving.accept:new_event_loop"``).

With ``--workers N`` each worker has a listener of its own where the platform balances ``SO_REUSEPORT`` listeners
(serving/listeners.py), so draining its queue takes nothing from the others. Where the workers share one socket
(``FASTGATE_SHARED_LISTENER`` set by the manager), a worker accepts at most
:data:`~fastgate.serving.listeners.SHARED_ACCEPT_BATCH` more per turn, leaving the rest of a burst to the others.

A TLS listener (``ssl=``) is created as a plain-TCP one whose connections start their handshake themselves
(``serving/handshake.py``): fastgate's protocol then bounds the handshake by ``server.header_timeout`` and counts the
connection toward ``server.max_connections`` from its accept, which a loop-run handshake allows neither.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, cast

import uvloop

from .collector import tune_collector
from .handshake import tls_handshake_factory
from .listeners import SHARED_ACCEPT_BATCH, SHARED_LISTENER_ENV

BATCH = 512  # connections accepted per listener per turn, beyond uvloop's one

logger = logging.getLogger("fastgate.server")


class _Drain:
    """Wraps a server's protocol factory: each connection uvloop accepts schedules one drain of the queue."""

    __slots__ = ("batch", "factory", "loop", "scheduled", "server")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.BaseProtocol], batch: int = BATCH
    ) -> None:
        self.loop = loop
        self.factory = factory
        self.batch = batch
        self.server: asyncio.Server | None = None
        self.scheduled = False

    def accepted(self) -> asyncio.BaseProtocol:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.drain)
        return self.factory()

    def drain(self) -> None:
        self.scheduled = False
        server = self.server
        if server is None or not server.is_serving():
            return
        for listener in server.sockets:
            # A socket object over the listener's descriptor, detached (never closed) after use: uvloop owns it.
            # The descriptor is non-blocking (libuv sets it), so accept() raises BlockingIOError once it is empty.
            sock = socket.socket(listener.family, listener.type, 0, listener.fileno())
            try:
                for _ in range(self.batch):
                    try:
                        conn, _ = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: uvloop's own accept reports and copes
                        logger.debug("accept failed: %s", exc)
                        break
                    self._open(conn)
            finally:
                sock.detach()

    def _open(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvloop sets on what it accepts
        task = self.loop.create_task(self.loop.connect_accepted_socket(self.factory, conn))
        task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # The client went away between accept() and the transport opening: nothing to answer.
        logger.debug("accepted connection failed to open: %s", task.exception())


class GreedyAcceptLoop(uvloop.Loop):
    """uvloop's loop; its TCP servers accept the whole listen queue in the turn a connection arrives.

    Its TLS servers run each connection's handshake as :mod:`fastgate.serving.handshake` does. ``accept_batch``:
    connections accepted per listener per turn beyond uvloop's one.
    """

    accept_batch = BATCH

    async def create_server(  # type: ignore[override]  # the same parameters, passed through
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any
    ) -> asyncio.AbstractServer:
        context = kwargs.pop("ssl", None)
        if context is not None:
            protocol_factory = tls_handshake_factory(self, protocol_factory, context, **kwargs)
            kwargs.pop("ssl_handshake_timeout", None)
            kwargs.pop("ssl_shutdown_timeout", None)
        drain = _Drain(self, protocol_factory, self.accept_batch)
        server = await super().create_server(drain.accepted, *args, **kwargs)
        drain.server = cast(asyncio.Server, server)  # uvloop's Server: is_serving() and sockets
        return server


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Uvicorn's loop factory (its ``loop`` option takes ``"module:function"``), called once in each worker: it also
    sets the worker's garbage collector up for a proxy (:mod:`fastgate.serving.collector`)."""
    tune_collector()
    loop = GreedyAcceptLoop()
    if os.environ.get(SHARED_LISTENER_ENV):
        loop.accept_batch = SHARED_ACCEPT_BATCH  # workers sharing one socket: leave the rest of a burst to the others
    return loop
