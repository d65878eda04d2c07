"""How fast an event loop drains a burst of new connections: uvloop against asyncio's own loop.

    venv/bin/python bench/accept_burst.py                        # 1000 connections, both loops, 3 rounds each
    venv/bin/python bench/accept_burst.py --connections 2000 --loops uvloop --backlog 4096

A server process (pinned to CPU 1) runs a trivial keep-alive HTTP/1.1 protocol that answers every request with
256 bytes, optionally doing `--work-us` of CPU per request (a proxy's cost). A client process (this one, CPU 0)
opens `--connections` sockets at once, each sends one request as soon as it is connected, and the time from the
first connect() to each response is recorded. The server counts, for each turn of its event loop, how many
connections were accepted in it (a `call_soon` callback that re-schedules itself marks the turns). Traffic on
127.0.0.1 only; every wait is bounded by `--timeout`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from typing import cast

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 256\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 256
REQUEST = b"GET /256b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def serve(loop_name: str, port: int, backlog: int, work_us: int, stall_ms: int) -> None:
    if loop_name == "uvloop":
        import uvloop

        uvloop.install()
    stats = {"turn": 0, "accepted": 0, "per_turn": {}}

    class Http(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
            stats["accepted"] += 1
            if stats["accepted"] == 1 and stall_ms:
                time.sleep(stall_ms / 1000)  # the loop is busy: the rest of the burst waits in the listen queue
            per_turn: dict[int, int] = stats["per_turn"]  # type: ignore[assignment]
            per_turn[stats["turn"]] = per_turn.get(stats["turn"], 0) + 1  # type: ignore[index]

        def data_received(self, data: bytes) -> None:
            if data.startswith(b"GET /stats"):
                per_turn = list(stats["per_turn"].values())  # type: ignore[union-attr]
                body = json.dumps({"accepted": stats["accepted"], "turns_with_accepts": len(per_turn),
                                   "max_per_turn": max(per_turn, default=0)}).encode()  # fmt: skip
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                self.transport.write(head + body)
                return
            for _ in range(max(1, data.count(b"\r\n\r\n"))):
                if work_us:
                    end = time.perf_counter() + work_us / 1e6
                    while time.perf_counter() < end:
                        pass
                self.transport.write(RESPONSE)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            stats["turn"] += 1  # type: ignore[operator]
            loop.call_soon(tick)

        loop.call_soon(tick)
        server = await loop.create_server(Http, "127.0.0.1", port, backlog=backlog)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def burst(port: int, connections: int, timeout: float) -> list[float]:
    """Seconds from the start of the burst to each connection's response (inf: none within `timeout`)."""
    sel = selectors.DefaultSelector()
    done: dict[int, float] = {}
    socks = []
    start = time.perf_counter()
    for i in range(connections):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE, i)
        socks.append(s)
    deadline = start + timeout
    while len(done) < connections and time.perf_counter() < deadline:
        for key, events in sel.select(timeout=0.1):
            s, i = key.fileobj, key.data
            assert isinstance(s, socket.socket)
            if events & selectors.EVENT_WRITE:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    done[i] = float("inf")
                    sel.unregister(s)
                    continue
                s.send(REQUEST)
                sel.modify(s, selectors.EVENT_READ, i)
            else:
                try:
                    data = s.recv(65536)  # one small response arrives in one read on loopback
                except ConnectionError:
                    data = b""
                done[i] = time.perf_counter() - start if data else float("inf")
                sel.unregister(s)
    for s in socks:
        s.close()
    return [done.get(i, float("inf")) for i in range(connections)]


def stats_of(port: int) -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(65536)
    return json.loads(data.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


def run_client(args: argparse.Namespace) -> None:
    print(f"{args.connections} connections at once, backlog {args.backlog}, {args.work_us} µs of work per request, "
          f"the server's loop blocked {args.stall_ms} ms at the first accept; "
          f"somaxconn {open('/proc/sys/net/core/somaxconn').read().strip()}")  # fmt: skip
    for loop_name in args.loops.split(","):
        for rnd in range(args.rounds):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            argv = ["taskset", "-c", "1", sys.executable, __file__, "--serve", loop_name, "--port", str(port),
                    "--backlog", str(args.backlog), "--work-us", str(args.work_us),
                    "--stall-ms", str(args.stall_ms)]  # fmt: skip
            server = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)
            try:
                assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
                times = burst(port, args.connections, args.timeout)
                st = stats_of(port)
            finally:
                os.killpg(server.pid, 9)
                server.wait(5)
            ok = sorted(t for t in times if t != float("inf"))
            q = statistics.quantiles(ok, n=100) if len(ok) > 1 else [0.0] * 99
            print(f"{loop_name:8s} round {rnd + 1}: answered {len(ok)}/{len(times)}, p50 {q[49] * 1000:.0f} ms, "
                  f"p99 {q[98] * 1000:.0f} ms, last {ok[-1] * 1000 if ok else 0:.0f} ms; accepted in "
                  f"{st['turns_with_accepts']} loop turns, at most {st['max_per_turn']} in one")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--loops", default="uvloop,asyncio")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--backlog", type=int, default=2048, help="listen() backlog (Uvicorn's default: 2048)")
    p.add_argument("--work-us", type=int, default=0, help="busy CPU per request in the server")
    p.add_argument("--stall-ms", type=int, default=500, help="block the server's loop this long at the first accept")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.backlog, args.work_us, args.stall_ms)
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    run_client(args)


if __name__ == "__main__":
    main()
