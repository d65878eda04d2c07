"""Plugin cost: microseconds of CPU per ``forward_http`` exchange with no plugins, one trivial plugin, and the
built-in header plugins, against an in-memory upstream (no sockets: only the exchange's own work is measured).

    python bench/plugins.py                       # about 10 s
    FASTGATE_SRC=/tmp/base/src python bench/plugins.py   # another checkout's src, for a before/after pair

Each case runs the same GET (a 256-byte answer already buffered, so the one-write path is taken) under a fake of
fastgate's server hooks, and reports the best of 7 interleaved rounds in µs of process CPU time per exchange. Cases the
measured source does not have (an older checkout without plugins) are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.environ.get("FASTGATE_SRC") or str(Path(__file__).resolve().parents[1] / "src"))

from fastgate.config import UpstreamConfig
from fastgate.proxy import http

BODY = b"x" * 256
HEADERS = [(b"host", b"bench"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]


class _Response:
    status = 200
    aclose_waits = False

    def __init__(self) -> None:
        self.headers = [(b"content-type", b"text/plain"), (b"content-length", b"256")]

    def read_buffered(self) -> tuple[bytes, bool]:
        return BODY, True

    async def read(self) -> bytes:
        return b""

    async def aclose(self) -> None:
        pass


class _Transport:
    async def send(self, request: Any, body: Any) -> _Response:
        return _Response()


class _Hooks:
    raw_target = b"/256b"
    disconnected = False
    on_disconnect = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def abort(self) -> None:
        pass


async def _noop_receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Any) -> None:
    pass


def _cases() -> dict[str, Any]:
    cases: dict[str, Any] = {"no plugins": None}
    route_options = getattr(http, "RouteOptions", None)
    if route_options is None:
        return cases
    from fastgate.config import RouteConfig
    from fastgate.plugins import Plugin
    from fastgate.plugins.chain import PluginChain
    from fastgate.plugins.registry import route_plugins

    class Trivial(Plugin):
        async def on_request(self, request: Any) -> None:
            return None

    cases["no plugins (route options)"] = route_options(index=0)
    cases["1 trivial on_request plugin"] = route_options(index=0, plugins=PluginChain([("trivial", Trivial())]))
    headers = RouteConfig(
        upstream="a", request_headers={"set": {"x-tenant": "acme"}}, response_headers={"remove": ["server"]}
    )
    cases["request_headers + response_headers keys"] = route_options(index=0, plugins=route_plugins(headers, 0))
    return cases


async def _round(run: Callable[[], Any], loops: int) -> float:
    start = time.process_time()
    for _ in range(loops):
        await run()
    return (time.process_time() - start) / loops * 1e6


async def main(loops: int, rounds: int) -> None:
    loop = asyncio.get_running_loop()
    options = http.ForwardOptions.from_config("up", _Transport(), UpstreamConfig(url="http://127.0.0.1:9"))  # type: ignore[arg-type]
    runs: dict[str, Callable[[], Any]] = {}
    for name, route in _cases().items():
        kwargs = {} if route is None else {"route": route}

        async def run(kwargs: dict[str, Any] = kwargs) -> None:
            scope = {
                "type": "http",
                "method": "GET",
                "path": "/256b",
                "raw_path": b"/256b",
                "query_string": b"",
                "headers": list(HEADERS),
                "client": ("127.0.0.1", 40000),
                "extensions": {"fastgate.server": _Hooks(loop)},
            }
            await http.forward_http(scope, _noop_receive, _send, options, b"/256b", **kwargs)

        runs[name] = run
        await _round(run, loops // 5)  # warm up
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):  # interleaved: a busy moment of the machine hits every case alike
        for name, run in runs.items():
            best[name] = min(best[name], await _round(run, loops))
    for name, figure in best.items():
        print(f"{name:45s} {figure:6.2f} µs/exchange")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loops", type=int, default=20000, help="exchanges per case per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.loops, args.rounds))
