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

from fastgate._protocol import FastgateHttpProtocol
from fastgate._types import ASGIApp
from tests.servers import RunningServer, Spec24, run_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


SERVER_PATHS: dict[str, tuple[Any, bool]] = {
    "httptools": ("httptools", False),
    "httptools-spec-2.4": ("httptools", True),
    "h11": ("h11", False),
    "h11-spec-2.4": ("h11", True),
    "fastgate-protocol": (FastgateHttpProtocol, False),
}


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.asynccontextmanager
async def serve(
    app: ASGIApp, server_path: str = "httptools", *, expected_errors: tuple[str, ...] = (), **options: Any
) -> AsyncIterator[RunningServer]:
    """Serve a host app (its lifespan on) the way users do: plain uvicorn, no fastgate-specific options.

    Fails the test if uvicorn logged an error, such as an exception that reached it from the app, except for
    messages starting with one of ``expected_errors``.
    """
    http, spec24 = SERVER_PATHS[server_path]
    errors = _Errors()
    async with run_server(Spec24(app) if spec24 else app, http=http, lifespan="on", **options) as server:
        logger = logging.getLogger("uvicorn.error")  # after uvicorn configured logging, which resets handlers
        logger.addHandler(errors)
        try:
            yield server
            await anyio.sleep(0.02)  # let a request that is still finishing log its failure
        finally:
            logger.removeHandler(errors)
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


async def wait_for(predicate: Any, limit: float = 5.0) -> None:
    """Poll ``predicate()`` until it is true, failing after ``limit`` seconds."""
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - polls state that nothing signals (an app's counters)
            await anyio.sleep(0.01)


async def send_then_disconnect(port: int, request: bytes, ready: Any) -> None:
    """Send raw ``request`` bytes, wait for ``ready()`` (bounded), then close the socket: a client that leaves."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        with anyio.fail_after(5):
            await ready()
