"""What the auth plugins share: the refusal answers, the identity header, reading a credentials file."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from ..base import Answer, RequestContext, _settable

DEFAULT_IDENTITY_HEADER = "x-fastgate-identity"


def refusal(request: RequestContext, status: int, detail: str, headers: list[tuple[str, str]] | None = None) -> Answer:
    """A 401 ``unauthorized`` or 403 ``forbidden`` in the shape of fastgate's own errors (proxy/errors.py)."""
    code = "unauthorized" if status == 401 else "forbidden" if status == 403 else "auth_unavailable"
    return Answer.json(status, {"error": code, "detail": detail, "request_id": request.request_id}, headers or ())


def header_name(value: str | None, key: str) -> bytes | None:
    """A header name option, lower-cased bytes (``None`` stays ``None``); a bad one is a ValueError naming ``key``."""
    if value is None:
        return None
    try:
        return _settable(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


class IdentityHeader:
    """Passes the verified identity upstream in one header, and removes any client-sent copy (no spoofing)."""

    __slots__ = ("name",)

    def __init__(self, name: str | None) -> None:
        self.name = header_name(name, "identity_header")

    def scrub(self, request: RequestContext) -> None:
        """Remove what the client sent under the identity header (called before the check, pass or fail).

        The gateway has already removed it (``asserted_headers``); this keeps the plugin safe where it runs in a
        chain of the user's own making."""
        name = self.name
        if name is not None:
            raw = request.headers.raw
            if any(k == name for k, _ in raw):
                raw[:] = [pair for pair in raw if pair[0] != name]

    def set(self, request: RequestContext, identity: str) -> None:
        request.identity = identity
        if self.name is not None:
            request.headers.raw.append((self.name, identity.encode("utf-8", "replace")))


def asserted_headers(plugins: Iterable[object]) -> frozenset[bytes]:
    """The header names the auth plugins among ``plugins`` assert to the upstream, ``x-fastgate-identity`` always.

    An ``identity_header`` (api_key, jwt, basic_auth) and forward_auth's ``identity_header_from``. The gateway
    removes every one of them from every request, on every route, before any plugin runs (proxy/headers.py), so that
    no route lets a client send what another route's plugin vouches for.
    """
    names = {DEFAULT_IDENTITY_HEADER.encode("ascii")}
    for plugin in plugins:
        identity = getattr(plugin, "identity", None)
        if isinstance(identity, IdentityHeader) and identity.name is not None:
            names.add(identity.name)
        named = getattr(plugin, "identity_header_from", None)
        if isinstance(named, bytes):
            names.add(named)
    return frozenset(names)


def remove_header(request: RequestContext, name: bytes) -> None:
    raw = request.headers.raw
    raw[:] = [pair for pair in raw if pair[0] != name]


def read_lines(path: str, key: str) -> list[tuple[int, str]]:
    """The meaningful lines of a credentials file, numbered (blank lines and ``#`` comments skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{key}: cannot read {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{key}: {path!r} is not UTF-8 text") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append((number, line))
    if not lines:
        raise ValueError(f"{key}: {path!r} has no entries")
    return lines


def fingerprint(secret: bytes) -> str:
    """A short, non-reversible name for an unnamed secret (for logs and ``request.identity``)."""
    return "key-" + hashlib.sha256(secret).hexdigest()[:12]
