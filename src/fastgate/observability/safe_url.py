"""A URL as logs and the admin API may show it: no userinfo, no query values, no fragment; pure.

>>> safe_url("redis://default:s3cret@cache:6379/0?password=s3cret&db=1")
'redis://***@cache:6379/0?password=***&db=***'

Every place fastgate writes a URL from its config into a log line or an admin answer renders it with
:func:`safe_url`: the Redis URL, a ``jwks_url``, a ``forward_auth`` URL, an OTLP endpoint, an upstream target.
What stays is what an operator needs to tell which service is meant: scheme, host, port, path and the names of the
query parameters. The whole userinfo goes (a user name can be a token: ``https://TOKEN@host``), every query value
and a parameter without a value go, and so does a fragment. Text without ``?``, ``#`` or ``scheme://`` (a path, a
host:port, a name) is returned unchanged.

A library that logs a URL fastgate gave it (the OTLP exporter's connection errors carry the endpoint's path and
query) gets a :class:`SafeUrlFilter` on its logger, which rewrites those parts of its messages the same way.
"""

from __future__ import annotations

import logging

REDACTED = "***"

__all__ = ["REDACTED", "SafeUrlFilter", "safe_url"]


def safe_url(url: str) -> str:
    """``url`` without its userinfo, query values and fragment (each replaced by ``***``)."""
    scheme, sep, after = url.partition("://")
    if not sep or not scheme or any(char in scheme for char in "/?#@"):
        scheme, sep, after = "", "", url
    cut = min((index for index in (after.find(char) for char in "/?#") if index >= 0), default=len(after))
    authority, rest = after[:cut], after[cut:]
    userinfo, at, host = authority.rpartition("@")
    if at:
        authority = f"{REDACTED}@{host}"
    if sep and not _plain_host(host if at else authority):
        return f"{scheme}://{REDACTED}"  # a password with '/', '?' or '#' in it, unescaped: show nothing of it
    rest, hash_mark, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    if question:
        rest += "?" + "&".join(_safe_parameter(part) for part in query.split("&"))
    if hash_mark and fragment:
        rest += "#" + REDACTED
    return f"{scheme}{sep}{authority}{rest}"


def _plain_host(authority: str) -> bool:
    """``host``, ``host:port`` or ``[v6]:port``: no ``user:password`` left in it."""
    if authority.endswith("]") or ":" not in authority:
        return True
    return authority.rpartition(":")[2].isdigit() and (authority.startswith("[") or authority.count(":") == 1)


def _safe_parameter(part: str) -> str:
    name, equals, _ = part.partition("=")
    if equals:
        return f"{name}={REDACTED}"
    return REDACTED if part else part


class SafeUrlFilter(logging.Filter):
    """A logger filter: the userinfo, query and fragment of every URL given to :meth:`watch`, wherever they appear
    in a record's message, are rewritten as :func:`safe_url` shows them.
    """

    def __init__(self) -> None:
        super().__init__()
        self._replacements: dict[str, str] = {}
        self._ordered: list[tuple[str, str]] = []

    def watch(self, url: str) -> None:
        """Hide the secrets of ``url`` from the messages this filter sees from now on."""
        safe = safe_url(url)
        rest, hash_mark, fragment = url.partition("#")
        if hash_mark and fragment:
            self._replacements["#" + fragment] = "#" + REDACTED
        rest, question, query = rest.partition("?")
        if question and query:
            self._replacements["?" + query] = safe[safe.index("?") :].partition("#")[0]
        scheme, sep, after = rest.partition("://")
        userinfo, at, _ = after.partition("/")[0].rpartition("@")
        if sep and at and userinfo:
            self._replacements[userinfo + "@"] = REDACTED + "@"
        self._ordered = sorted(self._replacements.items(), key=lambda item: -len(item[0]))

    def filter(self, record: logging.LogRecord) -> bool:
        if self._replacements:
            message = record.getMessage()
            safe = message
            for raw, shown in self._ordered:
                safe = safe.replace(raw, shown)
            if safe != message:
                record.msg, record.args = safe, None
        return True
