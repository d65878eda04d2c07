"""The short JSON answer the gateway gives when it cannot forward a request."""

from __future__ import annotations

import json

from .._types import Send
from ..exceptions import FastgateError


async def error_response(send: Send, exc: FastgateError, request_id: bytes) -> None:
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
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
