"""The short JSON answer the gateway gives when it cannot forward a request; on a gRPC request, a gRPC answer
(Trailers-Only, ``proxy/grpc.py``) instead."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .._types import Send
from ..exceptions import FastgateError
from . import grpc

if TYPE_CHECKING:
    from ..plugins.base import Answer
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
    """:func:`error_response` through the exchange core's downstream (head and body in one write where it can).

    A gRPC request (``content-type: application/grpc*``) gets a Trailers-Only answer: HTTP 200, ``grpc-status``
    from ``exc`` (``grpc.grpc_status_for``), ``grpc-message`` its detail, the other headers of ``parts`` (CORS,
    ``www-authenticate``) kept; sent as a head and an empty end (one HEADERS frame over HTTP/2).
    """
    if grpc.is_grpc(down.headers):
        extra = parts[0] if parts is not None else exc.headers
        head = grpc.trailers_only(grpc.grpc_status_for(exc), exc.detail or exc.code, request_id, extra)
        await down.send_head(200, head, defer=True)
        await down.send_body(b"", False)
        return
    headers, body = parts if parts is not None else error_parts(exc, request_id)
    await down.send_head(exc.status_code, headers, defer=True)
    await down.send_body(body, False)


async def grpc_answer(down: Downstream, answer: Answer, headers: list[tuple[bytes, bytes]], request_id: bytes) -> None:
    """A plugin's :class:`~fastgate.plugins.base.Answer` to a gRPC request, as a Trailers-Only answer: the status
    mapped from its HTTP status (401 ``UNAUTHENTICATED``, 403 ``PERMISSION_DENIED``...; a 2xx answer is ``OK``),
    the message from its body (``grpc.answer_message``), its other headers kept."""
    status = grpc.OK if 200 <= answer.status < 300 else grpc.grpc_status_for_http(answer.status)
    message = "" if status == grpc.OK else grpc.answer_message(answer.status, answer.body)
    await down.send_head(200, grpc.trailers_only(status, message, request_id, headers), defer=True)
    await down.send_body(b"", False)
