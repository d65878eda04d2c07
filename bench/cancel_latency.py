"""Cancel latency: from a client's close to the upstream seeing its request's connection close.

    venv/bin/python bench/cancel_latency.py [--rounds 200]

A real upstream (Uvicorn) that never answers /slow, fastgate in front (its own server protocol), raw client sockets
on 127.0.0.1. Each round opens a connection, sends ``GET /slow``, waits until the upstream has the request, closes,
and times how long the upstream takes to see the disconnect. The tests bound this generously (a loaded CI machine);
this measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from typing import Any

import uvicorn

from fastgate import Gateway, GatewayConfig
from fastgate.server import HttpProtocol


class Upstream:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.gone = asyncio.Event()
        self.gone_at = 0.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.started.set()
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone_at = time.perf_counter()
        self.gone.set()


async def serve(app: Any, **options: Any) -> tuple[uvicorn.Server, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    options.setdefault("lifespan", "auto")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **options))
    asyncio.get_running_loop().create_task(server.serve([sock]))
    for _ in range(500):  # Uvicorn exposes only a flag
        if server.started:
            break
        await asyncio.sleep(0.01)
    return server, sock.getsockname()[1]


async def main(rounds: int) -> None:
    upstream = Upstream()
    up_server, up_port = await serve(upstream)
    gateway = Gateway(GatewayConfig.single(f"http://127.0.0.1:{up_port}"))
    gw_server, gw_port = await serve(gateway, http=HttpProtocol, lifespan="on", access_log=False)
    latencies = []
    for _ in range(rounds):
        upstream.started.clear()
        upstream.gone.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", gw_port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(upstream.started.wait(), 5)  # noqa: TID251
        closed_at = time.perf_counter()
        writer.close()
        await asyncio.wait_for(upstream.gone.wait(), 5)  # noqa: TID251
        latencies.append(upstream.gone_at - closed_at)
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    print(
        f"cancel latency over {rounds} rounds: median {statistics.median(ms):.2f} ms, "
        f"p99 {ms[int(len(ms) * 0.99) - 1]:.2f} ms, max {ms[-1]:.2f} ms"
    )
    gw_server.should_exit = up_server.should_exit = True
    await asyncio.sleep(0.3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    asyncio.run(main(parser.parse_args().rounds))
