"""Servers for the library-use tests: a host app on real uvicorn, under every server path that matters.

``forward()`` and ``cancel_on_disconnect`` must not depend on how the server reports a disconnect, so the
disconnect tests run the host app with uvicorn's httptools and h11 protocols (ASGI spec 2.3: ``send`` after a
disconnect is a no-op), each also presented as a spec 2.4 server (Starlette then stops listening for
disconnects in ``StreamingResponse``, and ``send`` after a disconnect raises ``OSError``), and with fastgate's own
protocol (the server calls the proxy back on disconnect).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from fastgate._types import ASGIApp
from tests.servers import SERVER_PATHS, RunningServer, Spec24, captured_logs, run_server, wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@contextlib.asynccontextmanager
async def serve(
    app: ASGIApp, server_path: str = "httptools", *, expected_errors: tuple[str, ...] = (), **options: Any
) -> AsyncIterator[RunningServer]:
    """Serve a host app (its lifespan on) the way users do: plain uvicorn, no fastgate-specific options.

    Fails the test if uvicorn logged an error, such as an exception that reached it from the app, except for
    messages starting with one of ``expected_errors``.
    """
    http, spec24 = SERVER_PATHS[server_path]
    async with run_server(Spec24(app) if spec24 else app, http=http, lifespan="on", **options) as server:
        # after uvicorn configured logging, which resets handlers
        with captured_logs("uvicorn.error", logging.ERROR) as errors:
            yield server
            # a request that is still finishing logs its failure before its task ends
            await wait_until(lambda: not server.server.server_state.tasks)
    unexpected = [r for r in errors.records if not r.getMessage().startswith(expected_errors or ("\0",))]
    assert not unexpected, [r.getMessage() + str(r.exc_info and r.exc_info[1]) for r in unexpected]


@pytest.fixture(params=list(SERVER_PATHS))
def server_path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    module_name = f"fastgate_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


async def send_then_disconnect(port: int, request: bytes, ready: Any) -> None:
    """Send raw ``request`` bytes, wait for ``ready()`` (bounded), then close the socket: a client that leaves."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        with anyio.fail_after(5):
            await ready()
