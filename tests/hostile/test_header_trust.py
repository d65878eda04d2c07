"""Header trust (issue 17, items 3 and 4): every header a client could forge to look trusted, from an untrusted and
from a trusted peer, over HTTP and WebSocket, and exactly what the upstream (a raw recorder on 127.0.0.1) receives.

The client is this process on 127.0.0.1. "Trusted" configs set ``server.trusted_proxies: [127.0.0.0/8, ::1]``;
"untrusted" ones leave it empty (the default) or set a range without 127.0.0.1. The forged headers: the identity
header and every identity header a plugin of the config asserts (``identity_header`` of api_key, jwt and basic_auth,
``identity_header_from`` of forward_auth), X-Real-IP, X-Forwarded-For/-Proto/-Host/-Port/-Prefix and Forwarded.
They are sent to the route without plugins and to the forward_auth route (which lets them through), and the rate
limit key and the access log's client are checked to come from the right address, once through ``fastgate run``.

Running this module writes build/header-trust.md: header, sent, received from an untrusted and a trusted peer.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import bcrypt
import httptools
import pytest

from fastgate import Gateway
from fastgate.config import build_config
from fastgate.exceptions import ConfigError
from fastgate.snapshot import Snapshot
from tests.auth.helpers import all_logs, jwks, rsa_key
from tests.hostile.support import (
    OK,
    RecordingUpstream,
    UpstreamConnection,
    UpstreamRequest,
    exchange,
    gateway_process,
)
from tests.servers import LogCapture, run_gateway, wait_until

pytestmark = pytest.mark.anyio

REPORT = Path(__file__).resolve().parents[2] / "build" / "header-trust.md"
TRUSTED = ["127.0.0.0/8", "::1"]
UNTRUSTED: dict[str, list[str]] = {"none trusted": [], "another range trusted": ["192.0.2.0/24", "fd00::/8"]}

# name, value sent, what the upstream gets from an untrusted peer, and from a trusted one (None: the value sent)
Row = tuple[bytes, bytes, list[bytes], list[bytes] | None]
TABLE: list[Row] = [
    (b"x-fastgate-identity", b"mallory", [], []),
    (b"x-caller", b"mallory", [], []),  # api_key's identity_header on /key
    (b"x-subject", b"mallory", [], []),  # jwt's identity_header on /jwt
    (b"x-basic-user", b"mallory", [], []),  # basic_auth's identity_header on /basic
    (b"x-user", b"mallory", [], []),  # forward_auth's identity_header_from on /fa
    (b"x-real-ip", b"203.0.113.66", [], None),
    (b"x-forwarded-for", b"203.0.113.7", [b"203.0.113.7, 127.0.0.1"], [b"203.0.113.7, 127.0.0.1"]),
    (b"x-forwarded-proto", b"https", [b"http"], None),
    (b"x-forwarded-host", b"evil.test", [b"example.test"], None),
    (b"x-forwarded-port", b"443", [], None),
    (b"x-forwarded-prefix", b"/admin", [], None),
    (b"forwarded", b"for=203.0.113.66;proto=https", [], None),
]
SENT_BACK_UNCHANGED = (b"accept", b"*/*")  # an ordinary header, for contrast
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


class _Recorder(RecordingUpstream):
    """support.RecordingUpstream, which also records a WebSocket handshake (and refuses it with 403)."""

    @staticmethod
    async def _relay(stream: anyio.abc.SocketStream, connection: UpstreamConnection, parser: Any) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            while True:
                data = await stream.receive()
                connection.data += data
                before = parser.complete
                try:
                    parser.parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    await stream.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                for _ in range(parser.complete - before):
                    await stream.send(OK)


@contextlib.asynccontextmanager
async def recording_upstream() -> AsyncIterator[RecordingUpstream]:
    upstream = _Recorder()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    upstream.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, upstream._serve)
        yield upstream
        tg.cancel_scope.cancel()


def _expected(row: Row, trusted: bool) -> list[bytes]:
    name, value, untrusted_gets, trusted_gets = row
    if not trusted:
        return untrusted_gets
    return [value] if trusted_gets is None else trusted_gets


def _forged_head() -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value, _, _ in TABLE) + b"accept: */*\r\n"


def _http_request(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nhost: example.test\r\n" + _forged_head() + b"connection: close\r\n\r\n"


def _websocket_request(target: bytes) -> bytes:
    return (
        b"GET " + target + b" HTTP/1.1\r\nhost: example.test\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-key: " + WS_KEY + b"\r\nsec-websocket-version: 13\r\n" + _forged_head() + b"\r\n"
    )


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The files the auth plugins of the config need (they are never passed: only their identity headers matter)."""
    folder = tmp_path_factory.mktemp("credentials")
    keys = folder / "keys.txt"
    keys.write_text("billing:k3y-for-billing\n")
    users = folder / "users.htpasswd"
    users.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode() + "\n")
    jwks_path = folder / "jwks.json"
    jwks_path.write_text(json.dumps(jwks(rsa_key("k1"))))
    return {"keys": str(keys), "users": str(users), "jwks": str(jwks_path)}


def _config(upstream_url: str, credentials: dict[str, str], trusted: list[str], **server: Any) -> dict[str, Any]:
    plugin_routes = [
        ("/key", {"use": "api_key", "options": {"keys_file": credentials["keys"], "identity_header": "x-caller"}}),
        ("/jwt", {"use": "jwt", "options": {"jwks_file": credentials["jwks"], "identity_header": "x-subject"}}),
        (
            "/basic",
            {"use": "basic_auth", "options": {"users_file": credentials["users"], "identity_header": "x-basic-user"}},
        ),
        ("/fa", {"use": "forward_auth", "options": {"url": upstream_url + "/check", "identity_header_from": "x-user"}}),
    ]
    routes = [{"prefix": prefix, "upstream": "main", "plugins": [plugin]} for prefix, plugin in plugin_routes]
    routes.append({"prefix": "/", "upstream": "main"})
    return {
        "server": {"trusted_proxies": trusted, **server},
        "upstreams": {"main": {"url": upstream_url}},
        "routes": routes,
    }


def _received(upstream: RecordingUpstream, marker: bytes) -> UpstreamRequest:
    found = [r for r in upstream.requests if r.target.endswith(b"?via=" + marker)]
    assert len(found) == 1, (marker, [r.target for r in upstream.requests])
    return found[0]


def _problems(request: UpstreamRequest, trusted: bool) -> list[str]:
    problems = []
    for row in TABLE:
        got, wanted = request.header(row[0]), _expected(row, trusted)
        if got != wanted:
            problems.append(f"{row[0].decode()}: sent {row[1]!r}, upstream got {got!r}, expected {wanted!r}")
    if request.header(SENT_BACK_UNCHANGED[0]) != [SENT_BACK_UNCHANGED[1]]:
        problems.append(f"an ordinary header did not pass: {request.headers!r}")
    return problems


@pytest.fixture(scope="module")
def report() -> Iterator[dict[str, dict[bytes, list[bytes]]]]:
    """Collects what the upstream got per (peer, route, protocol), written as build/header-trust.md at the end."""
    seen: dict[str, dict[bytes, list[bytes]]] = {}
    yield seen
    if not seen:
        return
    groups = {
        "untrusted peer": [c for c in seen if not c.startswith("trusted")],
        "trusted peer": [c for c in seen if c.startswith("trusted")],
    }
    lines = [
        "# Header trust: what the upstream receives of each forged header",
        "",
        "Client on 127.0.0.1, one request carrying every header below, over HTTP and WebSocket, to a route without",
        "plugins and to a forward_auth route. Trusted peer: `server.trusted_proxies: [127.0.0.0/8, ::1]`; untrusted",
        "peer: `trusted_proxies` empty, or `[192.0.2.0/24, fd00::/8]`. `-`: removed. A cell lists every distinct",
        "value seen across those requests (one value: they all agree).",
        "",
        "| header | sent | " + " | ".join(f"{g} ({len(cs)} requests)" for g, cs in groups.items()) + " |",
        "|---|---|---|---|",
    ]
    for name, value, _, _ in TABLE:
        cells = []
        for columns in groups.values():
            distinct = sorted({", ".join(v.decode() for v in seen[c].get(name, [])) or "-" for c in columns})
            cells.append(" / ".join(f"`{d}`" if d != "-" else d for d in distinct))
        lines.append(f"| `{name.decode()}` | `{value.decode()}` | " + " | ".join(cells) + " |")
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("peer", ["trusted", *UNTRUSTED])
async def test_forged_trust_headers_reach_the_upstream_only_as_specified(
    peer: str, credentials: dict[str, str], report: dict[str, dict[bytes, list[bytes]]]
) -> None:
    """Issue 17 item 3 (no route lets a forged identity header through, HTTP or WebSocket, forward_auth included)
    and item 4 (X-Real-IP, X-Forwarded-Port/-Prefix and Forwarded only from a trusted peer)."""
    trusted = peer == "trusted"
    async with recording_upstream() as upstream:
        config = build_config(_config(upstream.url, credentials, TRUSTED if trusted else UNTRUSTED[peer]))
        async with run_gateway(Gateway(config)) as gw:
            sent = {
                b"http-public": _http_request(b"/public?via=http-public"),
                b"http-forward-auth": _http_request(b"/fa/x?via=http-forward-auth"),
                b"ws-public": _websocket_request(b"/public?via=ws-public"),
                b"ws-forward-auth": _websocket_request(b"/fa/x?via=ws-forward-auth"),
            }
            for marker, request in sent.items():
                observed = await exchange(gw.port, request, wait_for_close=not marker.startswith(b"ws"), limit=10)
                assert observed.responses, (marker, observed.describe())
        await upstream.wait_closed()
    problems = []
    for marker in sent:
        request = _received(upstream, marker)
        problems += [f"{marker.decode()}: {p}" for p in _problems(request, trusted)]
        report[f"{peer}, {marker.decode()}"] = {row[0]: request.header(row[0]) for row in TABLE}
    assert not problems, "\n".join(problems)


async def test_forwarded_true_appends_ours_to_a_clients_forwarded_from_any_peer(credentials: dict[str, str]) -> None:
    for trusted in (TRUSTED, []):
        async with recording_upstream() as upstream:
            data = _config(upstream.url, credentials, trusted)
            data["upstreams"]["main"]["forwarded"] = True
            async with run_gateway(Gateway(build_config(data))) as gw:
                await exchange(gw.port, _http_request(b"/?via=fwd"))
            await upstream.wait_closed()
        assert _received(upstream, b"fwd").header(b"forwarded") == [
            b'for=203.0.113.66;proto=https, for=127.0.0.1;proto=http;host="example.test"'
        ], trusted


def test_the_config_strips_every_asserted_identity_header_on_every_route(credentials: dict[str, str]) -> None:
    snapshot = Snapshot(build_config(_config("http://127.0.0.1:9", credentials, [])))
    assert snapshot.stripped_headers == {b"x-fastgate-identity", b"x-caller", b"x-subject", b"x-basic-user", b"x-user"}
    for options in snapshot.websocket_options.values():
        assert all(options.rules.table[name] == options.rules.table[b"x-fastgate-identity"] for name in TABLE_NAMES)


TABLE_NAMES = [b"x-caller", b"x-subject", b"x-basic-user", b"x-user"]


# --- the rate limit key and the access log's client ---


def _limited_config(upstream_url: str, trusted: list[str]) -> dict[str, Any]:
    return {
        "server": {"trusted_proxies": trusted, "access_log": True},
        "upstreams": {"main": {"url": upstream_url}},
        "routes": [
            {"prefix": "/", "upstream": "main", "rate_limit": {"rate": 1, "per": "1h", "burst": 1, "key": "client_ip"}}
        ],
    }


def _get(marker: str, forwarded_for: str) -> bytes:
    return (
        f"GET /?via={marker} HTTP/1.1\r\nhost: example.test\r\nx-forwarded-for: {forwarded_for}\r\n"
        "x-real-ip: 198.51.100.99\r\nconnection: close\r\n\r\n"
    ).encode()


# (marker, X-Forwarded-For sent, status behind a trusted proxy, access-log client; then from an untrusted peer)
LIMITED = [
    ("a1", "203.0.113.1", 200, "203.0.113.1:0", 200),
    ("b1", "203.0.113.2", 200, "203.0.113.2:0", 429),
    ("a2", "203.0.113.1", 429, "203.0.113.1:0", 429),
    ("a3", "198.51.100.5, 203.0.113.1", 429, "203.0.113.1:0", 429),  # what the client itself added is not read
    ("c1", "203.0.113.3, 127.0.0.9", 200, "203.0.113.3:0", 429),  # a second trusted hop is skipped
]


def _access(logs: LogCapture) -> list[str]:
    return [record.getMessage() for record in logs.records if record.name == "fastgate.access"]


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
async def test_rate_limit_key_and_access_log_client_come_from_the_right_address(trusted: bool) -> None:
    """Issue 17 item 4: behind a trusted proxy, client_ip and the access log's client are the client it names."""
    async with recording_upstream() as upstream:
        config = build_config(_limited_config(upstream.url, TRUSTED if trusted else ["192.0.2.0/24"]))
        async with run_gateway(Gateway(config)) as gw:
            with all_logs() as logs:  # attached once the server runs (starting it configures logging)
                for marker, forwarded_for, status_trusted, _, status_untrusted in LIMITED:
                    observed = await exchange(gw.port, _get(marker, forwarded_for))
                    wanted = status_trusted if trusted else status_untrusted
                    assert observed.statuses == [wanted], (marker, observed.describe())
                await wait_until(lambda: len(_access(logs)) >= len(LIMITED))
    lines = _access(logs)
    for (marker, _, _, client, _), line in zip(LIMITED, lines, strict=True):
        assert f"via={marker}" in line
        if trusted:
            assert line.startswith(client + " - "), line
        else:
            assert line.startswith("127.0.0.1:") and not line.startswith("127.0.0.1:0 "), line
    # what fastgate appends to X-Forwarded-For stays its TCP peer; X-Real-IP only from the trusted proxy
    first = _received(upstream, b"a1")
    assert first.header(b"x-forwarded-for") == [b"203.0.113.1, 127.0.0.1"]
    assert first.header(b"x-real-ip") == ([b"198.51.100.99"] if trusted else [])


# --- through a real `fastgate run` process ---


async def test_fastgate_run_rate_limits_each_forwarded_client_behind_a_trusted_proxy(tmp_path: Path) -> None:
    """Two X-Forwarded-For clients get separate buckets from a trusted peer and share one from an untrusted peer;
    the access log names the client; the identity header never passes."""
    for trusted in (True, False):
        async with recording_upstream() as upstream:
            data = _limited_config(upstream.url, TRUSTED if trusted else ["192.0.2.0/24"])
            folder = tmp_path / ("trusted" if trusted else "untrusted")
            folder.mkdir()
            with gateway_process(data, folder) as gateway:
                statuses = []
                for marker, forwarded_for in [("p1", "203.0.113.1"), ("p2", "203.0.113.2"), ("p3", "203.0.113.1")]:
                    request = _get(marker, forwarded_for).replace(
                        b"\r\n\r\n", b"\r\nx-fastgate-identity: mallory\r\n\r\n"
                    )
                    statuses += (await exchange(gateway.port, request)).statuses
                await wait_until(lambda: gateway.log().count('"GET /?via=p') >= 3, limit=10)
                log = gateway.log()
            await upstream.wait_closed()
        if trusted:
            assert statuses == [200, 200, 429]
            assert '203.0.113.1:0 - "GET /?via=p1' in log and '203.0.113.2:0 - "GET /?via=p2' in log
        else:
            assert statuses == [200, 429, 429]
            access = [line for line in log.splitlines() if '"GET /?via=p' in line]
            assert len(access) == 3 and all(" 127.0.0.1:" in line and "203.0.113" not in line for line in access)
        for request in upstream.requests:
            assert request.header(b"x-fastgate-identity") == []
            assert request.header(b"x-forwarded-for")[0].endswith(b", 127.0.0.1")


def test_a_bad_trusted_proxy_is_one_config_error_naming_the_key(tmp_path: Path) -> None:
    data = _limited_config("http://127.0.0.1:9", ["10.0.0.0/8", "10.0.0.0/33"])
    with pytest.raises(ConfigError) as caught:
        build_config(data)
    message = "server.trusted_proxies: not an address or CIDR block: '10.0.0.0/33'"
    assert str(caught.value) == message
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(data))
    result = subprocess.run(
        [sys.executable, "-m", "fastgate", "run", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert message in result.stderr + result.stdout and "Traceback" not in result.stderr
