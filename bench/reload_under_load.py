"""Hot reload under load (issue 11): failed requests and p99 while `fastgate run FILE` reloads 10 times, and one
WebSocket session echoing across all the reloads.

    venv/bin/python bench/reload_under_load.py                      # ~20 s: 5 s steady, then 10 reloads under load
    venv/bin/python bench/reload_under_load.py --reloads 10 --interval 1.0 --steady 5 --connections 64

Pinned as bench.py pins: upstream nginx and `wrk -t1` on CPU 0, `fastgate run` (one worker) on CPU 1. The config
file alternates between two valid configs, the second with different routes (an extra prefix, the order changed,
and a `request_headers` plugin on the catch-all route); each SIGHUP waits until the gateway logs the reload before
the next one is sent. One `wrk` run lasts the whole reload phase; a steady run of the same load without reloads
comes first, for comparison. Failed requests are wrk's non-2xx/3xx answers plus its socket errors and the
requests left unanswered (`wrk_report.lua`). The WebSocket client (websockets' sync client, in a thread of this
process) sends one message every 50 ms through the gateway to an echo server (websockets' sync server, also in a
thread here) and checks every echo. Bounded: every wait has a deadline, every process is killed by process group
at the end. Exits 1 when a request failed, the session broke, or a reload was not logged.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import harness
from harness import Procs
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

RELOADED = re.compile(r"config reloaded")


def config(port: int, upstream: int, ws_port: int, variant: int) -> dict[str, Any]:
    """Variant 0: /ws and a catch-all; variant 1 changes the routes (an extra prefix first, a route plugin)."""
    routes: list[dict[str, Any]] = [{"prefix": "/ws", "upstream": "ws"}]
    catch_all: dict[str, Any] = {"prefix": "/", "upstream": "api"}
    if variant:
        routes.insert(0, {"prefix": "/v2/", "upstream": "api", "strip_prefix": True})
        catch_all["plugins"] = [{"use": "request_headers", "options": {"set": {"x-config": "b"}}}]
    return {
        "server": {"host": "127.0.0.1", "port": port, "access_log": False, "log_level": "info"},
        "upstreams": {"api": {"url": f"http://127.0.0.1:{upstream}"}, "ws": {"url": f"http://127.0.0.1:{ws_port}"}},
        "routes": [*routes, catch_all],
    }


class EchoSession(threading.Thread):
    """One WebSocket session through the gateway: a message every ``interval`` s, each echo checked."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.stop = threading.Event()
        self.echoed = 0
        self.error = ""

    def run(self) -> None:
        try:
            with connect(self.url, open_timeout=10, close_timeout=5) as ws:
                for count in range(1_000_000):  # bounded, and by `stop`
                    if self.stop.wait(self.interval):
                        return
                    ws.send(f"message {count}")
                    answer = ws.recv(timeout=5)
                    if answer != f"message {count}":
                        self.error = f"echo {count} came back as {answer!r}"
                        return
                    self.echoed += 1
        except Exception as exc:  # the figure to report: the session broke, and why
            self.error = f"{type(exc).__name__}: {exc}"


def echo(connection: ServerConnection) -> None:
    for message in connection:
        connection.send(message)


def wait_for(predicate: Any, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def failed(result: harness.WrkResult) -> int:
    return sum(result.errors.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between reloads (after each is logged)")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of the same load without reloads first")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    harness.raise_fd_limit()
    root = Path(tempfile.mkdtemp(prefix="fastgate-reload-bench-"))
    procs = Procs(root)
    echo_server = serve(echo, "127.0.0.1", 0)
    threading.Thread(target=echo_server.serve_forever, daemon=True).start()
    ws_port = echo_server.socket.getsockname()[1]
    session: EchoSession | None = None
    try:
        upstream = harness.start_upstream(procs, root)
        port = harness.free_port()
        path = root / "gateway.json"
        path.write_text(json.dumps(config(port, upstream, ws_port, 0)))
        proc = procs.start("fastgate", [*harness.fastgate_prefix(), "run", str(path)], harness.PROXY_CPU)
        url = f"http://127.0.0.1:{port}/256b"
        harness.wait_ready(url, proc)
        log = procs.logs[proc.pid]
        harness.run_wrk(url, args.connections, 1, 2.0, 0, None)  # warm-up
        steady = harness.run_wrk(url, args.connections, args.steady, 2.0, 0, proc.pid)

        session = EchoSession(f"ws://127.0.0.1:{port}/ws/echo")
        session.start()
        wait_for(lambda: session is not None and (session.echoed > 0 or bool(session.error)), 10, "the first echo")
        duration = args.reloads * (args.interval + 0.2) + 2
        outcome: dict[str, harness.WrkResult] = {}
        load = threading.Thread(
            target=lambda: outcome.setdefault(
                "wrk", harness.run_wrk(url, args.connections, duration, 2.0, 0, proc.pid)
            ),
            daemon=True,
        )
        load.start()
        time.sleep(1.0)  # load on the first config before the first reload
        timings: list[float] = []
        for reload in range(args.reloads):
            path.write_text(json.dumps(config(port, upstream, ws_port, (reload + 1) % 2)))
            sent = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda n=reload + 1: len(RELOADED.findall(log.read_text(errors="replace"))) >= n, 20, "reload")
            timings.append(time.monotonic() - sent)
            time.sleep(args.interval)
        load.join(duration + 90)
        session.stop.set()
        session.join(10)
        under = outcome.get("wrk")
        if under is None:
            raise RuntimeError("wrk did not report")
        if proc.poll() is not None:
            raise RuntimeError(f"fastgate exited with {proc.returncode}: {procs.log_tail(proc)}")
        refused = len(re.findall(r"config reload refused", log.read_text(errors="replace")))
    finally:
        if session is not None:
            session.stop.set()
        procs.close()
        echo_server.shutdown()

    def row(name: str, result: harness.WrkResult) -> str:
        rate = result.requests / result.duration_s
        return (
            f"| {name} | {result.duration_s:.1f} s | {result.requests:,} | {rate:,.0f} | {failed(result)} "
            f"{json.dumps({k: v for k, v in result.errors.items() if v})} | {result.p50_ms:.1f} ms "
            f"| {result.p99_ms:.1f} ms |"
        )

    print(f"fastgate run, 1 worker, S1 load (GET 256 B, {args.connections} connections), {args.reloads} SIGHUP reloads")
    print("| phase | length | requests | req/s | failed | p50 | p99 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print(row("steady, no reload", steady))
    print(row(f"{args.reloads} reloads", under))
    print(
        f"reload logged {min(timings) * 1000:.0f}-{max(timings) * 1000:.0f} ms after its SIGHUP; {refused} refused; "
        f"WebSocket session: {session.echoed if session else 0} echoes across all reloads, "
        + (f"BROKE: {session.error}" if session and session.error else "never broke")
    )
    ok = failed(under) == 0 and session is not None and not session.error and not refused
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
