"""Hostile request bytes: what the gateway answers, and that nothing it refuses ever reaches the upstream.

One table of raw requests in the manner of HAProxy's VTest cases and the HTTP Garden corpus: request smuggling
(Content-Length / Transfer-Encoding conflicts and obfuscations, bad chunk framing), line endings and control
characters, header names, request targets, versions, Host, pipelining and size limits. Every case is sent in one
write to a fresh gateway in front of a raw upstream that records every byte it is sent. For each case the test
checks the statuses, the JSON error body and its request id, whether the connection is closed (always, where the
framing can no longer be known), and what the upstream received: no connection at all for a refused request,
exactly the expected request(s) for an accepted one. Where the expected answer is debatable it follows nginx, and
the case says so. Two more tests send a never-ending head to a gateway subprocess, to bound its memory and CPU.

Running this module writes build/hostile-requests.md: case, expected, observed.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from fastgate import Gateway, GatewayConfig
from fastgate.config import ServerConfig
from tests.hostile.support import (
    Observed,
    RecordingUpstream,
    UpstreamRequest,
    exchange,
    gateway_process,
    proc_cpu_seconds,
    proc_read_bytes,
    proc_status,
    recording_upstream,
    split_responses,
)
from tests.rawhttp import RawResponse
from tests.servers import run_gateway

pytestmark = pytest.mark.anyio

REPORT = Path(__file__).resolve().parents[2] / "build" / "hostile-requests.md"
HEADER_TIMEOUT = 2.0  # the gateway's header_timeout in this module: a case the server waits on ends as a 408
READ_LIMIT = HEADER_TIMEOUT + 2.0  # how long a case waits for an answer (and a close) before calling it "left open"
ERROR_CODES = {400: "bad_request", 431: "headers_too_large"}  # the README's errors table; other statuses: any code

Status = int | tuple[int, ...]  # one status, or the acceptable ones


@dataclass(frozen=True)
class Forwarded:
    """One request the upstream must receive, exactly: request line, the end-to-end headers, the body.

    The headers the gateway adds (Host, X-Request-ID, X-Forwarded-*, Via, the body's framing) are filled in by
    ``expected_headers``; ``host`` is the Host sent upstream (``None``: there was none, so the upstream's own).
    """

    line: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    host: bytes | None = b"example.test"
    chunked: bool = False

    def expected_headers(self, upstream_authority: bytes) -> Counter[tuple[bytes, bytes]]:
        out = [(b"host", self.host or upstream_authority), *self.headers]
        out += [(b"x-forwarded-for", b"127.0.0.1"), (b"x-forwarded-proto", b"http"), (b"via", b"1.1 fastgate")]
        if self.host is not None:
            out.append((b"x-forwarded-host", self.host))
        if self.chunked:
            out.append((b"transfer-encoding", b"chunked"))
        elif self.body:
            out.append((b"content-length", b"%d" % len(self.body)))
        return Counter(out)


@dataclass(frozen=True)
class Case:
    name: str
    request: bytes
    statuses: tuple[Status, ...]  # one per response, in order; () means the connection is closed with no answer
    forwarded: tuple[Forwarded, ...] = ()  # () means no upstream connection at all
    closes: bool | None = None  # None: closed when any answer is an error, else left open (keep-alive)
    why: str = ""

    @property
    def must_close(self) -> bool:
        if self.closes is not None:
            return self.closes
        return not self.statuses or any(min(_acceptable(s)) >= 400 for s in self.statuses)

    def expected(self) -> str:
        text = ", ".join("|".join(map(str, _acceptable(s))) for s in self.statuses) or "no answer"
        text += "; closed" if self.must_close else "; kept open"
        if self.forwarded:
            lines = ", ".join(f.line.decode("latin-1")[:40] for f in self.forwarded)
            return f"{text}; upstream gets {lines}"
        return f"{text}; upstream untouched"


def _acceptable(status: Status) -> tuple[int, ...]:
    return status if isinstance(status, tuple) else (status,)


def req(line: bytes, *headers: bytes, body: bytes = b"", host: bool = True, end: bytes = b"\r\n") -> bytes:
    """A request: ``line``, a Host header unless ``host`` is false, ``headers``, a blank line, ``body``."""
    fields = ([b"Host: example.test"] if host else []) + list(headers)
    return line + end + b"".join(f + end for f in fields) + end + body


def fwd(line: bytes, *headers: tuple[bytes, bytes], **kwargs: object) -> Forwarded:
    return Forwarded(line, tuple(headers), **kwargs)  # type: ignore[arg-type]


GET = fwd(b"GET /a HTTP/1.1")
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: example.test\r\n\r\n"
BODY_0_HELLO = b"0\r\n\r\nhello"
LONG_TARGET = b"/a?" + b"q" * (8192 - 3)  # exactly max_uri_bytes


def framing(name: str, *fields: bytes, why: str = "") -> Case:
    """A POST whose body framing is ambiguous or invalid: 400, closed, nothing upstream (RFC 9112 §6.3)."""
    return Case(name, req(b"POST /a HTTP/1.1", *fields, body=BODY_0_HELLO), (400,), why=why)


def chunked(name: str, body: bytes, why: str = "") -> Case:
    """A chunked POST with a broken body, all in one write: refused before anything goes upstream."""
    return Case(name, req(b"POST /a HTTP/1.1", b"Transfer-Encoding: chunked", body=body), (400,), why=why)


CASES = [
    # --- Content-Length / Transfer-Encoding (moved here from tests/proxy/test_http_forwarding.py) ---
    framing("cl-and-te", b"Content-Length: 5", b"Transfer-Encoding: chunked", why="nginx >= 1.21.1 refuses both"),
    framing("te-xchunked", b"Transfer-Encoding: xchunked", why="nginx answers 501 for an unknown coding; 400 here"),
    framing("te-chunked-identity", b"Transfer-Encoding: chunked, identity", why="chunked must be the last coding"),
    framing("te-gzip-chunked", b"Transfer-Encoding: gzip, chunked", why="only a single chunked is accepted"),
    framing("te-twice", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
    framing("te-vtab", b"Transfer-Encoding:\tchunked\x0b"),
    framing("cl-conflict", b"Content-Length: 5", b"Content-Length: 6"),
    framing("cl-plus", b"Content-Length: +5"),
    framing("cl-hex", b"Content-Length: 0x5"),
    # --- more of the same family ---
    framing("cl-twice-same", b"Content-Length: 5", b"Content-Length: 5", why="RFC 9110 §8.6 may merge; nginx: 400"),
    framing("cl-list", b"Content-Length: 5, 5", why="RFC 9110 §8.6 may merge; nginx: 400"),
    framing("cl-negative", b"Content-Length: -5"),
    framing("cl-overflow", b"Content-Length: 18446744073709551621", why="2**64 + 5 must not wrap to 5"),
    framing("cl-space-inside", b"Content-Length: 1 0"),
    framing("te-space-before-colon", b"Transfer-Encoding : chunked", b"Content-Length: 5", why="RFC 9112 §5.1 MUST"),
    framing("te-obs-fold", b"Transfer-Encoding:", b" chunked", b"Content-Length: 5"),
    framing("te-leading-comma", b"Transfer-Encoding: ,chunked"),
    framing("te-and-cl-0", b"Transfer-Encoding: chunked", b"Content-Length: 0"),
    framing("te-and-smuggled-te", b"Transfer-Encoding: chunked", b"Transfer-encoding: cow"),
    Case(
        "te-in-http10",
        req(b"POST /a HTTP/1.0", b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
        (400,),
        why="RFC 9112 §6.1: framing is faulty; nginx >= 1.21.1 refuses it with 400",
    ),
    Case(
        "te-chunked-uppercase",
        req(b"POST /a HTTP/1.1", b"Transfer-Encoding: Chunked", body=b"5\r\nhello\r\n0\r\n\r\n"),
        (200,),
        (fwd(b"POST /a HTTP/1.1", body=b"hello", chunked=True),),
        why="coding names are case-insensitive (RFC 9112 §7)",
    ),
    # --- chunked bodies ---
    chunked("chunk-size-not-hex", b"zz\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk-size-0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk-size-negative", b"-5\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk-size-overflow", b"1ffffffffffffffff5\r\nhello\r\n0\r\n\r\n", why="must not wrap to 5"),
    chunked("chunk-size-leading-space", b" 5\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk-data-longer-than-size", b"3\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk-data-missing-crlf", b"5\r\nhelloXX0\r\n\r\n"),
    chunked(
        "chunk-line-bare-lf",
        b"5\nhello\r\n0\r\n\r\n",
        why="RFC 9112 §2.2's bare-LF leniency covers the head only; nginx accepts it here, we follow the RFC",
    ),
    chunked("chunk-ext-nul", b"5;a\x00b\r\nhello\r\n0\r\n\r\n"),
    Case(
        "chunk-ext-valid",
        req(b"POST /a HTTP/1.1", b"Transfer-Encoding: chunked", body=b"5;name=value\r\nhello\r\n0\r\n\r\n"),
        (200,),
        (fwd(b"POST /a HTTP/1.1", body=b"hello", chunked=True),),
        why="extensions are ignored (RFC 9112 §7.1.1) and the body is re-chunked without them",
    ),
    Case(
        "trailer-cannot-add-a-header",
        req(
            b"POST /a HTTP/1.1",
            b"Transfer-Encoding: chunked",
            body=b"5\r\nhello\r\n0\r\nAuthorization: Bearer smuggled\r\n\r\n",
        ),
        (200,),
        (fwd(b"POST /a HTTP/1.1", body=b"hello", chunked=True),),
        why="trailer fields are never merged into the head (RFC 9110 §6.5.1)",
    ),
    Case(
        "chunked-trailers",
        req(b"POST /a HTTP/1.1", b"Transfer-Encoding: chunked", body=b"5\r\nhello\r\n0\r\nX-Trailer: v\r\n\r\n"),
        (200,),
        (fwd(b"POST /a HTTP/1.1", body=b"hello", chunked=True),),
    ),
    # --- line endings and control characters ---
    Case(
        "bare-lf-line-endings",
        req(b"GET /a HTTP/1.1", end=b"\n"),
        (400,),
        why="RFC 9112 §2.2 allows, not requires, accepting a bare LF; llhttp's strict mode refuses it (nginx accepts)",
    ),
    Case("bare-cr-line-ending", b"GET /a HTTP/1.1\rHost: example.test\r\n\r\n", (400,), why="RFC 9112 §2.2"),
    Case("bare-cr-in-value", req(b"GET /a HTTP/1.1", b"X-A: a\rb"), (400,), why="RFC 9110 §5.5"),
    Case("nul-in-value", req(b"GET /a HTTP/1.1", b"X-A: a\x00b"), (400,), why="RFC 9110 §5.5"),
    Case("nul-in-name", req(b"GET /a HTTP/1.1", b"X-\x00A: b"), (400,)),
    Case("nul-in-target", req(b"GET /a\x00b HTTP/1.1"), (400,)),
    Case("space-before-colon", req(b"GET /a HTTP/1.1", b"X-A : b"), (400,), why="RFC 9112 §5.1 MUST"),
    Case("space-before-colon-host", req(b"GET /a HTTP/1.1", b"Host : evil.test", host=False), (400,)),
    Case("obs-fold", req(b"GET /a HTTP/1.1", b"X-A: a", b" b"), (400,), why="RFC 9112 §5.2; nginx: 400"),
    Case(
        "whitespace-before-first-header",
        req(b"GET /a HTTP/1.1", b" X-A: b"),
        (400,),
        why="RFC 9112 §2.2: reject, or ignore the line (nginx: 400)",
    ),
    # --- header names ---
    Case(
        "name-invalid-char",
        req(b"GET /a HTTP/1.1", b"X@A: b"),
        (400,),
        why="a field name is a token (RFC 9110 §5.1); refused like HAProxy (nginx drops it)",
    ),
    Case("name-non-ascii", req(b"GET /a HTTP/1.1", b"X-\xe9: b"), (400,), why="not a token, as above"),
    Case("name-with-space", req(b"GET /a HTTP/1.1", b"X A: b"), (400,), why="nginx: 400 (space in a name)"),
    Case("name-with-ctl", req(b"GET /a HTTP/1.1", b"X\x01A: b"), (400,), why="nginx: 400 (control in a name)"),
    Case("name-empty", req(b"GET /a HTTP/1.1", b": b"), (400,)),
    Case(
        "underscore-in-name",
        req(b"GET /a HTTP/1.1", b"X_Api_Key: secret", b"X-Kept: 1"),
        (200,),
        (fwd(b"GET /a HTTP/1.1", (b"x-kept", b"1")),),
        why="underscores_in_headers off: dropped, as nginx does (X_Api_Key would alias X-Api-Key in CGI-style apps)",
    ),
    Case(
        "underscore-transfer-encoding",
        req(b"GET /a HTTP/1.1", b"Transfer_Encoding: chunked"),
        (200,),
        (GET,),
        why="dropped, and never taken as framing",
    ),
    # --- request targets ---
    Case(
        "absolute-form",
        req(b"GET http://example.test/a?b HTTP/1.1"),
        (200,),
        (fwd(b"GET /a?b HTTP/1.1"),),
        why="RFC 9112 §3.2.2: a server MUST accept it; forwarded in origin-form",
    ),
    Case(
        "absolute-form-empty-path",
        req(b"GET http://example.test HTTP/1.1"),
        (200,),
        (fwd(b"GET / HTTP/1.1"),),
    ),
    Case(
        "absolute-form-overrides-host",
        req(b"GET http://a.test/a HTTP/1.1", b"Host: b.test", host=False),
        (200,),
        (fwd(b"GET /a HTTP/1.1", host=b"a.test"),),
        why="RFC 9112 §3.2.2: the target's authority wins over Host (nginx's $host does the same)",
    ),
    Case("absolute-form-ftp", req(b"GET ftp://example.test/a HTTP/1.1"), (400,)),
    Case("absolute-form-userinfo", req(b"GET http://user@example.test/a HTTP/1.1"), (400,), why="RFC 9110 §4.2.4"),
    Case("absolute-form-no-host", req(b"GET http:///a HTTP/1.1"), (400,)),
    Case("asterisk-get", req(b"GET * HTTP/1.1"), (400,), why="RFC 9112 §3.2.4: asterisk-form is for OPTIONS only"),
    Case(
        "asterisk-options",
        req(b"OPTIONS * HTTP/1.1"),
        (200,),
        (fwd(b"OPTIONS * HTTP/1.1"),),
        why="valid; forwarded as it is for the upstream to answer",
    ),
    Case(
        "connect",
        req(b"CONNECT example.test:443 HTTP/1.1", b"Host: example.test:443", host=False) + b"\x16\x03\x01",
        (400,),
        why="no tunnels (nginx answers 405); closed, since tunnel bytes may follow",
    ),
    Case("authority-form-get", req(b"GET example.test:80 HTTP/1.1"), (400,)),
    Case("relative-target", req(b"GET a/b HTTP/1.1"), (400,)),
    Case(
        "uri-at-limit", req(b"GET " + LONG_TARGET + b" HTTP/1.1"), (200,), (fwd(b"GET " + LONG_TARGET + b" HTTP/1.1"),)
    ),
    Case("uri-over-limit", req(b"GET " + LONG_TARGET + b"q HTTP/1.1"), (414,), why="max_uri_bytes 8192"),
    Case("uri-64-kib", req(b"GET /a?" + b"q" * 65536 + b" HTTP/1.1"), (414,)),
    Case(
        "uri-over-limit-unfinished",
        b"GET /a?" + b"q" * 9000,
        (414,),
        why="answered as soon as the limit is passed, before the request line ends",
    ),
    # --- versions ---
    Case("http-2.0-request-line", req(b"GET /a HTTP/2.0"), (505,)),
    Case("http-3.0-request-line", req(b"GET /a HTTP/3.0"), (505,)),
    Case(
        "http-1.2",
        req(b"GET /a HTTP/1.2"),
        (200,),
        (GET,),
        why="RFC 9110 §2.5: a higher minor version is served as 1.1; nginx does",
    ),
    Case("http-version-lowercase", req(b"GET /a http/1.1"), (400,), why="RFC 9112 §2.3: case-sensitive"),
    Case("http-0.9", b"GET /a\r\n", ((400, 505),), why="no HTTP/0.9: refused and closed, not waited on"),
    # "http2-preface" left this table with issue 18: prior-knowledge h2c is served now (server.http2), and the
    # HTTP/2 hostile table is tests/http2/test_hostile.py; with http2 disabled the preface still gets 505
    # (tests/serving/test_protocol.py).
    Case("method-lowercase", req(b"get /a HTTP/1.1"), (400,), why="methods are case-sensitive; nginx: 400"),
    Case(
        "http-1.0-without-host",
        req(b"GET /a HTTP/1.0", host=False),
        (200,),
        (fwd(b"GET /a HTTP/1.1", host=None),),
        closes=True,
        why="Host is optional in 1.0; the upstream gets its own authority",
    ),
    # --- Host ---
    Case("http-1.1-without-host", req(b"GET /a HTTP/1.1", host=False), (400,), why="RFC 9112 §3.2 MUST"),
    Case("host-with-space", req(b"GET /a HTTP/1.1", b"Host: a b", host=False), (400,)),
    Case("host-with-path", req(b"GET /a HTTP/1.1", b"Host: evil.example/../x", host=False), (400,)),
    Case("host-empty", req(b"GET /a HTTP/1.1", b"Host:", host=False), (400,), why="nginx: 400"),
    Case("host-twice", req(b"GET /a HTTP/1.1", b"Host: b.test"), (400,), why="RFC 9112 §3.2"),
    Case(
        "host-with-port",
        req(b"GET /a HTTP/1.1", b"Host: example.test:8080", host=False),
        (200,),
        (fwd(b"GET /a HTTP/1.1", host=b"example.test:8080"),),
    ),
    Case(
        "host-ipv6",
        req(b"GET /a HTTP/1.1", b"Host: [::1]:8080", host=False),
        (200,),
        (fwd(b"GET /a HTTP/1.1", host=b"[::1]:8080"),),
    ),
    # --- pipelining and smuggling ---
    Case(
        "pipelined-two-requests",
        req(b"GET /a HTTP/1.1") + req(b"POST /b HTTP/1.1", b"Content-Length: 5", body=b"hello"),
        (200, 200),
        (GET, fwd(b"POST /b HTTP/1.1", body=b"hello")),
    ),
    Case(
        "request-smuggled-in-a-get-body",
        req(b"GET /a HTTP/1.1", b"Content-Length: %d" % len(SMUGGLED), body=SMUGGLED),
        (200,),
        (fwd(b"GET /a HTTP/1.1", body=SMUGGLED),),
        why="the second request is the first one's body, never a request of its own",
    ),
    Case(
        "cl-te-smuggling",
        req(b"POST /a HTTP/1.1", b"Content-Length: %d" % (5 + len(SMUGGLED)), b"Transfer-Encoding: chunked")
        + b"0\r\n\r\n"
        + SMUGGLED,
        (400,),
    ),
    Case(
        "te-cl-smuggling",
        req(b"POST /a HTTP/1.1", b"Content-Length: 4", b"Transfer-Encoding: chunked")
        + b"%x\r\n" % len(SMUGGLED)
        + SMUGGLED
        + b"\r\n0\r\n\r\n",
        (400,),
    ),
    Case(
        "pipelined-good-then-bad",
        req(b"GET /a HTTP/1.1") + req(b"POST /b HTTP/1.1", b"Content-Length: 5", b"Content-Length: 6", body=b"hello"),
        (200, 400),
        (GET,),
    ),
    Case(
        "pipelined-bad-then-good",
        req(b"POST /a HTTP/1.1", b"Content-Length: 5", b"Content-Length: 6", body=b"hello") + req(b"GET /b HTTP/1.1"),
        (400,),
        why="nothing after a request whose framing is unknown is read",
    ),
    # --- head size limits (moved here from tests/proxy/test_http_forwarding.py, and unfinished heads) ---
    Case("header-64-kib", req(b"GET /a HTTP/1.1", b"X-Big: " + b"a" * 65536), (431,)),
    Case("headers-over-total", req(b"GET /a HTTP/1.1", *[b"X-H%d: %s" % (i, b"v" * 1000) for i in range(80)]), (431,)),
    Case("header-field-over-limit", req(b"GET /a HTTP/1.1", b"X-Big: " + b"a" * 33000), (431,), why="32 KiB a field"),
    Case(
        "head-over-limit-unfinished",
        b"GET /a HTTP/1.1\r\nHost: example.test\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)),
        (431,),
        why="answered as soon as the limit is passed, before the blank line",
    ),
    Case(
        "header-field-over-limit-unfinished",
        b"GET /a HTTP/1.1\r\nHost: example.test\r\nX-Big: " + b"a" * 40000,
        (431,),
        why="answered as soon as the field passes its limit, before its line ends",
    ),
]


@dataclass
class Row:
    case: str
    expected: str
    observed: str
    problems: list[str]


ROWS: list[Row] = []


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[list[Row]]:
    """Collect one row per case and write them to build/hostile-requests.md when the module is done."""
    ROWS.clear()
    yield ROWS
    REPORT.parent.mkdir(exist_ok=True)
    lines = [
        "# Hostile requests",
        "",
        f"Written by tests/hostile/test_requests.py on {time.strftime('%Y-%m-%d %H:%M:%S')}.",
        "",
        "| case | expected | observed | verdict |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r.case} | {_md(r.expected)} | {_md(r.observed)} | {_md('; '.join(r.problems)) or 'ok'} |" for r in ROWS
    ]
    failed = sum(bool(r.problems) for r in ROWS)
    lines += ["", f"{len(ROWS) - failed} of {len(ROWS)} as expected."]
    REPORT.write_text("\n".join(lines) + "\n")


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def server_config(**overrides: object) -> ServerConfig:
    return ServerConfig(header_timeout=HEADER_TIMEOUT, **overrides)  # type: ignore[arg-type]


def check_error_response(response: RawResponse) -> list[str]:
    """A gateway error: JSON ``{"error", "detail", "request_id"}`` with a real request id, also in X-Request-ID."""
    problems: list[str] = []
    try:
        body = json.loads(response.body)
    except ValueError:
        return [f"{response.status} body is not JSON: {response.body[:60]!r}"]
    if not isinstance(body, dict) or not {"error", "detail", "request_id"} <= body.keys():
        return [f"{response.status} JSON lacks error/detail/request_id: {body!r}"]
    code = ERROR_CODES.get(response.status)
    if code is not None and body["error"] != code:
        problems.append(f"{response.status} error code {body['error']!r}, expected {code!r}")
    header = response.header(b"x-request-id")
    if not re.fullmatch(r"[0-9A-Za-z._-]{8,}", str(body["request_id"])):
        problems.append(f"{response.status} request_id {body['request_id']!r} is not a real id")
    if header != [str(body["request_id"]).encode()]:
        problems.append(f"{response.status} x-request-id header {header} does not match the body")
    return problems


def check_forwarded(expected: Forwarded, got: UpstreamRequest, upstream: RecordingUpstream) -> list[str]:
    problems = []
    line = b"%s %s HTTP/%s" % (got.method, got.target, got.version.encode())
    if line != expected.line:
        problems.append(f"upstream got {line[:60]!r}, expected {expected.line[:60]!r}")
    request_ids = got.header(b"x-request-id")
    if len(request_ids) != 1 or not re.fullmatch(rb"[0-9a-f]{16}", request_ids[0]):
        problems.append(f"upstream x-request-id {request_ids}")
    # Every request goes upstream with one W3C traceparent (a new trace when the client sent none: issue 11).
    traceparents = got.header(b"traceparent")
    if len(traceparents) != 1 or not re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", traceparents[0]):
        problems.append(f"upstream traceparent {traceparents}")
    headers = Counter((k.lower(), v) for k, v in got.headers if k.lower() not in (b"x-request-id", b"traceparent"))
    wanted = expected.expected_headers(f"127.0.0.1:{upstream.port}".encode())
    if headers != wanted:
        problems.append(f"upstream headers: extra {dict(headers - wanted)}, missing {dict(wanted - headers)}")
    if got.body != expected.body:
        problems.append(f"upstream body {got.body[:60]!r}, expected {expected.body[:60]!r}")
    return problems


def judge(case: Case, observed: Observed, upstream: RecordingUpstream) -> list[str]:
    problems: list[str] = []
    statuses = observed.statuses
    if len(statuses) != len(case.statuses) or any(
        got not in _acceptable(want) for got, want in zip(statuses, case.statuses, strict=False)
    ):
        problems.append(f"statuses {statuses}, expected {[_acceptable(s) for s in case.statuses]}")
    for response in observed.responses:
        if response.status >= 400:
            problems += check_error_response(response)
    if case.must_close and not observed.closed:
        problems.append(f"connection left open after {READ_LIMIT} s")
    if case.must_close and observed.closed and observed.responses:
        if b"close" not in b",".join(observed.responses[-1].header(b"connection")).lower():
            problems.append("last response before the close lacks connection: close")
    if not case.must_close and observed.closed:
        problems.append("connection closed, expected keep-alive")
    if not case.forwarded:
        if upstream.connections:
            problems.append(f"upstream got {len(upstream.connections)} connection(s), {len(upstream.received)} bytes")
    else:
        got = upstream.requests
        if len(got) != len(case.forwarded):
            targets = [r.method + b" " + r.target[:40] for r in got]
            problems.append(f"upstream got {len(got)} requests {targets}, expected {len(case.forwarded)}")
        for expected, request in zip(case.forwarded, got, strict=False):
            problems += check_forwarded(expected, request, upstream)
    return problems


def describe_upstream(upstream: RecordingUpstream) -> str:
    if not upstream.connections:
        return "upstream untouched"
    requests = upstream.requests
    lines = ", ".join(f"{r.method.decode()} {r.target[:40].decode('latin-1')}" for r in requests)
    return f"upstream: {len(upstream.connections)} conn, {len(upstream.received)} B" + (f" ({lines})" if lines else "")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_request_is_answered_as_specified_and_refusals_never_reach_the_upstream(
    case: Case, report: list[Row]
) -> None:
    async with recording_upstream() as upstream:
        gateway = Gateway(GatewayConfig.single(upstream.url, server=server_config()))
        async with run_gateway(gateway) as gw:
            observed = await exchange(
                gw.port,
                case.request,
                responses=len(case.statuses),
                wait_for_close=case.must_close,
                limit=READ_LIMIT,
            )
        # The gateway has shut down and closed its pool: whatever it sent upstream has been sent.
        await upstream.wait_closed()
    problems = judge(case, observed, upstream)
    report.append(Row(case.name, case.expected(), f"{observed.describe()}; {describe_upstream(upstream)}", problems))
    assert not problems, f"{case.name} ({case.why or 'see the table'}):\n  " + "\n  ".join(problems)


def test_the_table_has_unique_names() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


# --- A never-ending head, against a real gateway process (memory and CPU are per process) ---


def _head_config(upstream_url: str) -> dict[str, object]:
    return {
        "server": {"header_timeout": 30},  # long enough that only the size limit can end these
        "upstreams": {"default": {"url": upstream_url}},
        "routes": [{"prefix": "/", "upstream": "default"}],
    }


async def _stream_head(port: int, first: bytes, piece: bytes, total: int, limit: float) -> tuple[Observed, int, float]:
    """Send ``first`` then ``piece`` repeatedly up to ``total`` bytes, while reading; stop at the first answer.

    Returns what came back, the bytes sent and the seconds until the answer (or until giving up).
    """
    raw = b""
    sent = 0
    answered = anyio.Event()
    closed = False
    started = time.monotonic()
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:

        async def read() -> None:
            nonlocal raw, closed
            while True:
                try:
                    raw += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    closed = True
                    answered.set()
                    return
                answered.set()

        async def write() -> None:
            nonlocal sent
            try:
                await stream.send(first)
                sent += len(first)
                while sent < total and not answered.is_set():
                    await stream.send(piece)
                    sent += len(piece)
            except (anyio.BrokenResourceError, OSError):
                pass

        with anyio.move_on_after(limit):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                tg.start_soon(write)
                await answered.wait()
                elapsed = time.monotonic() - started
                with anyio.move_on_after(2):  # let the response and the close arrive
                    while not closed:  # noqa: ASYNC110 - the reader sets it
                        await anyio.sleep(0.02)
                tg.cancel_scope.cancel()
    if not answered.is_set():
        elapsed = time.monotonic() - started
    responses, leftover = split_responses(raw)
    return Observed(responses, closed, leftover), sent, elapsed


async def test_never_ending_head_of_64_mib_is_answered_431_quickly_with_bounded_memory(
    tmp_path: Path, report: list[Row]
) -> None:
    async with recording_upstream() as upstream:
        with gateway_process(_head_config(upstream.url), tmp_path) as gw:
            pid = gw.process.pid
            rss_before = proc_status(pid, "VmRSS")
            peak = rss_before

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, proc_status(pid, "VmRSS"))
                    await anyio.sleep(0.02)

            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                line = b"X-Pad: " + b"p" * 1000 + b"\r\n"
                observed, sent, elapsed = await _stream_head(
                    gw.port, b"GET /a HTTP/1.1\r\nHost: example.test\r\n", line, 64 << 20, limit=10
                )
                tg.cancel_scope.cancel()
            peak = max(peak, proc_status(pid, "VmRSS"))
        await upstream.wait_closed()
    growth = peak - rss_before
    problems = []
    if observed.statuses != [431]:
        problems.append(f"statuses {observed.statuses} after {sent >> 10} KiB sent in {elapsed:.1f} s")
    else:
        problems += check_error_response(observed.responses[0])
    if not observed.closed:
        problems.append("connection left open")
    if growth > 8 << 20:
        problems.append(f"gateway RSS grew by {growth / 2**20:.1f} MiB")
    if upstream.connections:
        problems.append(f"upstream got {len(upstream.connections)} connection(s)")
    report.append(
        Row(
            "head-64-mib-never-ending (subprocess)",
            "431 within seconds; closed; RSS growth < 8 MiB; upstream untouched",
            f"{observed.describe()} after {elapsed:.1f} s, {sent >> 20} MiB sent; RSS +{growth / 2**20:.1f} MiB; "
            + describe_upstream(upstream),
            problems,
        )
    )
    assert not problems, "\n".join(problems)


async def test_one_header_value_streamed_to_16_mib_is_answered_431_within_the_first_64_kib(
    tmp_path: Path, report: list[Row]
) -> None:
    # Read bytes are counted by the gateway process itself (/proc/PID/io rchar), so a kernel socket buffer the
    # client filled does not count against the server. One socket read (up to 256 KiB) past the limit is allowed.
    async with recording_upstream() as upstream:
        with gateway_process(_head_config(upstream.url), tmp_path) as gw:
            pid = gw.process.pid
            read_before = proc_read_bytes(pid)
            cpu_before = proc_cpu_seconds(pid)
            observed, sent, elapsed = await _stream_head(
                gw.port, b"GET /a HTTP/1.1\r\nHost: example.test\r\nX-Big: ", b"b" * 4096, 16 << 20, limit=10
            )
            read = proc_read_bytes(pid) - read_before
            cpu = proc_cpu_seconds(pid) - cpu_before
        await upstream.wait_closed()
    problems = []
    if observed.statuses != [431]:
        problems.append(f"statuses {observed.statuses} after {sent >> 10} KiB sent in {elapsed:.1f} s")
    else:
        problems += check_error_response(observed.responses[0])
    if read > 64 * 1024 + 256 * 1024:
        problems.append(f"gateway read {read >> 10} KiB before answering")
    if cpu > 2.0:
        problems.append(f"gateway used {cpu:.1f} s of CPU")
    if upstream.connections:
        problems.append(f"upstream got {len(upstream.connections)} connection(s)")
    report.append(
        Row(
            "header-value-16-mib-in-4-kib-pieces (subprocess)",
            "431 after reading < 320 KiB; < 2 s CPU; upstream untouched",
            f"{observed.describe()} after {elapsed:.1f} s; gateway read {read >> 10} KiB, {cpu:.2f} s CPU; "
            + describe_upstream(upstream),
            problems,
        )
    )
    assert not problems, "\n".join(problems)
