"""``cors``: Cross-Origin Resource Sharing answered at the gateway, as the Fetch standard describes it.

    plugins:
      - use: cors
        options: {allow_origins: ["https://app.example"], allow_methods: [GET, POST], allow_headers: [content-type],
                  max_age: 600, allow_credentials: true}

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered here with 204 and the
``Access-Control-Allow-*`` headers, and never reaches the upstream; one from an origin, method or header list that
is not allowed gets 403 without any CORS header (the browser then refuses the real request). Other requests go
upstream as they are; the response gets ``Access-Control-Allow-Origin`` (with ``Vary: Origin`` unless it is
``*``), ``-Allow-Credentials`` and ``-Expose-Headers`` when the request's ``Origin`` is allowed, and loses any the
upstream set when it is not. Put ``cors`` before the auth plugins of a route: preflights carry no credentials.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .base import Answer, Plugin, RequestContext, ResponseHead

__all__ = ["Cors"]

_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")
_SAFELISTED_METHODS = frozenset({"GET", "HEAD", "POST"})
_STATE_KEY = "cors_origin"
_CORS_RESPONSE_HEADERS = frozenset(
    {b"access-control-allow-origin", b"access-control-allow-credentials", b"access-control-expose-headers"}
)


def _names(values: Sequence[str], key: str) -> list[str]:
    if isinstance(values, str):
        raise ValueError(f"{key}: a list, e.g. [{values}]")
    out = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{key}: {value!r} is not a name")
        out.append(value.strip())
    return out


class Cors(Plugin):
    """Options: ``allow_origins`` (required: origins like ``https://app.example``, or ``*``), ``allow_methods``
    ([GET, HEAD, PUT, PATCH, POST, DELETE]), ``allow_headers`` (null: whatever the preflight asks for),
    ``expose_headers`` ([]), ``max_age`` (null: the browser's default), ``allow_credentials`` (false)."""

    early_answers = True  # an auth plugin's 401 after this one carries the CORS headers (the browser can read it)

    def __init__(
        self,
        allow_origins: Sequence[str],
        allow_methods: Sequence[str] = ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"),
        allow_headers: Sequence[str] | None = None,
        expose_headers: Sequence[str] = (),
        max_age: int | None = None,
        allow_credentials: bool = False,
    ) -> None:
        origins = [origin.lower().rstrip("/") for origin in _names(allow_origins, "allow_origins")]
        if not origins:
            raise ValueError("allow_origins: list at least one origin, or '*'")
        for origin in origins:
            if origin != "*" and _ORIGIN.fullmatch(origin) is None:
                raise ValueError(f"allow_origins: {origin!r} is not an origin like 'https://app.example:8443'")
        self.any_origin = "*" in origins
        if allow_credentials and self.any_origin:
            raise ValueError("allow_origins: '*' cannot be used with allow_credentials (the Fetch standard forbids it)")
        methods = [method.upper() for method in _names(allow_methods, "allow_methods")]
        if "*" in methods and allow_credentials:
            raise ValueError("allow_methods: '*' cannot be used with allow_credentials")
        headers = None if allow_headers is None else [h.lower() for h in _names(allow_headers, "allow_headers")]
        if headers is not None and "*" in headers and allow_credentials:
            raise ValueError("allow_headers: '*' cannot be used with allow_credentials")
        if max_age is not None and (not isinstance(max_age, int) or max_age < 0):
            raise ValueError("max_age: seconds, a whole number >= 0")
        self.origins = frozenset(origins)
        self.methods = frozenset(methods)
        self.any_method = "*" in self.methods
        self.headers = None if headers is None else frozenset(headers)
        self.credentials = allow_credentials
        # what a response carries for an allowed origin; the origin itself is echoed unless any origin will do
        self.wildcard = self.any_origin and not allow_credentials
        extra: list[tuple[bytes, bytes]] = []
        if allow_credentials:
            extra.append((b"access-control-allow-credentials", b"true"))
        self.preflight_extra = list(extra)
        self.preflight_extra.append((b"access-control-allow-methods", ", ".join(methods).encode("latin-1")))
        if headers is not None and headers:
            self.preflight_extra.append((b"access-control-allow-headers", ", ".join(headers).encode("latin-1")))
        if max_age is not None:
            self.preflight_extra.append((b"access-control-max-age", b"%d" % max_age))
        exposed = _names(expose_headers, "expose_headers")
        if exposed:
            extra.append((b"access-control-expose-headers", ", ".join(exposed).encode("latin-1")))
        self.response_extra = extra

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    async def on_request(self, request: RequestContext) -> Answer | None:
        origin = request.headers.get("origin")
        if origin is None:
            return None
        if request.method == "OPTIONS":
            wanted = request.headers.get("access-control-request-method")
            if wanted is not None:
                return self._preflight(request, origin, wanted)
        request.state[_STATE_KEY] = origin if self.allows(origin) else ""
        return None

    def _preflight(self, request: RequestContext, origin: str, method: str) -> Answer:
        asked = request.headers.get("access-control-request-headers") or ""
        names = [name.strip().lower() for name in asked.split(",") if name.strip()]
        allowed = self.allows(origin) and (self.any_method or method in self.methods or method in _SAFELISTED_METHODS)
        if allowed and self.headers is not None and "*" not in self.headers:
            allowed = all(name in self.headers for name in names)
        if not allowed:
            detail = "CORS preflight not allowed"
            return Answer.json(403, {"error": "forbidden", "detail": detail, "request_id": request.request_id})
        headers: list[tuple[str | bytes, str | bytes]] = [
            (b"access-control-allow-origin", b"*" if self.wildcard else origin.encode("latin-1")),
            *self.preflight_extra,
        ]
        vary = [] if self.wildcard else ["Origin"]
        if self.headers is None and names:
            headers.append((b"access-control-allow-headers", ", ".join(names).encode("latin-1")))
            vary.append("Access-Control-Request-Headers")
        if vary:
            headers.append((b"vary", ", ".join(vary).encode("latin-1")))
        return Answer(204, headers)

    async def on_response(self, request: RequestContext, response: ResponseHead) -> None:
        raw = response.headers.raw
        origin = request.state.get(_STATE_KEY) if request._state is not None else None
        if origin is None:  # no Origin: not a CORS request, but the answer may differ for one that has it
            if not self.wildcard:
                _vary_origin(raw)
            return
        raw[:] = [pair for pair in raw if pair[0] not in _CORS_RESPONSE_HEADERS]
        if not origin:
            if not self.wildcard:
                _vary_origin(raw)
            return
        raw.append((b"access-control-allow-origin", b"*" if self.wildcard else origin.encode("latin-1")))
        raw.extend(self.response_extra)
        if not self.wildcard:
            _vary_origin(raw)


def _vary_origin(raw: list[tuple[bytes, bytes]]) -> None:
    for name, value in raw:
        if name == b"vary" and (b"origin" in value.lower() or value.strip() == b"*"):
            return
    raw.append((b"vary", b"Origin"))
