"""Checks on a parsed request head that llhttp does not make. Pure functions on bytes; each raises a ClientError.

llhttp (strict mode) already refuses bad tokens, bare LF and CR, NUL/CR/LF in values, obs-fold, space before the
colon, bad chunk sizes and Content-Length with Transfer-Encoding. What is left is the request line's meaning and the
Host header (RFC 9112 §3):

* HTTP/1.x above 1.1 is served as 1.1 (RFC 9110 §2.5); other versions get 505 (HTTP/0.9 carries no headers to
  route on, 2.0 and up are other protocols);
* ``*`` is a target for OPTIONS only (§3.2.4); CONNECT (authority-form, §3.2.3) is a tunnel we do not offer;
* absolute-form (§3.2.2) is accepted as a server must, and its authority replaces Host;
* an HTTP/1.1 request carries exactly one Host, and it is a valid ``uri-host [":" port]`` (§3.2; RFC 3986 §3.2.2),
  so nothing like ``a b`` or ``evil.example/../x`` is ever copied into X-Forwarded-Host or routed on.
"""

from __future__ import annotations

from ..exceptions import BadRequest, VersionNotSupported

# reg-name and IPv4 characters (unreserved, sub-delims, pct-encoded), plus ':' for the port and '[]' for IP-literals
_HOST_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%:[]"


def check_version(version: str) -> str:
    """The version to serve the request as: 1.0, or 1.1 for any later 1.x (RFC 9110 §2.5)."""
    if version == "1.1" or version == "1.0":
        return version
    major, _, minor = version.partition(".")
    if major == "1" and minor.isdigit():
        return "1.1"
    raise VersionNotSupported(f"HTTP/{version} is not supported; use HTTP/1.1")


def is_valid_host(value: bytes) -> bool:
    """``uri-host [":" port]``: a reg-name, IPv4 address or bracketed IP literal, then an optional numeric port."""
    if not value or value.translate(None, _HOST_CHARS):
        return False
    if value.startswith(b"["):
        end = value.find(b"]")
        if end < 0 or value.find(b"[", 1) >= 0 or value.find(b"]", end + 1) >= 0:
            return False
        rest = value[end + 1 :]
        if not rest:
            return True
        if not rest.startswith(b":"):
            return False
        port = rest[1:]
    else:
        if value.find(b"[") >= 0 or value.find(b"]") >= 0:
            return False
        host, colon, port = value.partition(b":")
        if not host:
            return False
        if not colon:
            return True
    return not port or (port.isdigit() and len(port) <= 5)


def check_host(hosts: list[bytes], version: str) -> bytes:
    """The request's one Host value (``b""`` for an HTTP/1.0 request without one)."""
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    if not hosts:
        if version == "1.1":
            raise BadRequest("HTTP/1.1 request without a Host header")
        return b""
    host = hosts[0]
    if not is_valid_host(host):
        raise BadRequest(f"invalid Host header {host[:64]!r}")
    return host


def check_target(method: bytes, target: bytes) -> tuple[bytes, bytes | None]:
    """The origin-form target to serve, and the authority to use as Host when the client sent absolute-form."""
    if method == b"CONNECT":
        raise BadRequest("CONNECT is not supported")
    if target.startswith(b"/"):
        return target, None
    if target == b"*":
        if method == b"OPTIONS":
            return target, None
        raise BadRequest("'*' is a request target for OPTIONS only")
    lowered = target[:8].lower()
    for scheme in (b"http://", b"https://"):
        if lowered.startswith(scheme):
            rest = target[len(scheme) :]
            cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
            authority, path = rest[:cut], rest[cut:]
            if authority.find(b"@") >= 0 or not is_valid_host(authority):
                raise BadRequest(f"invalid authority in request target {target[:64]!r}")
            if not path.startswith(b"/"):
                path = b"/" + path
            return path, authority
    raise BadRequest(f"invalid request target {target[:64]!r}")
