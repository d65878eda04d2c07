"""What the exchange core (``proxy/http.py``) needs of the client side of one request: a protocol driver's half.

The core knows no ASGI and no wire format. A driver hands it one :class:`Downstream` per request: the request head
as the driver parsed it, a body source, a response sink, and cancellation in. Two drivers exist:

* fastgate's HTTP/1.1 server protocol: its ``RequestCycle`` (``serving/cycle.py``) *is* the downstream; the head
  goes in as parsed, the response goes out as bytes on the transport (no scope, no message dicts, one task per
  connection);
* the ASGI adapter (``proxy/asgi.py``): ``AsgiDownstream`` over an ASGI ``scope``/``receive``/``send``, for the
  library (``forward()``, ``ProxyApp``, a mounted gateway) and any ASGI server.

An HTTP/2 stream is one more driver: a stream's headers in, its DATA frames as the body source, HEADERS/DATA/trailing
HEADERS out, RST_STREAM as the disconnect.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class DisconnectScope(Protocol):
    """The exchange's cancel scope, as the driver wires it to the client going away (``proxy/http.py``)."""

    disconnected: bool
    expired: bool

    async def __aenter__(self) -> DisconnectScope: ...

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool: ...

    def watch(self) -> None:
        """The request body has been read: a driver that learns of a disconnect by reading may start now."""

    def finish(self) -> None:
        """The response is complete (or being closed): a disconnect from now on cancels nothing."""

    def expire(self) -> None:
        """End the exchange: its config was retired over ``server.drain_timeout`` ago."""


class Downstream(Protocol):
    """One request's client side. Attributes are the request head; methods read its body and send the response.

    ``headers``: lowercase names, values as sent, in order (the driver's own list; the core does not change it).
    ``target``: the request target to forward (origin-form, a mount prefix taken off). ``path``: the decoded path
    (plugins' ``RequestContext.path``). ``matched_path``: set by routing, the canonical path the route matched
    (``X-Forwarded-Uri``). ``offers_trailers``: the response can carry trailers. ``write_paused``: a send would wait
    for the client (read-ahead engages); always false for a driver that cannot tell.
    """

    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: str
    scheme: str
    client: tuple[str, int] | None
    matched_path: bytes | None

    @property
    def path(self) -> str: ...

    @property
    def scope(self) -> Any:
        """An ASGI-style scope dict of the request, for plugins that read one (built on first use by the HTTP/1.1
        driver)."""
        ...

    @property
    def offers_trailers(self) -> bool: ...

    @property
    def disconnected(self) -> bool: ...

    @property
    def write_paused(self) -> bool: ...

    def disconnect_scope(self, exchanges: set[Any]) -> DisconnectScope:
        """A new cancel scope for one exchange, cancelled when the client goes (``exchanges``: where it registers)."""
        ...

    async def read_body(self) -> tuple[bytes, bool]:
        """The next piece of the request body and whether more follows; raises ``ClientDisconnected``."""
        ...

    async def send_head(
        self, status: int, headers: Iterable[tuple[bytes, bytes]], *, trailers: bool = False, defer: bool = False
    ) -> None:
        """Start the response. ``defer``: hold the head back and write it with the first body piece (one write).
        ``trailers``: ``send_trailers`` will end the response."""
        ...

    async def send_body(self, data: bytes, more: bool) -> None: ...

    async def send_trailers(self, fields: list[tuple[bytes, bytes]]) -> None: ...

    def abort(self) -> None:
        """Cut the client off: a response it has started is seen as incomplete."""
        ...
