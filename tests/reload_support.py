"""Helpers for the reload and admin tests: a named upstream that says which connection a request came on, config
files, and ``fastgate run FILE`` as a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml

from fastgate._types import Receive, Scope, Send
from tests.servers import GatewayProcess, answer_lifespan, free_port, wait_for_port


@dataclass
class NamedUpstream:
    """Answers ``{"upstream": name, "peer": client port}``; ``/hold`` waits for ``release`` first."""

    name: str
    peers: list[int] = field(default_factory=list)
    holding: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)
    disconnects: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        peer = scope["client"][1]
        self.peers.append(peer)
        if scope["path"] == "/hold":
            self.holding.set()
            await self.release.wait()
        elif scope["path"] == "/slow":
            await anyio.sleep(float(scope["query_string"].decode().partition("=")[2] or "1"))
        body = json.dumps({"upstream": self.name, "peer": peer, "path": scope["path"]}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def gateway_config(
    upstreams: dict[str, str], routes: list[dict[str, Any]], *, port: int = 0, **sections: Any
) -> dict[str, Any]:
    """Plain config data: ``upstreams`` by name -> URL, the routes as given, ``server.port``, other sections."""
    server = {"port": port, "access_log": False, "graceful_timeout": 10, **sections.pop("server", {})}
    return {
        "server": server,
        "upstreams": {name: {"url": url} for name, url in upstreams.items()},
        "routes": routes,
        **sections,
    }


def write_config(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` in one rename, as config management does (a reader never sees half a file)."""
    partial = path.with_suffix(".partial")
    partial.write_text(yaml.safe_dump(data))
    os.replace(partial, path)


@contextlib.contextmanager
def fastgate_run(
    config_file: Path, log_path: Path, port: int, *args: str, buffered: bool = False
) -> Iterator[GatewayProcess]:
    """``python -m fastgate run CONFIG_FILE ARGS...`` as a subprocess listening on ``port``; SIGTERM afterwards.

    ``buffered``: stdout (the log file) keeps Python's default block buffering instead of ``PYTHONUNBUFFERED=1``.
    """
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fastgate", "run", str(config_file), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    running = GatewayProcess(process, port, log_path)
    try:
        wait_for_port(port, timeout=30, process=process)
        yield running
    finally:
        running.stop()


def ports(count: int) -> list[int]:
    """``count`` distinct free ports for child processes."""
    found: set[int] = set()
    while len(found) < count:
        found.add(free_port())
    return sorted(found)
