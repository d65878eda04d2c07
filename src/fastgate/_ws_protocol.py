"""Uvicorn's websockets-sansio protocol, without the false error after a WebSocket denial response.

fastgate answers a handshake it will not proxy with an HTTP response through the ASGI denial-response extension
(``websocket.http.response.start``/``.body``): the upstream's own 401/404, or fastgate's 502/504. Uvicorn 0.54's
``WebSocketsSansIOProtocol`` sends that response and closes the connection, but never sets
``handshake_complete``, the one flag ``run_asgi`` tests when the app returns; so every denial is followed by
``ERROR: ASGI callable returned without completing handshake.`` on ``uvicorn.error``, although the client got
its answer (its ``send_500_response`` does nothing once a denial response has started, so only the log is
wrong). :class:`FastgateWebSocketProtocol` sets the flag once the last body message of the denial has gone out.

A denial left unfinished (``more_body`` and then nothing) is still reported. This leans on that one attribute
of ``uvicorn.protocols.websockets.websockets_sansio_impl``, which is why pyproject pins uvicorn to one minor
release; ``tests/proxy/test_websocket_logging.py`` shows the stock protocol's error, and fails loudly if it moves.
"""

from __future__ import annotations

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class FastgateWebSocketProtocol(WebSocketsSansIOProtocol):
    """``ws=`` for Uvicorn: websockets-sansio whose denial responses count as a completed handshake.

    >>> uvicorn.run(app, ws=FastgateWebSocketProtocol)
    """

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True
