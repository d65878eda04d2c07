"""Request path canonicalisation: the path routes match, the readings an upstream may make of it, the verdict. Pure.

A route's plugins guard a path, so the route decision must not depend on how the upstream reads the path it gets.
Two functions carry that rule:

:func:`normalize_path` is the path routes are matched against, in Envoy's order (``normalize_path`` then
``merge_slashes``):

1. percent-decode the unreserved characters only (RFC 3986 §2.3: ``A-Z a-z 0-9 - . _ ~``), so ``%61`` becomes
   ``a`` and ``%2E`` becomes ``.``; every other escape stays encoded, its hex digits upper-cased (§6.2.2.1), so
   ``%2f`` and ``%2F`` are the same path and neither is a ``/``;
2. remove dot segments (§5.2.4); a ``..`` that would climb above ``/`` raises :class:`PathAboveRoot` (the gateway
   answers 400) instead of being dropped silently as RFC 3986 does for URI resolution;
3. with ``merge_slashes``, collapse runs of ``/`` into one.

:func:`resolve_target` takes the raw request target and the route table (``RouteTable.match``, with the request's
method, host, headers and query for every reading), and decides what may go upstream:

- a target with a fragment (``#`` anywhere) is refused (:class:`FragmentInTarget`, 400): RFC 9112 §3.2 has no
  fragment in a request target, and an upstream that drops it reads another path than the one routed;
- the path's *readings* (:func:`readings`) are the paths an upstream may route on: as sent (Starlette and most
  frameworks route on the decoded path without resolving dots), ``;params`` stripped per segment (Tomcat, Spring),
  ``%2F`` ``%5C`` ``%3B`` and ``%25`` decoded (as often as a chain of decoding hops would), ``%00`` ending the
  path (C strings), ``\\`` read as ``/`` (IIS), runs of ``/`` merged, dot segments removed, in any order and
  combination;
- when every reading is routed to the route the canonical path picked, the target goes upstream exactly as sent
  (verdict ``"as_sent"``): ``/echo/a%2Fb`` or ``/echo//x`` on a single route reach the upstream byte for byte;
- else, when every reading *of the canonical path* picks that route, the readings differed only by RFC 3986
  normalisation (dot segments, escaped unreserved characters, and the slashes ``merge_slashes`` merges): the
  canonical path goes upstream, the query kept (``"normalised"``), so only one reading is left;
- anything else is refused (:class:`AmbiguousPath`, 400 ``bad_request`` "ambiguous path"); nothing goes upstream.

A path without ``#``, ``;``, ``\\``, ``//``, ``%`` or a ``/.`` has one reading: one regex search decides that, and
the route is then matched once, as before. ``X-Forwarded-Uri`` and ``strip_prefix``/``rewrite`` work on the
canonical path (the third item of the :data:`Resolution`), not on the raw one.

>>> normalize_path(b"/public/../%61dmin/.")
b'/admin/'
>>> sorted(readings(b"/public/..;/admin"))
[b'/admin', b'/public/../admin', b'/public/..;/admin']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, TypeVar

from ..exceptions import BadRequest

__all__ = [
    "PATH_KEY",
    "AmbiguousPath",
    "FragmentInTarget",
    "PathAboveRoot",
    "Resolution",
    "Router",
    "normalize_path",
    "plain_target",
    "readings",
    "resolve_target",
]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(rb"//+")
# What may give a path more than one reading; "?" stops the search at the query, where only "#" matters.
_SUSPECT = re.compile(rb"[#;\\%?]|/\.|//")
# ``plain_target(target) is None``: the target has none of the characters above, so no "?" and one reading; the
# gateway's hot path tests this before calling resolve_target (a Python call less on every plain request).
plain_target = _SUSPECT.search
_PARAMS = re.compile(rb";[^/]*")  # a segment's ;params, to the next "/"
_DOT_SEGMENT = re.compile(rb"/\.\.?(?:/|\Z)")
# The escapes an upstream's decoding turns into structure: "/", "\", a "%" that starts another escape, NUL.
_STRUCTURAL = re.compile(rb"%(2F|5C|3B|25(?=[0-9A-Fa-f]{2})|00)")
_DECODED = {b"%2F": b"/", b"%5C": b"\\", b"%3B": b";", b"%25": b"%", b"%00": b"\x00"}

# The scope key under which the gateway keeps the canonical path a request was routed on (bytes), for plugins
# (forward_auth's X-Forwarded-Uri) that must describe the path the route matched, not the raw one.
PATH_KEY = "fastgate.path"

Verdict = Literal["as_sent", "normalised"]
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class PathAboveRoot(BadRequest):
    """A ``..`` segment climbs above ``/``: the request is refused with 400 ``bad_request``."""


class FragmentInTarget(BadRequest):
    """A ``#`` in the request target (RFC 9112 §3.2): 400 ``bad_request``."""


class AmbiguousPath(BadRequest):
    """The path's readings pick different routes, and not only by RFC 3986 normalisation: 400 ``bad_request``."""


Resolution = tuple[R | None, bytes, bytes, Verdict]
"""What :func:`resolve_target` decided, a plain tuple (a NamedTuple costs more than the rest of this on every
request): the route (``None``: no route), the target to send (the raw one for ``"as_sent"``, the canonical path and
the raw query for ``"normalised"``), the canonical path (what the route matched: ``X-Forwarded-Uri`` and
``strip_prefix`` work on it), the verdict."""


def _escape(match: re.Match[bytes]) -> bytes:
    code = int(match.group(1), 16)
    return bytes((code,)) if code in _UNRESERVED else b"%" + match.group(1).upper()


def _remove_dot_segments(path: bytes, *, strict: bool = True) -> bytes:
    # RFC 3986 §5.2.4 on a path that starts with "/": segment by segment, so "." and ".." are only ever whole
    # segments. A "." or ".." as the last segment leaves a trailing "/" ("/a/." -> "/a/", "/a/b/.." -> "/a/").
    # strict: a ".." above "/" raises; otherwise it is dropped, as RFC 3986 (and most servers) do.
    segments = path.split(b"/")[1:]
    output: list[bytes] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment == b".":
            if index == last:
                output.append(b"")
        elif segment == b"..":
            if output:
                output.pop()
            elif strict:
                raise PathAboveRoot("the path climbs above '/'")
            if index == last:
                output.append(b"")
        else:
            output.append(segment)
    return b"/" + b"/".join(output)


def normalize_path(path: bytes, *, merge_slashes: bool = False) -> bytes:
    """The path routes are matched against (see the module docstring); raises :class:`PathAboveRoot`.

    >>> normalize_path(b"/a//b/./c", merge_slashes=True)
    b'/a/b/c'

    A path that does not start with ``/`` (``*`` of ``OPTIONS *``) is returned unchanged.
    """
    # find() rather than ``in``: on CPython 3.11 ``bytes in bytes`` first tries the needle as an int and builds a
    # TypeError it throws away (~1,800 instructions a test, bench/instructions.py); this runs on every request.
    if path.find(b"%") < 0 and path.find(b"/.") < 0 and not (merge_slashes and path.find(b"//") >= 0):
        return path
    if not path.startswith(b"/"):
        return path
    if path.find(b"%") >= 0:
        path = _ESCAPE.sub(_escape, path)
    if path.find(b"/.") >= 0:
        path = _remove_dot_segments(path)
    if merge_slashes and path.find(b"//") >= 0:
        path = _SLASHES.sub(b"/", path)
    return path


# --- readings ------------------------------------------------------------------------------------------------------
# Each reading is written in the form routes match (escapes upper-cased, unreserved ones decoded), so it can be
# routed as it is. Servers apply these steps in different orders (nginx decodes, then merges and resolves dots; a
# normalising proxy resolves dots before the framework behind it decodes), so the readings are every path reachable
# from the one sent by any sequence of steps: a closure, small for real paths, bounded for hostile ones.


def _strip_params(path: bytes) -> bytes:
    return _PARAMS.sub(b"", path)


def _decode(path: bytes) -> bytes:
    decoded = _STRUCTURAL.sub(lambda m: _DECODED[m.group()[:3]], path)
    if decoded.find(b"%") >= 0:
        decoded = _ESCAPE.sub(_escape, decoded)  # a "%41" that "%2541" left is an "A" now
    nul = decoded.find(b"\x00")
    return decoded if nul < 0 else decoded[:nul] or b"/"


def _backslashes(path: bytes) -> bytes:
    return path.replace(b"\\", b"/")


def _merge(path: bytes) -> bytes:
    return _SLASHES.sub(b"/", path)


def _dots(path: bytes) -> bytes:
    return _remove_dot_segments(path, strict=False) if _DOT_SEGMENT.search(path) is not None else path


_STEPS: tuple[tuple[bytes, Callable[[bytes], bytes]], ...] = (
    (b";", _strip_params),
    (b"%", _decode),
    (b"\\", _backslashes),
    (b"//", _merge),
    (b"/.", _dots),
)
# More distinct readings than this, or more bytes of readings than READING_BYTES: the path is refused as ambiguous.
# Real paths have a handful (each kind of trigger present at most doubles them: 32 with all five); the bounds keep a
# hostile 8 KiB target (max_uri_bytes) to a few milliseconds of work.
MAX_READINGS = 64
READING_BYTES = 128 * 1024


def readings(path: bytes) -> frozenset[bytes]:
    """Every path an upstream may route on when it receives ``path`` (see the module docstring), ``path`` included
    (in the escape-normalised form routes match). Pure. Raises :class:`AmbiguousPath` past :data:`MAX_READINGS`
    (or :data:`READING_BYTES` in all).

    >>> sorted(readings(b"/a%2Fb"))
    [b'/a%2Fb', b'/a/b']
    """
    if not path.startswith(b"/"):
        return frozenset((path,))
    start = _ESCAPE.sub(_escape, path) if path.find(b"%") >= 0 else path
    found = {start}
    pending = [start]
    limit = min(MAX_READINGS, READING_BYTES // len(start))
    while pending:
        reading = pending.pop()
        for trigger, step in _STEPS:
            if reading.find(trigger) >= 0:
                changed = step(reading)
                if changed not in found:
                    if len(found) >= limit:
                        raise AmbiguousPath(f"ambiguous path: over {limit} readings")
                    found.add(changed)
                    pending.append(changed)
    return frozenset(found)


class Router(Protocol[R_co]):
    """What :func:`resolve_target` routes with: ``RouteTable.match``, and its ``catch_all`` (the table's only route
    when it is one route for every request: then no reading can pick another)."""

    @property
    def catch_all(self) -> R_co | None: ...

    def match(
        self, method: bytes, host: bytes, path: bytes, headers: Sequence[tuple[bytes, bytes]] = (), query: bytes = b""
    ) -> R_co | None: ...


def resolve_target(
    target: bytes,
    routes: Router[R],
    method: bytes = b"GET",
    host: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    merge_slashes: bool = False,
) -> Resolution[R]:
    """Route ``target`` (path and query, as received) with ``routes.match`` (the request's ``method``, ``host``,
    ``headers`` and query for every reading) and decide what goes upstream (see the module docstring). Raises
    :class:`FragmentInTarget`, :class:`PathAboveRoot` or :class:`AmbiguousPath` (400). The route is ``None`` when
    no route matches the canonical path (404: nothing goes upstream either way).

    Positional arguments and a plain tuple: this runs on every request, and a path with nothing to read twice costs
    one regex search and one ``match`` here.
    """
    found = plain_target(target)
    if found is None:  # nothing to read twice, and no "?" either
        return routes.match(method, host, target, headers, b""), target, target, "as_sent"
    if found.group() == b"?" and target.find(b"#", found.end()) < 0:
        at = found.start()
        path = target[:at]
        return routes.match(method, host, path, headers, target[at + 1 :]), target, path, "as_sent"
    if target.find(b"#") >= 0:
        raise FragmentInTarget("a request target has no fragment ('#')")
    raw_path, sep, query = target.partition(b"?")
    path = normalize_path(raw_path, merge_slashes=merge_slashes)
    route = routes.match(method, host, path, headers, query)
    if route is None or route is routes.catch_all:
        return route, target, path, "as_sent"
    if all(routes.match(method, host, r, headers, query) is route for r in readings(raw_path) if r != path):
        return route, target, path, "as_sent"
    if all(routes.match(method, host, r, headers, query) is route for r in readings(path) if r != path):
        return route, path + sep + query, path, "normalised"
    raise AmbiguousPath("ambiguous path: it reads as another route's path on some servers")
