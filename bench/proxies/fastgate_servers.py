"""fastgate's proxy core under another server, for the server-layer A/B of the performance issue.

    python bench/proxies/fastgate_servers.py --server granian --port 8001 --upstream http://127.0.0.1:8000
    python bench/proxies/fastgate_servers.py --server uvicorn-httptools --port 8001 --upstream ...
    python bench/proxies/fastgate_servers.py --server asyncio-loop --port 8001 --upstream ...

The same ``Gateway`` (same config as ``fastgate proxy``: access log off) served by Granian's ASGI interface
(Rust HTTP server, one worker, uvloop) or by stock Uvicorn with its httptools protocol (no fastgate server
protocol: a watcher task per request for disconnects), or fastgate as ``fastgate proxy`` runs it but on asyncio's
own event loop (``asyncio-loop``: it accepts every queued connection per loop turn, where uvloop accepts one).
``fastgate`` itself is the reference arm: our own protocol on uvloop.
"""

from __future__ import annotations

import argparse
import os

from fastgate import GatewayConfig, ServerConfig
from fastgate.server import CONFIG_ENV


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["granian", "uvicorn-httptools", "asyncio-loop"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    config = GatewayConfig.single(args.upstream, server=ServerConfig(port=args.port, access_log=False))
    os.environ[CONFIG_ENV] = config.model_dump_json()
    if args.server == "granian":
        from granian import Granian  # type: ignore[import-not-found]
        from granian.constants import Interfaces, Loops  # type: ignore[import-not-found]

        Granian(
            "fastgate.server:create_app",
            factory=True,
            address="127.0.0.1",
            port=args.port,
            interface=Interfaces.ASGI,
            workers=1,
            loop=Loops.uvloop,
            log_access=False,
        ).serve()
    elif args.server == "asyncio-loop":
        # fastgate exactly as `fastgate proxy` runs it, on asyncio's own event loop instead of uvloop.
        import uvicorn

        from fastgate.server import uvicorn_options

        uvicorn.run("fastgate.server:create_app", factory=True, **{**uvicorn_options(config), "loop": "asyncio"})
    else:
        import uvicorn

        uvicorn.run(
            "fastgate.server:create_app",
            factory=True,
            host="127.0.0.1",
            port=args.port,
            http="httptools",
            loop="uvloop",
            lifespan="on",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            log_level="warning",
        )


if __name__ == "__main__":
    main()
