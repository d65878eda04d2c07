"""How an exchange is cancelled when its client goes: an anyio cancel scope, wired to the driver's disconnect signal.

* :class:`ConnectionScope`: fastgate's HTTP/1.1 server runs a connection's requests in one task, inside one cancel
  scope; the connection calls this object from ``connection_lost`` and it cancels that scope.
* :class:`HookScope`: an exchange's own cancel scope, cancelled by the server's callback (fastgate's server driving
  the gateway through the ASGI adapter), so an exchange costs no extra task.
* :class:`WatcherScope`: under any other ASGI server a watcher task reads ``receive()`` for ``http.disconnect`` once
  the request body has been read (``receive`` has one reader at a time).

Either way the exchange's cancel scope is cancelled (never a raw ``Task.cancel``: it would pierce anyio's shielded
scopes), the upstream connection is aborted in the exchange's ``finally``, and the upstream sees it close.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import AsyncBackend

from .._types import Receive


class DisconnectHooks(Protocol):
    """What a driver offers :class:`HookScope`: whether the client is gone, a slot for the callback, and ``abort``."""

    @property
    def disconnected(self) -> bool: ...

    on_disconnect: Callable[[], object] | None

    def abort(self) -> None: ...


@functools.cache
def _backend() -> type[AsyncBackend]:
    """The running async backend (asyncio: fastgate runs nowhere else), found once per process."""
    return anyio.lowlevel.current_token().backend_class


def new_cancel_scope() -> anyio.CancelScope:
    """``anyio.CancelScope()``, without finding the backend again: the public constructor asks sniffio on every call,
    and runs the scope's ``__init__`` twice (bench/instructions.py: 7k instructions a request saved)."""
    return _backend().create_cancel_scope()


class ConnectionScope:
    """Disconnect handling for a driver that runs a connection's requests in one task, inside one anyio
    :class:`~anyio.CancelScope` of the connection's (fastgate's HTTP/1.1 server: ``HttpProtocol._serve``).

    The server calls this object when the client goes (``connection_lost``), and it cancels ``scope`` while the
    exchange is running and has not finished. A raw ``Task.cancel`` would pierce anyio's shielded scopes: the one
    around ``to_thread.run_sync`` (a bcrypt check) would let the exchange go while its thread kept hashing, and a
    client that disconnects at once could start unbounded CPU work past the plugin's limiter. Through the scope, a
    shielded await finishes first and the cancellation lands at the next unshielded one. A client that goes takes
    its connection with it, so the cancellation is the connection's: it leaves the exchange and ends the
    connection's task; the exchange records it, and runs its plugins' ``on_finish`` hooks shielded, on the way out.
    One anyio scope per connection instead of one per exchange (:class:`HookScope`): about 18k instructions a
    request less (bench/instructions.py). After ``finish`` (the last byte is sent, or the upstream response is being
    closed) a disconnect is recorded but cancels nothing.

    ``expire`` (a retired config's ``server.drain_timeout`` passed) ends the exchange the same way and cuts the
    client off, so that a response it had started is seen as incomplete.
    """

    __slots__ = ("disconnected", "expired", "_hooks", "_scope", "_finished", "_exchanges")

    def __init__(self, hooks: DisconnectHooks, scope: anyio.CancelScope, exchanges: set[Any]) -> None:
        self._hooks = hooks
        self._scope = scope
        self._exchanges = exchanges
        self._finished = False
        self.disconnected = False
        self.expired = False

    def __call__(self) -> None:
        self.disconnected = True
        if not self._finished:
            self._scope.cancel()

    def expire(self) -> None:
        if not self._finished and not self.disconnected:
            self.expired = True
            self._scope.cancel()

    async def __aenter__(self) -> ConnectionScope:
        self._exchanges.add(self)
        if self._hooks.disconnected:
            # Gone before the exchange began (the server found its body broken, or it left): nothing to cancel;
            # the caller sees ``disconnected`` and sends nothing upstream.
            self.disconnected = True
        else:
            self._hooks.on_disconnect = self
        return self

    def watch(self) -> None:
        pass

    def finish(self) -> None:
        self._finished = True

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self._hooks.on_disconnect = None
        self._exchanges.discard(self)
        if self.expired:
            self._hooks.abort()  # a started response must not look complete; one not started has nobody to wait
        return False  # the connection's scope takes its cancellation where it was entered


class HookScope(ConnectionScope):
    """:class:`ConnectionScope` with a cancel scope of the exchange's own, entered by ``async with``: fastgate's
    server driving the gateway through the ASGI adapter (a task per request). The cancellation ends at the end of
    the block."""

    __slots__ = ()

    def __init__(self, hooks: DisconnectHooks, exchanges: set[Any]) -> None:
        super().__init__(hooks, new_cancel_scope(), exchanges)

    async def __aenter__(self) -> HookScope:
        self._scope.__enter__()
        await super().__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        await super().__aexit__(exc_type, exc, tb)
        return self._scope.__exit__(exc_type, exc, tb)


class WatcherScope:
    """Disconnect handling under any ASGI server: a watcher task reads ``receive()`` for ``http.disconnect``.

    ``receive`` has one reader at a time, so the watcher starts (``watch``) only once the request body is read. On a
    disconnect it cancels the exchange's cancel scope, as ``HookScope`` does. The watcher is owned by this scope: it
    runs in a cancel scope of its own, cancelled and awaited when the block ends, so it never outlives the exchange.
    (A plain task rather than an anyio task group: the group cost about 100 µs a request, the task a tenth of that.)
    Once the exchange has sent its last byte (``finish``), a ``http.disconnect`` is only the server saying the
    response is complete. ``expire`` ends the exchange as ``HookScope.expire`` does (the server then closes the
    connection of a response left incomplete).
    """

    __slots__ = ("disconnected", "expired", "_receive", "_cancel", "_watcher", "_watching", "_finished", "_exchanges")

    def __init__(self, receive: Receive, exchanges: set[Any]) -> None:
        self._receive = receive
        self._exchanges = exchanges
        self._cancel = new_cancel_scope()
        self._watcher: asyncio.Task[None] | None = None
        self._watching: anyio.CancelScope | None = None
        self._finished = False
        self.disconnected = False
        self.expired = False

    async def __aenter__(self) -> WatcherScope:
        self._cancel.__enter__()
        self._exchanges.add(self)
        return self

    def watch(self) -> None:
        self._watching = watching = new_cancel_scope()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(watching))

    def finish(self) -> None:
        self._finished = True

    def expire(self) -> None:
        if not self._finished and not self.disconnected:
            self.expired = True
            self._cancel.cancel()

    async def _watch(self, watching: anyio.CancelScope) -> None:
        with watching:
            while (await self._receive())["type"] != "http.disconnect":
                pass
            if not self._finished:
                self.disconnected = True
                self._cancel.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self._finished = True
        self._exchanges.discard(self)
        try:
            return self._cancel.__exit__(exc_type, exc, tb)
        finally:
            watcher, watching = self._watcher, self._watching
            if watcher is not None and watching is not None and not watcher.done():
                watching.cancel()
                with anyio.CancelScope(shield=True):  # the watcher ends at its next await: wait for it
                    await watcher


AnyDisconnectScope = HookScope | WatcherScope | ConnectionScope
