"""A route's plugins, compiled once: per phase, the bound hooks of the plugins that define that phase.

How this works. When a route is built, each plugin is asked once which hooks it defines (a method that is not
:class:`Plugin`'s no-op default); each phase keeps a tuple of ``(name, bound method)``. A request on the route
then only calls hooks that do something: a plugin with only ``on_request`` costs one awaited call per request, and
a route without plugins has no chain at all (``None``: the exchange skips every plugin step).

Request hooks run in the route's order; response hooks in reverse order (the first plugin sees the response
last, as with middleware). An early answer (an :class:`Answer`, or an error a request hook raised) goes through
the response hooks of the plugins before the answering one that set ``early_answers`` (``cors``; see
:meth:`PluginChain.early_response`).

What a hook raises becomes :class:`PluginError` (a 500 ``internal_error`` for the client, one ``fastgate.error`` line
naming the plugin); a :class:`FastgateError` a hook raises on purpose (a 403, say, with its ``headers``) is answered
as that error.
"""

from __future__ import annotations

import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from typing import Any

import anyio

from ..exceptions import FastgateError
from ..observability.logging import error_logger
from .base import Answer, Exchange, Plugin, RequestContext, ResponseHead, valid_target

__all__ = ["PluginChain", "PluginError"]


class PluginError(FastgateError):
    """A plugin raised: the client gets a 500 ``internal_error`` (no detail), the log gets :meth:`log_line`."""

    def __init__(self, plugin: str, phase: str, error: BaseException) -> None:
        super().__init__("internal error")
        self.plugin = plugin
        self.phase = phase
        self.error = error

    def describe(self) -> str:
        """``TokenCheck.on_request raised KeyError: 'x' (at mypkg/auth.py:12)``: one line, no traceback."""
        frames = traceback.extract_tb(self.error.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        return f"plugin {self.plugin} failed in {self.phase}: {type(self.error).__name__}: {self.error}{where}"


def _hooks(plugins: Sequence[tuple[str, object]], method: str) -> tuple[tuple[str, Any], ...]:
    default = getattr(Plugin, method)
    found = []
    for name, plugin in plugins:
        defined = getattr(type(plugin), method, None)
        if defined is not None and defined is not default:
            found.append((name, getattr(plugin, method)))
    return tuple(found)


class PluginChain:
    """The plugins of one route, by phase.

    >>> chain = PluginChain([("token", TokenCheck(token="t"))])
    >>> answer = await chain.request(context)  # None: go on; an Answer: send it instead
    """

    __slots__ = (
        "plugins",
        "_request",
        "_request_at",
        "_body",
        "_response",
        "_early",
        "_finish",
        "_startup",
        "_shutdown",
    )

    def __init__(self, plugins: Sequence[tuple[str, object]]) -> None:
        self.plugins = tuple(plugins)
        position = {id(plugin): index for index, (_, plugin) in enumerate(self.plugins)}
        self._request = _hooks(plugins, "on_request")
        self._request_at = tuple(position[id(hook.__self__)] for _, hook in self._request)
        self._body = _hooks(plugins, "request_body")
        self._response = tuple(reversed(_hooks(plugins, "on_response")))
        self._early = tuple(
            (position[id(hook.__self__)], name, hook)
            for name, hook in self._response
            if getattr(hook.__self__, "early_answers", False) is True
        )
        self._finish = _hooks(plugins, "on_finish")
        self._startup = _hooks(plugins, "startup")
        self._shutdown = tuple(reversed(_hooks(plugins, "shutdown")))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.plugins)

    @property
    def wants_body(self) -> bool:
        return bool(self._body)

    @property
    def has_response(self) -> bool:
        return bool(self._response)

    @property
    def has_finish(self) -> bool:
        return bool(self._finish)

    def __repr__(self) -> str:
        return f"<PluginChain {list(self.names)}>"

    async def request(self, request: RequestContext) -> tuple[str, Answer] | None:
        """Run the request-head hooks in order; the first answer ends the chain: ``(plugin name, answer)``."""
        for at, (name, hook) in zip(self._request_at, self._request, strict=True):
            target = request.target
            request.answered_at = at  # for early_response, should this one answer or raise
            try:
                answer = await hook(request)
            except FastgateError:
                raise
            except Exception as exc:
                raise PluginError(name, "on_request", exc) from exc
            if request.target is not target and not valid_target(request.target):
                problem = ValueError(f"set target {request.target[:100]!r}: not an origin-form path and query")
                raise PluginError(name, "on_request", problem)
            if answer is not None:
                if not isinstance(answer, Answer):
                    raise PluginError(name, "on_request", TypeError(f"returned {answer!r}, not an Answer or None"))
                try:
                    answer.raw_headers(b"-")  # framing or malformed headers fail here, as the plugin's error
                except Exception as exc:
                    raise PluginError(name, "on_request", exc) from exc
                return name, answer
        request.answered_at = -1
        return None

    def body(self, request: RequestContext, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The body stream through each ``request_body`` hook in order (each one pulls from the one before)."""
        stream = body
        for name, hook in self._body:
            try:
                stream = _guarded(name, hook(request, stream))
            except Exception as exc:
                raise PluginError(name, "request_body", exc) from exc
        return stream

    async def response(self, request: RequestContext, response: ResponseHead) -> None:
        for name, hook in self._response:
            try:
                await hook(request, response)
            except FastgateError:
                raise
            except Exception as exc:
                raise PluginError(name, "on_response", exc) from exc

    @property
    def has_early(self) -> bool:
        """Whether a plugin here wants to see early answers (``Plugin.early_answers``: ``cors``)."""
        return bool(self._early)

    async def early_response(self, request: RequestContext, response: ResponseHead) -> None:
        """Run the response hooks of the plugins before the one that answered early (or raised) in ``on_request``,
        among those that ask for it (``Plugin.early_answers``).

        A refusal by an auth plugin then carries what ``cors`` (placed before it) adds to any response, so that a
        browser sees the 401 rather than a network error. Plugins at or after the answering one never saw the
        request, and do not see this answer.
        """
        before = request.answered_at
        if before <= 0:
            return
        for at, name, hook in self._early:
            if at < before:
                try:
                    await hook(request, response)
                except FastgateError:
                    raise
                except Exception as exc:
                    raise PluginError(name, "on_response", exc) from exc

    async def finish(self, request: RequestContext, exchange: Exchange) -> None:
        """Run the finish hooks; a failure is logged (the client has its answer) and the others still run."""
        for name, hook in self._finish:
            try:
                await hook(request, exchange)
            except Exception as exc:
                error_logger.error(
                    "%s (request_id %s)", PluginError(name, "on_finish", exc).describe(), request.request_id
                )

    async def startup(self) -> None:
        """Run the startup hooks in order; when one fails, shut down the plugins before it (in reverse), then raise."""
        for name, hook in self._startup:
            try:
                await hook()
            except Exception as exc:
                failed = hook.__self__
                position = next(i for i, (_, plugin) in enumerate(self.plugins) if plugin is failed)
                earlier = {id(plugin) for _, plugin in self.plugins[:position]}
                with anyio.CancelScope(shield=True):
                    await self._shut_down(hooks for hooks in self._shutdown if id(hooks[1].__self__) in earlier)
                raise RuntimeError(PluginError(name, "startup", exc).describe()) from exc

    async def shutdown(self) -> None:
        """Run the shutdown hooks in reverse order; a failure is logged and the others still run."""
        await self._shut_down(self._shutdown)

    @staticmethod
    async def _shut_down(hooks: Iterable[tuple[str, Any]]) -> None:
        for name, hook in hooks:
            try:
                await hook()
            except Exception as exc:
                error_logger.error("%s", PluginError(name, "shutdown", exc).describe())


async def _guarded(name: str, stream: AsyncIterator[bytes]) -> AsyncGenerator[bytes]:
    """``stream`` with what it raises charged to plugin ``name`` (errors from streams before it pass as they are)."""
    iterator = stream.__aiter__()
    try:
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except FastgateError:
                raise
            except Exception as exc:
                raise PluginError(name, "request_body", exc) from exc
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise PluginError(name, "request_body", TypeError(f"yielded {type(chunk).__name__}, not bytes"))
            yield bytes(chunk)
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
