"""The worker's event loop accepts a burst of connections in the turn it arrives (issue 12, S5).

Plain uvloop (libuv >= 1.45) accepts one connection per loop turn, so under load a burst drained at the pace of
the loop's turns. These run the loop fastgate gives Uvicorn on real sockets, in a thread of their own: the loop is
blocked while a burst queues in the listen backlog, then the turns it takes to accept them are counted.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import cast

import uvicorn
import uvloop

from fastgate import GatewayConfig
from fastgate.server import uvicorn_options
from fastgate.serving.accept import GreedyAcceptLoop, new_event_loop

BURST = 200


class Counted(asyncio.Protocol):
    """Records in which loop turn each connection was made."""

    turns: list[int]
    turn: list[int]
    open: set[asyncio.BaseTransport]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.turns.append(self.turn[0])
        self.open.add(transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.open.discard(self.transport)


def accept_burst(loop: asyncio.AbstractEventLoop) -> tuple[list[int], bool]:
    """Turns in which each of BURST queued connections was accepted; whether the listener refused afterwards."""
    turn = [0]
    turns: list[int] = []
    transports: set[asyncio.BaseTransport] = set()
    protocol = type("P", (Counted,), {"turns": turns, "turn": turn, "open": transports})
    ready = threading.Event()
    port: list[int] = []

    async def main() -> bool:
        def tick() -> None:
            turn[0] += 1
            loop.call_soon(tick)

        server = await loop.create_server(protocol, "127.0.0.1", 0, backlog=1024)
        port.append(cast(asyncio.Server, server).sockets[0].getsockname()[1])
        ready.set()
        time.sleep(0.3)  # noqa: ASYNC251 - the loop is busy on purpose: the burst waits in the listen queue
        loop.call_soon(tick)
        deadline = loop.time() + 10
        while len(turns) < BURST and loop.time() < deadline:  # noqa: ASYNC110 - a deadline-bounded poll
            await asyncio.sleep(0.01)
        server.close()
        for transport in list(transports):
            transport.close()
        while transports and loop.time() < deadline:  # noqa: ASYNC110 - a deadline-bounded poll
            await asyncio.sleep(0.01)
        await server.wait_closed()
        return True

    clients: list[socket.socket] = []

    def connect_burst() -> None:
        ready.wait(10)
        for _ in range(BURST):
            clients.append(socket.create_connection(("127.0.0.1", port[0]), timeout=5))

    thread = threading.Thread(target=connect_burst)
    thread.start()
    try:
        loop.run_until_complete(main())
    finally:
        thread.join(15)
        for c in clients:
            c.close()
    try:
        socket.create_connection(("127.0.0.1", port[0]), timeout=2).close()
        refused = False
    except ConnectionRefusedError:
        refused = True
    loop.close()
    return turns, refused


def test_a_burst_of_queued_connections_is_accepted_in_a_few_loop_turns() -> None:
    turns, refused = accept_burst(new_event_loop())
    assert len(turns) == BURST
    assert len(set(turns)) <= 5, f"accepted over {len(set(turns))} loop turns"
    assert refused  # the listener is closed with the server: the drain holds no copy of its descriptor


def test_plain_uvloop_accepts_one_connection_per_turn() -> None:
    # The reason for GreedyAcceptLoop; if a uvloop release drains the queue again, it can go.
    turns, _ = accept_burst(uvloop.new_event_loop())
    assert len(turns) == BURST
    assert len(set(turns)) >= BURST // 2


def test_the_worker_runs_on_the_greedy_accept_loop() -> None:
    options = uvicorn_options(GatewayConfig.single("http://127.0.0.1:9"))
    factory = uvicorn.Config("fastgate.server:create_app", factory=True, loop=options["loop"]).get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, GreedyAcceptLoop)
    finally:
        loop.close()
