"""Path confusion: no spelling of a path walks around the route that guards it (issue 17, items 1 and 2).

The config of the issue: ``/admin`` with ``api_key`` and a catch-all ``/`` without plugins, each to its own
upstream. Every spelling in ``SPELLINGS`` (fragments, ``;params``, ``\\``, ``//``, encoded slashes, backslashes
and dots, double encodings, ``%00``, mixed-case escapes, ``..`` spelled every way) is sent byte for byte, without
a key, through a real gateway, to two kinds of upstream: a real Starlette app on Uvicorn (its router decides what
it serves) and a raw recorder (every byte). For each spelling the test checks the expected outcome (400
``bad_request``, 401 from the ``/admin`` route's plugin, or the public upstream), that the admin upstream never got
a request, and, for what reached the public upstream, that no *reading* of its path is under ``/admin``: the
oracle here applies the servers' own steps (Starlette, nginx, Tomcat/Spring, Jetty, IIS, a decoding hop,
a normalising proxy in front of a framework, C strings, and every subset of the steps in order) written
independently of proxy/paths.py. The Starlette upstream must never answer with its admin handler.

Running this module writes build/path-confusion.md: spelling, expected, observed, per upstream kind.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastgate import Gateway
from fastgate.config import build_config
from tests.hostile.support import exchange, recording_upstream
from tests.reload_support import fastgate_run
from tests.servers import RunningServer, free_port, run_gateway, run_server
from tests.ws_upstream import WebSocketRecorder

pytestmark = pytest.mark.anyio

REPORT = Path(__file__).resolve().parents[2] / "build" / "path-confusion.md"
KEY = "s3cret-admin-key"

# (request target as sent, expected): "400" refused by fastgate, "401" routed to /admin (its api_key refuses a
# request without a key), "public" forwarded to the catch-all's upstream.
SPELLINGS: list[tuple[bytes, str]] = [
    # the plain ones
    (b"/admin", "401"),
    (b"/admin/secret", "401"),
    (b"/public", "public"),
    (b"/Admin", "public"),  # routes are case-sensitive, as nginx's and Envoy's
    # a fragment, anywhere (RFC 9112 §3.2)
    (b"/admin#/../public", "400"),
    (b"/admin/users#/../../", "400"),
    (b"/public#/../admin", "400"),
    (b"/#/admin", "400"),
    (b"/admin/#", "400"),
    (b"/public/..#/admin", "400"),
    (b"/public?x=1#/../admin", "400"),
    (b"/public;#/admin", "400"),
    (b"/%23/../admin", "401"),  # an escaped '#' is data: the dots resolve to /admin
    # ;params (Tomcat and Spring strip them per segment before resolving dots)
    (b"/public/..;/admin/secret", "400"),
    (b"/public/..;a=b/admin", "400"),
    (b"/admin;x/secret", "400"),
    (b"/admin;/secret", "400"),
    (b"/admin;jsessionid=1", "400"),
    (b"/;/admin", "400"),
    (b"/admin/x/..;/..;/public", "400"),
    (b"/admin%3B/x", "400"),
    (b"/admin%3bx", "400"),
    (b"/public;x/../admin", "401"),
    (b"/public/a;p=1/b", "public"),
    (b"/%3Badmin", "public"),
    # backslashes (IIS reads them as '/')
    (b"/public/..\\admin", "400"),
    (b"/public\\..\\admin", "400"),
    (b"/\\admin", "400"),
    (b"/admin\\x", "400"),
    (b"/public/..%5Cadmin", "400"),
    (b"/public/..%5cadmin", "400"),
    (b"/public/..%5C..%5Cadmin", "400"),
    (b"\\admin", "400"),
    # runs of slashes (servers that merge them)
    (b"//admin/secret", "400"),
    (b"//admin", "400"),
    (b"///admin", "400"),
    (b"/public//../admin", "public"),  # resolves to /public/admin; merged first it is /admin: normalised
    (b"/admin//x", "401"),
    (b"/public//admin", "public"),
    # encoded slashes (servers that decode them)
    (b"/public/..%2Fadmin/secret", "400"),
    (b"/public/..%2fadmin", "400"),
    (b"/public%2F..%2Fadmin", "400"),
    (b"/public/..%2F..%2Fadmin", "400"),
    (b"/%2Fadmin", "400"),
    (b"/admin%2Fsecret", "400"),
    (b"/admin%2F", "400"),
    (b"/public/a%2Fb", "public"),
    # encoded dots
    (b"/public/%2e%2e/admin", "401"),
    (b"/public/%2E%2E/admin", "401"),
    (b"/public/.%2e/admin", "401"),
    (b"/public/%2e./admin", "401"),
    (b"/%2e/admin", "401"),
    (b"/public/%2e%2e%2fadmin", "400"),
    (b"/public/%2e%2e%5cadmin", "400"),
    # dot segments
    (b"/public/../admin", "401"),
    (b"/public/../admin/secret", "401"),
    (b"/./admin", "401"),
    (b"/admin/.", "401"),
    (b"/public/./../admin", "401"),
    (b"/admin/x/../../public", "public"),  # normalised: the public upstream gets /public
    (b"/admin/..", "public"),
    (b"/admin/...", "401"),  # "..." is no dot segment
    (b"/public/.../admin", "public"),
    (b"/..", "400"),
    (b"/../admin", "400"),
    (b"/public/../../admin", "400"),
    # double encodings (a decoding hop in front of a decoding server)
    (b"/public/..%252Fadmin", "400"),
    (b"/public/%252e%252e/admin", "400"),
    (b"/%2561dmin", "400"),
    (b"/public/..%25%32%46admin", "400"),
    (b"/public/..%255Cadmin", "400"),
    # NUL (a C string ends there)
    (b"/admin%00", "400"),
    (b"/admin%00/x", "400"),
    (b"/admin%00.png", "400"),
    (b"/public/%00/../admin", "public"),
    # mixed-case escapes
    (b"/%61dmin", "401"),
    (b"/%61%64%6d%69%6e/x", "401"),
    (b"/%61%64%6D%69%6E", "401"),
    (b"/%41dmin", "public"),  # /Admin
    (b"/public/%2E%2e/%61dmin", "401"),
    # the query is data, whatever it holds
    (b"/public?/../admin", "public"),
    (b"/public?x=%2F..%2Fadmin;y", "public"),
    # absolute form: the path is judged the same way
    (b"http://gw.test/public/../admin", "401"),
    (b"http://gw.test//admin", "400"),
]

# --- the oracle: how servers read a path, written apart from proxy/paths.py ---------------------------------------


def _decode(path: bytes) -> bytes:
    return unquote_to_bytes(path)


def _params(path: bytes) -> bytes:
    return b"/".join(segment.split(b";")[0] for segment in path.split(b"/"))


def _backslash(path: bytes) -> bytes:
    return path.replace(b"\\", b"/")


def _merge(path: bytes) -> bytes:
    return re.sub(rb"/+", b"/", path)


def _nul(path: bytes) -> bytes:
    return path.split(b"\x00")[0]


def _dots(path: bytes) -> bytes:
    out: list[bytes] = []
    segments = path.split(b"/")[1:] if path.startswith(b"/") else path.split(b"/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == b"..":
            if out:
                out.pop()
            if last:
                out.append(b"")
        elif segment == b".":
            if last:
                out.append(b"")
        else:
            out.append(segment)
    return b"/" + b"/".join(out)


Step = Callable[[bytes], bytes]
SERVERS: dict[str, list[Step]] = {
    "Starlette (decoded, dots kept)": [_decode],
    "nginx": [_decode, _merge, _dots],
    "Tomcat/Spring": [_params, _decode, _dots],
    "Jetty (decode, then params)": [_decode, _params, _dots],
    "IIS": [_backslash, _decode, _backslash, _dots],
    "two decoding hops": [_decode, _decode, _backslash, _merge, _dots],
    "normalising proxy, then framework": [_dots, _decode],
    "normalising proxy, then nginx": [_dots, _decode, _merge, _dots],
    "C strings": [_decode, _nul, _merge, _dots],
}
_ORDER: list[Step] = [_params, _backslash, _decode, _decode, _backslash, _params, _nul, _merge, _dots]


def upstream_readings(path: bytes) -> dict[bytes, str]:
    """Each reading of ``path`` (as an upstream received it), with one server that reads it so."""
    found: dict[bytes, str] = {path: "as sent"}
    for name, steps in SERVERS.items():
        reading = path
        for step in steps:
            reading = step(reading)
        found.setdefault(reading, name)
    for size in range(1, len(_ORDER) + 1):
        for steps in itertools.combinations(_ORDER, size):
            reading = path
            for step in steps:
                reading = step(reading)
            found.setdefault(reading, "+".join(s.__name__.strip("_") for s in steps))
    return found


def under_admin(reading: bytes) -> bool:
    return reading == b"/admin" or reading.startswith(b"/admin/")


def test_the_oracle_sees_the_bypasses_of_the_issue() -> None:
    # What reached the public upstream before this fix: each of these reads as /admin somewhere.
    for raw in (b"/public/..;/admin/secret", b"//admin/secret", b"/public/..%2Fadmin/secret", b"/public/..%5Cadmin"):
        assert any(under_admin(r) for r in upstream_readings(raw)), raw
    assert any(under_admin(r) for r in upstream_readings(b"/public/..\\admin"))
    assert any(under_admin(r) for r in upstream_readings(b"/admin;x/secret"))
    assert any(under_admin(r) for r in upstream_readings(b"/public/..%252Fadmin"))
    assert not any(under_admin(r) for r in upstream_readings(b"/public/a%2Fb"))


def test_the_table_is_large_enough() -> None:
    assert len(SPELLINGS) >= 60
    assert len({target for target, _ in SPELLINGS}) == len(SPELLINGS)


# --- the upstreams ---------------------------------------------------------------------------------------------------


@dataclass
class StarletteUpstream:
    """A Starlette app whose router decides: ``/admin`` and ``/admin/{rest:path}`` are the admin handler."""

    seen: list[bytes] = field(default_factory=list)  # raw_path (and ?query) of each request, as Uvicorn gave it

    def app(self) -> Starlette:
        async def admin(request: Request) -> JSONResponse:
            self._record(request)
            return JSONResponse({"handler": "admin"})

        async def public(request: Request) -> JSONResponse:
            self._record(request)
            return JSONResponse({"handler": "public"})

        return Starlette(
            routes=[Route("/admin", admin), Route("/admin/{rest:path}", admin), Route("/{rest:path}", public)]
        )

    def _record(self, request: Request) -> None:
        raw: bytes = request.scope["raw_path"]
        query: bytes = request.scope["query_string"]
        self.seen.append(raw + (b"?" + query if query else b""))


@dataclass
class Row:
    kind: str
    target: bytes
    expected: str
    observed: str
    problems: list[str]


ROWS: list[Row] = []


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[list[Row]]:
    """One row per spelling and upstream kind, written to build/path-confusion.md when the module is done."""
    ROWS.clear()
    yield ROWS
    if not ROWS:
        return
    REPORT.parent.mkdir(exist_ok=True)
    lines = [
        "# Path confusion",
        "",
        f"Written by tests/hostile/test_path_confusion.py on {time.strftime('%Y-%m-%d %H:%M:%S')}. Routes: `/admin`"
        " (api_key) and `/` (no plugins), each to its own upstream; no key sent.",
        "",
        "| upstream | target sent | expected | observed | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in ROWS:
        target = r.target.decode("latin-1").replace("|", "\\|")
        verdict = "; ".join(r.problems).replace("|", "\\|") or "ok"
        lines.append(f"| {r.kind} | `{target}` | {r.expected} | {r.observed.replace('|', '/')} | {verdict} |")
    failed = sum(bool(r.problems) for r in ROWS)
    lines += ["", f"{len(ROWS) - failed} of {len(ROWS)} as expected."]
    REPORT.write_text("\n".join(lines) + "\n")


def _config(admin_url: str, public_url: str, keys_file: Path) -> dict[str, Any]:
    return {
        "upstreams": {"admin": {"url": admin_url}, "public": {"url": public_url}},
        "routes": [
            {
                "prefix": "/admin",
                "upstream": "admin",
                "plugins": [{"use": "api_key", "options": {"keys_file": str(keys_file)}}],
            },
            {"prefix": "/", "upstream": "public"},
        ],
    }


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(f"ops:{KEY}\n")
    return path


def _request(target: bytes, *headers: bytes) -> bytes:
    return (
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: gw.test\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + (b"Connection: close\r\n\r\n")
    )


def _check(
    target: bytes, expected: str, status: int | None, body: bytes, public_got: list[bytes], admin_got: int
) -> list[str]:
    problems: list[str] = []
    if admin_got:
        problems.append("the admin upstream got a request without a key")
    if expected == "public":
        if len(public_got) != 1:
            problems.append(f"the public upstream got {len(public_got)} requests, not 1")
    elif public_got:
        problems.append(f"the public upstream got {public_got!r}")
    if expected == "400":
        if status != 400 or json.loads(body or b"{}").get("error") != "bad_request":
            problems.append(f"expected 400 bad_request, got {status}")
    elif expected == "401" and status != 401:
        problems.append(f"expected 401 from the /admin route, got {status}")
    for sent in public_got:
        path = sent.partition(b"?")[0]
        bad = {r: server for r, server in upstream_readings(path).items() if under_admin(r)}
        if bad:
            problems.append(f"{sent!r} reached the public upstream and reads as {bad}")
    return problems


@pytest.fixture
async def starlette_upstreams() -> AsyncIterator[tuple[StarletteUpstream, StarletteUpstream, str, str]]:
    admin, public = StarletteUpstream(), StarletteUpstream()
    async with run_server(admin.app(), lifespan="off") as a, run_server(public.app(), lifespan="off") as p:
        yield admin, public, a.url, p.url


@pytest.mark.parametrize("kind", ["starlette", "raw"])
async def test_no_spelling_reaches_the_public_upstream_as_an_admin_path(
    kind: str, keys_file: Path, starlette_upstreams: tuple[StarletteUpstream, StarletteUpstream, str, str]
) -> None:
    admin_app, public_app, admin_url, public_url = starlette_upstreams
    async with recording_upstream() as admin_raw, recording_upstream() as public_raw:
        if kind == "raw":
            admin_url, public_url = admin_raw.url, public_raw.url
        gateway = Gateway(build_config(_config(admin_url, public_url, keys_file)))
        async with run_gateway(gateway) as gw:
            failures = []
            for target, expected in SPELLINGS:
                before_public = len(public_app.seen) if kind == "starlette" else len(public_raw.requests)
                before_admin = len(admin_app.seen) if kind == "starlette" else len(admin_raw.requests)
                observed = await exchange(gw.port, _request(target), limit=10)
                response = observed.responses[0] if observed.responses else None
                status = response.status if response else None
                body = response.body if response else b""
                if kind == "starlette":
                    public_got = public_app.seen[before_public:]
                    admin_got = len(admin_app.seen) - before_admin
                    if status == 200 and json.loads(body).get("handler") == "admin":
                        public_got = [*public_got, b"<Starlette served its admin handler>"]
                else:
                    public_got = [r.target for r in public_raw.requests[before_public:]]
                    admin_got = len(admin_raw.requests) - before_admin
                problems = _check(target, expected, status, body, public_got, admin_got)
                shown = f"{status}" + (f", upstream got {public_got[0].decode('latin-1')}" if public_got else "")
                ROWS.append(Row(kind, target, expected, shown, problems))
                if problems:
                    failures.append(f"{target!r}: {'; '.join(problems)}")
            assert not failures, "\n".join(failures)


async def test_a_spelling_with_the_key_reaches_the_admin_upstream_normalised(
    keys_file: Path, starlette_upstreams: tuple[StarletteUpstream, StarletteUpstream, str, str]
) -> None:
    admin_app, public_app, admin_url, public_url = starlette_upstreams
    gateway = Gateway(build_config(_config(admin_url, public_url, keys_file)))
    async with run_gateway(gateway) as gw:
        key = b"x-api-key: " + KEY.encode()
        for target, forwarded in (
            (b"/public/../admin/x?q=1", b"/admin/x?q=1"),  # normalised: only one reading left
            (b"/%61dmin/x", b"/%61dmin/x"),  # every reading is /admin/x: as sent
            (b"/admin/a%2Fb", b"/admin/a%2Fb"),
        ):
            observed = await exchange(gw.port, _request(target, key))
            assert observed.statuses == [200]
            assert json.loads(observed.responses[0].body) == {"handler": "admin"}
            assert admin_app.seen[-1] == forwarded
        assert not public_app.seen


@pytest.mark.parametrize("http", ["h11", "httptools"])
async def test_a_fragment_never_reaches_the_public_upstream_under_plain_uvicorn(
    http: str, keys_file: Path, starlette_upstreams: tuple[StarletteUpstream, StarletteUpstream, str, str]
) -> None:
    """Library use: the gateway served by Uvicorn's own protocols. h11 keeps the '#' in raw_path: the gateway
    answers 400. httptools drops the fragment before the app sees it: the request is /admin, and its plugin
    refuses it. Either way nothing reaches the public upstream."""
    admin_app, public_app, admin_url, public_url = starlette_upstreams
    gateway = Gateway(build_config(_config(admin_url, public_url, keys_file)))
    async with run_server(gateway, http=http, lifespan="on") as gw:
        for target in (b"/admin#/../public", b"/admin/users#/../../"):
            observed = await exchange(gw.port, _request(target))
            assert observed.statuses == ([400] if http == "h11" else [401]), target
        observed = await exchange(gw.port, _request(b"/public/..;/admin/secret"))
        assert observed.statuses == [400]
    assert not public_app.seen and not admin_app.seen


async def test_forward_auth_sees_the_path_the_route_matched(tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    async def auth(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    public = StarletteUpstream()
    async with (
        run_server(auth, lifespan="off") as auth_server,
        run_server(public.app(), lifespan="off") as upstream,
    ):
        config = {
            "upstreams": {"app": {"url": upstream.url}},
            "routes": [
                {
                    "prefix": "/app",
                    "upstream": "app",
                    "plugins": [{"use": "forward_auth", "options": {"url": f"{auth_server.url}/check"}}],
                }
            ],
        }
        async with run_gateway(Gateway(build_config(config))) as gw:
            for target, uri, forwarded in (
                (b"/x/../app/%61/b?q=1", "/app/a/b?q=1", b"/app/a/b?q=1"),  # normalised
                (b"/%61pp/a%2Fb", "/app/a%2Fb", b"/%61pp/a%2Fb"),  # as sent; the auth server sees the routed path
            ):
                observed = await exchange(gw.port, _request(target))
                assert observed.statuses == [200]
                assert seen[-1]["x-forwarded-uri"] == uri
                assert public.seen[-1] == forwarded


async def test_through_fastgate_run_the_400_and_the_normalised_forwarding(tmp_path: Path, keys_file: Path) -> None:
    """The same rules in a real ``fastgate run`` process, in front of the Starlette upstreams."""
    admin, public = StarletteUpstream(), StarletteUpstream()
    async with run_server(admin.app(), lifespan="off") as a, run_server(public.app(), lifespan="off") as p:
        port = free_port()
        config = _config(a.url, p.url, keys_file)
        config["server"] = {"host": "127.0.0.1", "port": port}
        config_file = tmp_path / "gateway.json"
        config_file.write_text(json.dumps(config))

        def run() -> list[tuple[int, dict[str, Any]]]:
            results = []
            with fastgate_run(config_file, tmp_path / "gateway.log", port):
                for target, headers in (
                    (b"/admin#/../public", ()),
                    (b"/public/..;/admin/secret", ()),
                    (b"/public/../admin/x?q=1", (b"x-api-key: " + KEY.encode(),)),
                    (b"/admin/x/../../public", ()),
                    (b"/admin%23/../public", ()),  # an escaped '#' is data: every reading is public
                ):
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                        sock.sendall(_request(target, *headers))
                        data = b""
                        while chunk := sock.recv(65536):
                            data += chunk
                    results.append((int(data.split(b" ", 2)[1]), json.loads(data.partition(b"\r\n\r\n")[2])))
            return results

        results = await anyio.to_thread.run_sync(run)
    for status, body in results[:2]:
        assert (status, body["error"]) == (400, "bad_request")
    assert "fragment" in results[0][1]["detail"] and "ambiguous path" in results[1][1]["detail"]
    assert results[2:] == [(200, {"handler": "admin"}), (200, {"handler": "public"}), (200, {"handler": "public"})]
    assert admin.seen == [b"/admin/x?q=1"]  # the normalised path, the query kept
    assert public.seen == [b"/public", b"/admin%23/../public"]


async def test_a_websocket_handshake_takes_the_same_decision(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder, keys_file: Path
) -> None:
    config = _config(ws_upstream.url, ws_upstream.url, keys_file)
    async with run_gateway(Gateway(build_config(config))) as gw:
        url = f"ws://127.0.0.1:{gw.port}"
        for path in ("/public/..;/admin/ws/echo", "//admin/ws/echo", "/public/..%2Fadmin/ws/echo"):
            with pytest.raises(InvalidStatus) as info:
                async with connect(url + path, proxy=None):
                    pass
            assert info.value.response.status_code == 400, path
        assert not ws_recorder.handshakes
        async with connect(url + "/admin/../ws/echo?x=1", proxy=None):  # normalised: the / route, as /ws/echo
            pass
        assert (ws_recorder.handshakes[-1]["raw_path"], ws_recorder.handshakes[-1]["query_string"]) == (
            "/ws/echo",
            "x=1",
        )
