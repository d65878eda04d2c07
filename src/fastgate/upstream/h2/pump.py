"""A request body sent upstream on a task of its own while the response comes down (full duplex over HTTP/2).

A gRPC bidirectional stream sends a message, waits for the answer, sends the next: a transport that sent the whole
body before reading the response head would deadlock it. :class:`BodyPump` runs the sending in a plain task inside
an anyio cancel scope of its own (as ``proxy/disconnect.py``'s watcher does: never a raw ``Task.cancel``); the
transport waits for the response head meanwhile, and an error of the sender before the head arrives is raised there
(a body longer than its Content-Length: 400; the client gone: a disconnect). After the head, an error fails the
upstream stream, so the response's reader sees it. The response's ``aclose`` stops the sender and waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from ...exceptions import UpstreamError, UpstreamProtocolError
from ...proxy.disconnect import new_cancel_scope
from .stream import Stream


class BodyPump:
    __slots__ = ("error", "_task", "_scope", "_stream", "_upstream", "_target")

    def __init__(self, sending: Coroutine[Any, Any, None], stream: Stream, upstream: str, target: str) -> None:
        self.error: BaseException | None = None
        self._stream = stream
        self._upstream = upstream
        self._target = target
        self._scope = new_cancel_scope()
        self._task = asyncio.get_running_loop().create_task(self._run(sending))

    def failed(self) -> BaseException | None:
        """The sender's error, if it failed (``Http2Connection.wait_head`` raises it)."""
        return self.error

    async def _run(self, sending: Coroutine[Any, Any, None]) -> None:
        with self._scope:
            try:
                await sending
            except Exception as exc:
                self.error = exc
                stream = self._stream
                if stream.head_done and not isinstance(exc, UpstreamError):
                    # the response is under way: its reader learns that the request broke off
                    stream.fail(UpstreamProtocolError(f"request body broke off: {exc}", self._upstream, self._target))
                stream.wake()

    async def aclose(self) -> None:
        """Stop sending (if it still is) and wait for the sender to end (callers shield this)."""
        if not self._task.done():
            self._scope.cancel()
        await asyncio.wait((self._task,))
