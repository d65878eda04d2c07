"""Downstream calls from sync (``def``) endpoints, without sharing an async client across threads.

Starlette and FastAPI run ``def`` endpoints and ``def`` dependencies in AnyIO worker threads. An
``httpx.AsyncClient`` (and fastgate's pool under it) belongs to the event loop: calling it from a worker thread,
or building a second pool per thread, is what goes wrong in the seed texts. :class:`SyncUpstreamClient` instead
hands each call back to the event loop thread (``anyio.from_thread.run``), where the shared pooled client makes
it; the worker thread waits and gets a response whose body has already been read. One pool, one thread using it.

Streaming does not cross threads: a ``def`` endpoint that wants to relay a response returns
``forward(request, ...)``, which does no I/O until Starlette runs it on the event loop.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import anyio.from_thread

if TYPE_CHECKING:
    import httpx

    from .client import UpstreamClient


class SyncUpstreamClient:
    """Blocking calls on an :class:`UpstreamClient`, for code running in an AnyIO worker thread.

    >>> @app.get("/profile/{user_id}")
    ... def profile(user_id: int, request: Request) -> dict:
    ...     return request.state.users.sync.get(f"/users/{user_id}").json()

    Every method takes httpx's arguments and returns an ``httpx.Response`` that is already read. Calling one on
    the event loop thread itself raises ``RuntimeError``: in ``async def`` code, ``await`` the client instead.
    """

    def __init__(self, client: UpstreamClient) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<SyncUpstreamClient {self._client.name!r}>"

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return anyio.from_thread.run(partial(self._client.request, method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("HEAD", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("OPTIONS", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)
