"""Dialing an upstream WebSocket: the opening handshake, on the ``websockets`` library's asyncio client.

This is the one place where that client's errors become fastgate's, as ``upstream/transport.py`` is for HTTP:
refused or unreachable -> :class:`UpstreamConnectError` (502); no answer within the connect timeout ->
:class:`UpstreamTimeout` (504); a malformed or non-WebSocket answer -> :class:`UpstreamProtocolError` (502); any
status other than 101 -> :class:`UpstreamRefused`, carrying the upstream's status, headers and body so the client
gets exactly that answer.

The handshake request is ours: the path as the client sent it, Host and the application headers as
``proxy/headers.py`` rewrote them. ``websockets`` adds only Upgrade, Connection, Sec-WebSocket-Key/-Version and,
when the client offered subprotocols, Sec-WebSocket-Protocol. It sends no Sec-WebSocket-Extensions: compression
is negotiated per hop, and the upstream hop has none (a compressed frame cannot be relayed as it is anyway, since
ASGI hands over whole messages). Redirects are not followed and no proxy from the environment is used: a 3xx is
the upstream's answer and goes back to the client like any refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
from websockets.asyncio.client import ClientConnection
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.http11 import Request
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from .._ws_frames import FastgateClientProtocol
from ..exceptions import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamTimeout,
)
from .transport import UpstreamRequest
from .ws_target import WebSocketTarget

if TYPE_CHECKING:
    from .cluster import Cluster


class _HandshakeProtocol(FastgateClientProtocol):
    """``websockets``' client protocol, sending our request line and headers instead of its own (and honouring a
    close frame between fragments, see ``fastgate._ws_frames``)."""

    def __init__(self, target: WebSocketTarget, path: str, headers: Sequence[tuple[str, str]], **kwargs: Any) -> None:
        scheme = "wss" if target.tls else "ws"
        host = f"[{target.host}]" if ":" in target.host else target.host
        super().__init__(parse_uri(f"{scheme}://{host}:{target.port}/"), **kwargs)
        self._path = path
        self._headers = headers

    def connect(self) -> Request:
        generated = super().connect()  # Host (replaced by ours), Upgrade, Connection, Sec-WebSocket-*
        headers = Headers()
        for name, value in self._headers:
            headers[name] = value
        for name, value in generated.headers.raw_items():
            if name != "Host":
                headers[name] = value
        return Request(self._path, headers)


class _UpstreamConnection(ClientConnection):
    """websockets' client connection, with its close timeout enforced while nothing is being sent.

    websockets enforces ``close_timeout`` only while one of our sends waits. An upstream that sent a close frame,
    or that we failed for a protocol error, but keeps its TCP connection open would otherwise hold ``recv()``
    (and the client's session) until the next keep-alive ping: it is aborted at the close deadline instead.
    """

    _close_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._close_timer is None and self.close_deadline is not None:
            self._close_timer = self.loop.call_at(self.close_deadline, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        super().connection_lost(exc)


async def dial(
    target: WebSocketTarget, path: str, headers: Sequence[tuple[str, str]], subprotocols: Sequence[str]
) -> ClientConnection:
    """Open a WebSocket to ``target`` at ``path`` (with its query) and complete the opening handshake.

    >>> upstream = await dial(WebSocketTarget("chat", "127.0.0.1", 9000), "/chat", [("host", "chat")], ["v2"])
    >>> upstream.subprotocol  # what the upstream chose; its handshake response is ``upstream.response``

    ``headers`` are sent as they are, Host included. Raises an :class:`UpstreamError` subclass when no
    WebSocket could be opened, :class:`UpstreamRefused` when the upstream answered with another status.
    """
    loop = asyncio.get_running_loop()
    offered = [Subprotocol(name) for name in subprotocols] or None

    def factory() -> ClientConnection:
        protocol = _HandshakeProtocol(target, path, headers, subprotocols=offered, max_size=target.max_message_size)
        return _UpstreamConnection(
            protocol,
            ping_interval=target.ping_interval,
            ping_timeout=target.ping_timeout,
            close_timeout=target.close_timeout,
        )

    where = f"[{target.host}]:{target.port}" if ":" in target.host else f"{target.host}:{target.port}"
    connection: ClientConnection | None = None
    try:
        with anyio.fail_after(target.connect_timeout):
            _, connection = await loop.create_connection(
                factory, target.host, target.port, ssl=target.tls, server_hostname=target.host if target.tls else None
            )
            await connection.handshake(None, None)
    except TimeoutError:
        _abort(connection)
        raise UpstreamTimeout(
            f"no WebSocket handshake answer from {where} within {target.connect_timeout}s", target.name, where
        ) from None
    except InvalidStatus as exc:
        _abort(connection)
        response = exc.response
        raise UpstreamRefused(
            f"upstream refused the WebSocket handshake with {response.status_code}",
            target.name,
            status=response.status_code,
            headers=[(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.raw_items()],
            body=bytes(response.body),
            target=where,
        ) from exc
    except InvalidHandshake as exc:
        _abort(connection)
        raise UpstreamProtocolError(
            f"invalid WebSocket handshake answer from {where}: {exc}", target.name, where
        ) from exc
    except OSError as exc:
        _abort(connection)
        raise UpstreamConnectError(f"cannot connect to {where}: {exc.strerror or exc}", target.name, where) from exc
    except BaseException:
        _abort(connection)
        raise
    connection.start_keepalive()
    return connection


def _abort(connection: ClientConnection | None) -> None:
    if connection is not None:
        connection.transport.abort()


async def dial_cluster(
    cluster: Cluster,
    base: WebSocketTarget,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    subprotocols: Sequence[str],
    client: bytes = b"",
) -> ClientConnection:
    """``dial`` a target of ``cluster`` picked as HTTP requests are (balancer, health, Host rewrite).

    ``path`` is below the targets' path prefix; ``headers`` start with Host. A target that cannot be connected to is
    recorded for passive health and, within the upstream's ``max_retries``, another one is dialed.
    """
    from .cluster import failure_kind

    request = UpstreamRequest(b"GET", path, headers, client=client)
    tried: list[int] = []
    while True:
        target = cluster.pick(request, tried or None)
        config = target.config
        where = replace(base, host=config.host, port=config.port, tls=base.tls if config.scheme == "https" else None)
        try:
            connection = await dial(
                where,
                (config.path_prefix + path).decode("latin-1"),
                [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers],
                subprotocols,
            )
        except UpstreamRefused as exc:
            cluster.record(target.index, exc.status_code)
            raise
        except UpstreamError as exc:
            target.errors += 1
            kind = failure_kind(exc)
            if kind is not None:
                cluster.record(target.index, kind)
            if kind != "connect_error" or len(tried) >= cluster.retry.max_retries:
                raise
            tried.append(target.index)
            continue
        finally:
            target.requests += 1
        cluster.record(target.index, 101)
        return connection
