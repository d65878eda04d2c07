"""The gateway's own signal handling, for the lifespan of a gateway that ``fastgate run`` serves.

Uvicorn handles SIGINT/SIGTERM (graceful drain) with ``signal.signal``; these helpers add to that without taking
it over: SIGHUP reloads the config, and SIGTERM/SIGINT first mark the gateway draining, then reach Uvicorn's
handler as before. Signals can only be handled in the main thread: elsewhere both helpers do nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType

import anyio
from anyio.abc import TaskGroup

# Set by the process manager (server.py) in the workers' environment: the admin API's POST /reload signals it to
# reload them all. Here, not in admin/app.py: a worker without ``admin:`` never imports the admin package.
MANAGER_PID_ENV = "FASTGATE_MANAGER_PID"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def reload_on_sighup(group: TaskGroup, reload: Callable[[], Awaitable[None]]) -> Iterator[None]:
    """Run ``reload()`` in ``group`` on each SIGHUP for the duration of the block.

    Signals that come while a reload runs coalesce into one more (which reads the file as it is then). After the
    block SIGHUP is ignored: a late one must not kill a process that is stopping.
    """
    if not _main_thread() or not hasattr(signal, "SIGHUP"):
        yield
        return
    signalled = asyncio.Event()  # set from the loop's signal callback, which runs outside any task
    scope = anyio.CancelScope()

    async def reload_when_signalled() -> None:
        with scope:
            while True:
                await signalled.wait()
                signalled.clear()
                await reload()

    group.start_soon(reload_when_signalled, name="fastgate reload on SIGHUP")
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, signalled.set)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        scope.cancel()


@contextlib.contextmanager
def on_shutdown_signal(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback()`` on SIGTERM/SIGINT, then the handler that was there (Uvicorn's), for the block."""
    if not _main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(sig: int, frame: FrameType | None) -> None:
        callback()
        chained = previous[signal.Signals(sig)]
        if callable(chained):
            chained(sig, frame)
        else:  # nobody else handles it (the gateway is mounted, say): act as the process would have
            signal.signal(sig, chained)
            signal.raise_signal(sig)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, chained in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, chained)
