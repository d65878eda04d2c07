"""Where one upstream's WebSockets are dialed: built with the gateway, apart from the dialing code
(``upstream/websocket.py``), which imports ``websockets``' asyncio client only on a worker's first WebSocket."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WebSocketTarget:
    """Where one upstream's WebSockets are dialed, and the limits of that hop.

    >>> WebSocketTarget("api", "127.0.0.1", 9000, connect_timeout=2.0, ping_interval=None)
    WebSocketTarget(name='api', host='127.0.0.1', port=9000, tls=None, connect_timeout=2.0, ...)
    """

    name: str
    host: str
    port: int
    # Built once per upstream (``tls.client_context``), never per dial: loading the CA bundle costs tens of
    # milliseconds of CPU on the event loop. None: plain ``ws://``.
    tls: ssl.SSLContext | None = None
    connect_timeout: float | None = 5.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 5.0
    max_message_size: int | None = 16 * 1024 * 1024
