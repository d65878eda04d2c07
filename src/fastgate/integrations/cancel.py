"""Cancel an endpoint's work when its client disconnects: the seed text's task-group pattern, done right.

How this works
--------------
Starlette only notices a disconnect while it streams a response; an ordinary endpoint keeps working for a client
that left. :func:`cancel_on_disconnect` runs the work inside an anyio task group next to a watcher task that
reads ``receive()`` until ``http.disconnect`` and then cancels the group's scope. When the work finishes first,
leaving the block cancels the watcher: this is the seed's "what if the client never disconnects?" fix; without
it the task group would wait for the watcher, and the response, forever.

``receive()`` has one reader at a time, and the watcher needs it. The rule: **the request body is read before
watching starts.** Entering the guard awaits ``request.body()``; Starlette keeps the bytes, so ``request.body()``,
``.json()``, ``.form()`` and ``.stream()`` inside the block return them without touching ``receive()``. FastAPI
has already read the body when the endpoint declares body parameters; an endpoint without a body reads nothing.
Streaming uploads (a body you do not want in memory) do not belong under this guard: relay them with
``forward()``, which streams and cancels on its own. Under ASGI spec 2.3 (uvicorn) and 2.4 alike the watcher
sees the disconnect the same way, so nothing here depends on the spec version.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Annotated, Any, ParamSpec, TypeVar, get_args, get_origin, overload

import anyio
import anyio.abc
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .._types import Receive, Scope, Send

P = ParamSpec("P")
R = TypeVar("R")

_REQUEST_PARAM = "_fastgate_request"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"; never reaches the client


class DisconnectGuard:
    """``async with cancel_on_disconnect(request) as guard:`` (see :func:`cancel_on_disconnect`)."""

    __slots__ = ("_request", "_scope", "_task_group", "disconnected", "watching")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._task_group: anyio.abc.TaskGroup | None = None
        self._scope = anyio.CancelScope()
        self.disconnected = False
        self.watching = False

    def __repr__(self) -> str:
        state = "disconnected" if self.disconnected else "watching" if self.watching else "idle"
        return f"<DisconnectGuard {state}>"

    @property
    def response(self) -> Response:
        """An empty 499 for a cancelled endpoint to return: the server drops it (an ASGI 2.4 server's ``send``
        raises once the client is gone, which this response tolerates; a plain ``Response`` would log an error)."""
        return _ClientGone()

    async def __aenter__(self) -> DisconnectGuard:
        try:
            await self._request.body()  # the one-reader rule: the body first, then the watcher owns receive()
        except ClientDisconnect:
            self.disconnected = True
        except RuntimeError:
            pass  # the handler consumed the stream already: only the disconnect is left to read
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        if self.disconnected:
            self._scope.cancel()
        else:
            self.watching = True
            self._task_group.start_soon(self._watch, self._request.receive)
        # The block runs in its own scope, not the task group's: its exceptions leave unchanged (a task group
        # would wrap them in an ExceptionGroup, and FastAPI's handlers for HTTPException would miss them).
        self._scope.__enter__()
        return self

    async def _watch(self, receive: Receive) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected = True
            self._scope.cancel()
        finally:
            self.watching = False

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        assert self._task_group is not None
        try:
            swallowed = self._scope.__exit__(exc_type, exc, tb)
        finally:
            self._task_group.cancel_scope.cancel()  # the work is over, one way or another: stop watching
            await self._task_group.__aexit__(None, None, None)
        if isinstance(exc, ClientDisconnect):  # Starlette read the body after the client left
            self.disconnected = swallowed = True
        return swallowed


class _ClientGone(Response):
    """What a cancelled endpoint returns: nobody will read it, and a spec 2.4 server's ``send`` may raise."""

    def __init__(self) -> None:
        super().__init__(status_code=CLIENT_CLOSED_REQUEST)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except OSError:
            pass


def _find_request(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Request:
    request = kwargs.pop(_REQUEST_PARAM, None)
    if isinstance(request, Request):
        return request
    for value in (*args, *kwargs.values()):
        if isinstance(value, Request):
            return value
    raise TypeError("cancel_on_disconnect: the endpoint was called without its Request")


def _decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | Response]]:
    if not inspect.iscoroutinefunction(func):
        raise TypeError(
            f"cancel_on_disconnect needs an async endpoint; {func.__qualname__} is sync, and a thread cannot be "
            "cancelled (see docs/library.md, 'Sync endpoints')"
        )

    @functools.wraps(func)
    async def endpoint(*args: P.args, **kwargs: P.kwargs) -> R | Response:
        request = _find_request(args, kwargs)
        async with DisconnectGuard(request):
            return await func(*args, **kwargs)
        return _ClientGone()  # reached only when the guard cancelled the work

    # FastAPI builds its dependency graph from the signature and fills one Request parameter: when the endpoint
    # has none, add one for us (hidden from the OpenAPI schema, like every Request parameter). Plain Starlette
    # passes the request positionally and ignores signatures.
    signature = inspect.signature(func)
    if not _has_request_parameter(func):
        params = list(signature.parameters.values())
        extra = inspect.Parameter(_REQUEST_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=Request)
        at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
        params.insert(at, extra)
        endpoint.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return endpoint


def _has_request_parameter(func: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(func, eval_str=True)
    except NameError:  # an annotation only importable under TYPE_CHECKING: judge the strings by name
        signature = inspect.signature(func)
    for param in signature.parameters.values():
        annotation = param.annotation
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        if isinstance(annotation, str):
            if annotation.rpartition(".")[2] == "Request":
                return True
        elif isinstance(annotation, type) and issubclass(annotation, Request):
            return True
    return False


@overload
def cancel_on_disconnect(target: Request) -> DisconnectGuard: ...


@overload
def cancel_on_disconnect(target: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | Response]]: ...


def cancel_on_disconnect(
    target: Request | Callable[P, Awaitable[R]],
) -> DisconnectGuard | Callable[P, Awaitable[R | Response]]:
    """Cancel an endpoint's work when its client disconnects; stop watching as soon as the work is done.

    As a decorator (put it under the route decorator); a cancelled endpoint returns an empty 499 that the
    server drops, since nobody is there to read it:

    >>> @app.get("/report")
    ... @cancel_on_disconnect
    ... async def report(year: int) -> dict:
    ...     return await build_report(year)

    As an async context manager, like ``anyio.move_on_after``: the block is cancelled, the code after it runs,
    and ``guard.disconnected`` says what happened (``guard.response`` is the empty 499 to return then):

    >>> async with cancel_on_disconnect(request) as guard:
    ...     result = await build_report(year)
    >>> if guard.disconnected:
    ...     return guard.response

    The request body is read before watching starts (``receive()`` has one reader); it stays available through
    ``request.body()`` / ``.json()`` / ``.form()``. See the module docstring for the details.
    """
    if isinstance(target, Request):
        return DisconnectGuard(target)
    if callable(target):
        return _decorate(target)
    raise TypeError(f"cancel_on_disconnect takes a Request or an async endpoint, not {type(target).__name__}")
