"""The short JSON answer the gateway gives when it cannot forward a request."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .._types import Send
from ..exceptions import FastgateError

if TYPE_CHECKING:
    from .downstream import Downstream


def error_parts(exc: FastgateError, request_id: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and JSON body of the answer for ``exc``."""
    body = json.dumps(
        {"error": exc.code, "detail": exc.detail, "request_id": request_id.decode("latin-1")}, separators=(",", ":")
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"x-request-id", request_id),
    ]
    headers.extend(exc.headers)
    if exc.status_code in (431, 400):
        headers.append((b"connection", b"close"))
    return headers, body


async def error_response(
    send: Send, exc: FastgateError, request_id: bytes, parts: tuple[list[tuple[bytes, bytes]], bytes] | None = None
) -> None:
    """Answer ``exc`` as short JSON; ``parts``: its ``error_parts`` as changed by plugins (``early_response``)."""
    headers, body = parts if parts is not None else error_parts(exc, request_id)
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def answer_error(
    down: Downstream,
    exc: FastgateError,
    request_id: bytes,
    parts: tuple[list[tuple[bytes, bytes]], bytes] | None = None,
) -> None:
    """:func:`error_response` through the exchange core's downstream (head and body in one write where it can)."""
    headers, body = parts if parts is not None else error_parts(exc, request_id)
    await down.send_head(exc.status_code, headers, defer=True)
    await down.send_body(body, False)
