"""The TLS handshake of a listener's connections, run by fastgate rather than inside the event loop's server.

A server created with ``ssl=`` (as Uvicorn does for ``server.tls``) hides a connection from its protocol until the
handshake is done: the handshake is bounded only by the loop's ``ssl_handshake_timeout`` (60 s by default in asyncio
and uvloop, and Uvicorn does not set it), and the protocol cannot count the connection. :class:`TlsHandshake` is the
protocol of such a connection until then: it makes the real protocol at once, lets it count the connection (and
refuse it) through :class:`HandshakeAware`, and upgrades the TCP transport with ``loop.start_tls`` under the deadline
the protocol gives. uvloop's ``start_tls`` wraps the transport in the same ``SSLProtocol`` its ``ssl=`` servers use,
so the connection is served as before once the handshake is done.

A protocol without the :class:`HandshakeAware` methods gets the loop's default handshake timeout, uncounted, as
with ``ssl=``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger("fastgate.server")


@runtime_checkable
class HandshakeAware(Protocol):
    """What a protocol offers to be told about its connection before the TLS handshake is done."""

    @property
    def handshake_timeout(self) -> float | None:
        """Seconds the handshake may take (``None``: the loop's default, 60 s)."""

    def handshake_started(self, transport: asyncio.BaseTransport) -> bool:
        """The TCP connection is open and its handshake about to start. False: refused (the protocol closed it).

        When it returns True, the protocol then gets either ``connection_made`` with the TLS transport, or
        ``connection_lost`` (perhaps more than once) when the handshake fails or times out.
        """

    def connection_lost(self, exc: Exception | None) -> None: ...


class TlsHandshake(asyncio.Protocol):
    """The protocol of a TLS listener's connection until ``start_tls`` takes the transport over.

    ``start_tls`` is stepped here, in ``connection_made``, up to its wait for the handshake (an eager start, as
    Python 3.12's eager tasks do): the transport's protocol is then already the TLS one, before the loop starts
    reading, so no byte of the ClientHello can reach this protocol instead (a task would start a loop turn later).
    """

    __slots__ = ("app", "aware", "context", "factory", "loop", "shutdown_timeout", "timeout", "transport")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext,
        timeout: float | None = None,
        shutdown_timeout: float | None = None,
    ) -> None:
        self.loop = loop
        self.factory = factory
        self.context = context
        self.timeout = timeout
        self.shutdown_timeout = shutdown_timeout
        self.app: asyncio.BaseProtocol | None = None
        self.aware: HandshakeAware | None = None  # the app, when it is told of its connection from the accept
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        app = self.app = self.factory()
        self.transport = transport
        timeout = self.timeout
        if isinstance(app, HandshakeAware):
            if not app.handshake_started(transport):
                return
            self.aware = app
            timeout = app.handshake_timeout or timeout
        handshake = self.loop.start_tls(
            transport,  # type: ignore[arg-type]  # uvloop's transports are not asyncio subclasses
            app,
            self.context,
            server_side=True,
            ssl_handshake_timeout=timeout,
            ssl_shutdown_timeout=self.shutdown_timeout,
        )
        self._step(handshake)

    def connection_lost(self, exc: Exception | None) -> None:
        # Only when start_tls did not take the transport over: the connection was refused.
        if self.aware is not None:
            self.aware.connection_lost(exc)

    def _step(self, handshake: Coroutine[Any, Any, asyncio.BaseTransport | None]) -> None:
        try:
            waiting = handshake.send(None)
        except StopIteration as done:
            self._done(done.value)
        except OSError as exc:  # timed out (ConnectionAbortedError), refused by OpenSSL (SSLError), client gone
            self._failed(exc)
        else:
            if isinstance(waiting, asyncio.Future):
                waiting.add_done_callback(lambda _: self._step(handshake))
            else:  # a bare yield: step again next turn, as a task would
                self.loop.call_soon(self._step, handshake)

    def _done(self, tls: asyncio.BaseTransport | None) -> None:
        app = self.app
        assert app is not None
        if tls is None or tls.is_closing():  # the connection was closed (aborted) during the handshake
            self._failed(None)
            return
        app.connection_made(tls)

    def _failed(self, exc: Exception | None) -> None:
        logger.debug("TLS handshake failed: %r", exc)  # start_tls has closed the connection: nothing can be answered
        if self.transport is not None:
            self.transport.close()
        if self.aware is not None:
            self.aware.connection_lost(exc)


def tls_handshake_factory(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.BaseProtocol], context: ssl.SSLContext, **kwargs: Any
) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory for a plain-TCP server that serves ``factory``'s protocols over TLS with ``context``."""
    timeout, shutdown_timeout = kwargs.get("ssl_handshake_timeout"), kwargs.get("ssl_shutdown_timeout")
    return lambda: TlsHandshake(loop, factory, context, timeout, shutdown_timeout)
