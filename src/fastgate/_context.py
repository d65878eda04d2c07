"""Run a coroutine in a context of its own, inside the current task.

fastgate's HTTP/1.1 server serves a connection's requests from one task (no task per request). A task runs in one
``contextvars`` context, so a context variable that a plugin sets while handling a request (a logging binding, say)
would still be set for the next request on the same connection, where a task per request (any ASGI server) would
have started each request from a fresh copy. :func:`in_context` restores that: each step of the coroutine runs in
``context`` (``Context.run``), so what it sets stays there. Cancellation and exceptions pass through unchanged (the
coroutine is resumed with ``throw``), and the task is the same one, so anyio's cancel scopes see no difference.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from contextvars import Context
from typing import Any, TypeVar

_T = TypeVar("_T")


class in_context:
    """``await in_context(coro, contextvars.copy_context())``: ``coro``'s result, each of its steps run in
    ``context``."""

    __slots__ = ("_coro", "_context")

    def __init__(self, coro: Coroutine[Any, Any, _T], context: Context) -> None:
        self._coro = coro
        self._context = context

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, run = self._coro, self._context.run
        send, throw = coro.send, coro.throw
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = run(send, value) if error is None else run(throw, error)
            except StopIteration as stop:
                return stop.value
            finally:
                error = None
            try:
                value = yield yielded
            except BaseException as exc:  # cancellation included: delivered into the coroutine, in its context
                error, value = exc, None
