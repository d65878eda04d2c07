"""Uvicorn's websockets-sansio protocol, without the false error after a WebSocket denial response, and honouring a
close frame between the fragments of a message (RFC 6455 §5.4, see ``fastgate._ws_frames``).

fastgate answers a handshake it will not proxy with an HTTP response through the ASGI denial-response extension
(``websocket.http.response.start``/``.body``): the upstream's own 401/404, or fastgate's 502/504. Uvicorn 0.54's
``WebSocketsSansIOProtocol`` sends that response and closes the connection, but never sets
``handshake_complete``, the one flag ``run_asgi`` tests when the app returns; so every denial is followed by
``ERROR: ASGI callable returned without completing handshake.`` on ``uvicorn.error``, although the client got
its answer (its ``send_500_response`` does nothing once a denial response has started, so only the log is
wrong). :class:`FastgateWebSocketProtocol` sets the flag once the last body message of the denial has gone out.

A denial left unfinished (``more_body`` and then nothing) is still reported. This leans on that one attribute
of ``uvicorn.protocols.websockets.websockets_sansio_impl``, and on ``conn``, the websockets server protocol it
drives, which is replaced by ``_ws_frames.FastgateServerProtocol``; that is why pyproject pins uvicorn to one minor
release. ``tests/proxy/test_websocket_logging.py`` shows the stock protocol's error, and
``test_close_frame_between_fragments_closes_cleanly_autobahn_7_1_5`` the 1002; both fail loudly if this moves.

A text message that is not UTF-8 is the client's error: the session is failed with 1007 and the connection closed at
once, with one short line on ``uvicorn.error`` at INFO. Uvicorn logs it with ``logger.exception``: an ERROR with a
traceback, formatted and written before the close goes out, on the path of Autobahn's 6.x invalid-UTF-8 cases, which
give the server 0.5 s (on a loaded machine they ran out of it, "FAILED BY CLIENT"), and a client's bad input is no
server error. ``send_receive_event_to_app`` is Uvicorn's, with that one branch changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from ._ws_frames import FastgateServerProtocol


class FastgateWebSocketProtocol(WebSocketsSansIOProtocol):
    """``ws=`` for Uvicorn: websockets-sansio whose denial responses count as a completed handshake, and which
    closes cleanly on a close frame between fragments (Autobahn case 7.1.5) instead of failing with 1002.

    >>> uvicorn.run(app, ws=FastgateWebSocketProtocol)
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The same websockets server protocol as Uvicorn's (its permessage-deflate settings, size limit and logger),
        # as the subclass of ``_ws_frames``.
        self.conn = FastgateServerProtocol(
            extensions=self.conn.available_extensions, max_size=config.ws_max_size, logger=self.conn.logger
        )

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            self.logger.info(
                "%s - WebSocket closed with 1007: text message is not UTF-8 (%s)", self._peer(), exc.reason
            )
            self.conn.send_close(1007, "invalid UTF-8")
            self.handle_parser_exception()  # sends the close and closes the connection, as for any protocol error
            return
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "-"

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True
