"""``forward_auth``: ask an authentication server about each request (Traefik's ForwardAuth semantics).

    plugins:
      - use: forward_auth
        options: {url: "http://auth:9000/check", copy_headers: [x-user]}

A ``GET`` goes to ``url`` with the request's headers (not its body, nor Content-Length or Transfer-Encoding) and
``X-Forwarded-Method``, ``-Proto``, ``-Host``, ``-Uri`` and ``-For`` describing the original request (its method
travels in ``X-Forwarded-Method``, as Traefik does it), through a fastgate pooled client opened at startup. A 2xx
answer lets the request through, with each ``copy_headers`` header of the answer set on the upstream request (a
client-sent copy is removed first, whether or not the answer has one, as Traefik's ``authResponseHeaders``). Any
other answer goes back to the client as it is: status, headers (hop-by-hop ones dropped) and body (up to
``max_body`` bytes). With ``identity_header_from: x-user``, that header of a 2xx answer becomes ``request.identity``
(for ``rate_limit: {key: identity}`` and the access record); without it in the answer there is no identity. An
auth server that cannot be reached, times out or answers garbage gives 503
``auth_unavailable`` and one log line (Traefik answers 500 there).
"""

from __future__ import annotations

from collections.abc import Sequence

from ...exceptions import UpstreamError
from ...observability.logging import error_logger
from ...observability.safe_url import safe_url
from ...proxy.paths import PATH_KEY
from ..base import PROTECTED_HEADERS, Answer, Plugin, RequestContext
from ._common import header_name, refusal
from ._http import OutboundClient

__all__ = ["ForwardAuth"]

# Not sent to the auth server: the body's framing (no body goes), Host (the auth server's own) and the
# X-Forwarded-* we set from the original request.
_NOT_SENT = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"x-forwarded-method",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-uri",
        b"x-forwarded-for",
    }
)

# Not relayed from a refusing auth server: framing and hop-by-hop headers (ours to set) and its own request id.
_NOT_RETURNED = PROTECTED_HEADERS | {b"x-request-id"}


class ForwardAuth(Plugin):
    """Options: ``url`` (required), ``copy_headers`` ([]), ``timeout`` (5 s), ``max_body`` (65536), ``ca_file``,
    ``identity_header_from`` (none: the header of the auth server's 2xx answer that names the caller)."""

    def __init__(
        self,
        url: str,
        copy_headers: Sequence[str] = (),
        timeout: float = 5.0,
        max_body: int = 65536,
        ca_file: str | None = None,
        identity_header_from: str | None = None,
    ) -> None:
        if timeout <= 0 or max_body < 0:
            raise ValueError("timeout, max_body: must be positive")
        if isinstance(copy_headers, str):
            raise ValueError("copy_headers: a list of header names")
        names = [header_name(name, "copy_headers") for name in copy_headers]
        self.copy_headers = frozenset(name for name in names if name is not None)
        self.identity_header_from = header_name(identity_header_from, "identity_header_from")
        self.client = OutboundClient("forward_auth", url, "url", timeout, ca_file)
        self.url = url
        self.max_body = max_body

    async def startup(self) -> None:
        await self.client.open()

    async def shutdown(self) -> None:
        await self.client.close()

    async def on_request(self, request: RequestContext) -> Answer | None:
        raw = request.headers.raw
        headers = [pair for pair in raw if pair[0] not in _NOT_SENT]
        scope = request.scope or {}
        # the canonical path the route matched (proxy/paths.py), so the auth server's rules see what fastgate routed
        uri = scope.get(PATH_KEY) or scope.get("raw_path") or request.path.encode("latin-1", "replace") or b"/"
        query = scope.get("query_string", b"")
        forwarded = {k: v for k, v in raw if k.startswith(b"x-forwarded-")}
        client = request.client[0].encode("latin-1") if request.client else b""
        headers += [
            (b"x-forwarded-method", request.method.encode("latin-1")),
            (b"x-forwarded-proto", forwarded.get(b"x-forwarded-proto", b"http")),
            (
                b"x-forwarded-host",
                forwarded.get(b"x-forwarded-host") or (request.headers.get("host") or "").encode("latin-1"),
            ),
            (b"x-forwarded-uri", uri + (b"?" + query if query else b"")),
            (b"x-forwarded-for", forwarded.get(b"x-forwarded-for", client)),
        ]
        try:
            status, answer_headers, body = await self.client.request(b"GET", headers, self.max_body)
        except (UpstreamError, ValueError, OSError) as exc:
            error_logger.error(
                "forward_auth: %s %s -> 503: auth server %s failed: %s (request_id %s)",
                request.method,
                request.path,
                safe_url(self.url),
                exc,
                request.request_id,
            )
            return refusal(request, 503, "authentication server unavailable")
        if 200 <= status < 300:
            wanted = self.identity_header_from
            if wanted is not None:
                identity = next((v for k, v in answer_headers if k.lower() == wanted), None)
                if identity:  # empty or absent: no identity (a rate limit by identity counts under the client IP)
                    request.identity = identity.decode("utf-8", "replace")
            copy = self.copy_headers
            if copy:
                raw[:] = [pair for pair in raw if pair[0] not in copy]
                raw.extend((k.lower(), v) for k, v in answer_headers if k.lower() in copy)
            return None
        passed = [(k.lower(), v) for k, v in answer_headers if k.lower() not in _NOT_RETURNED]
        return Answer(status, passed, body)
