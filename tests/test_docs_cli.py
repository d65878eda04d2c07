"""Through the CLI: every config example of docs/config.md and docs/security.md, served by a real ``fastgate run``.

Each YAML example in those two files carries a marker on the line before it, ``<!-- example: NAME -->``, and
:data:`CASES` has one case per name: the example is written to a file as it stands, with only what cannot run here
replaced (ports, certificate, key, htpasswd and JWKS paths, upstream and auth-server addresses: local servers of
this test), completed where it is a fragment (an upstream and a route to serve), then served by
``python -m fastgate run FILE`` and exercised by requests that show its keys took effect. The meta-test fails when
an example has no marker or no case, so a new example cannot land in the docs untested.

This suite is also the regression test of issue 17 item 6 (``server.max_body_bytes`` was ignored by ``fastgate
run``): see ``security-request-limits`` and :func:`test_server_max_body_bytes_holds_through_fastgate_run`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import bcrypt
import httpx
import pytest
import yaml

from fastgate.admin.redaction import redacted_config
from fastgate.config import build_config
from tests.auth.helpers import SigningKey, jwks, rsa_key
from tests.redis_server import RedisServer
from tests.servers import GatewayProcess, RunningServer, answer_lifespan, free_port, run_server, wait_for_port

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("docs/config.md", "docs/security.md", "docs/http2.md")
MARKER = re.compile(r"^<!-- example: ([a-z0-9-]+) -->$")
FENCE = re.compile(r"^```(\S*)\s*$")
CONFIG_SECTIONS = frozenset({"server", "upstreams", "routes", "admin", "redis", "metrics", "tracing"})
MIB = 1 << 20


# -- the examples --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    name: str  # the marker's name, or "<doc>:<line> (no marker)"
    doc: str
    line: int
    text: str


def doc_examples() -> list[Example]:
    """Every fenced block of the docs that is a config example: tagged ``yaml``, or YAML with a config section."""
    found = []
    for doc in DOCS:
        lines = (ROOT / doc).read_text().split("\n")
        index = 0
        while index < len(lines):
            opened = FENCE.match(lines[index])
            if opened is None:
                index += 1
                continue
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            text = "\n".join(lines[index + 1 : end])
            marker = MARKER.match(lines[index - 1]) if index else None
            if opened.group(1) == "yaml" or _is_config(text):
                name = marker.group(1) if marker else f"{doc}:{index + 1} (no marker)"
                found.append(Example(name, doc, index + 1, text))
            index = end + 1
    return found


def _is_config(text: str) -> bool:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and bool(CONFIG_SECTIONS & set(data))


EXAMPLES = {example.name: example for example in doc_examples()}


# -- local stand-ins: upstreams, an auth server, a JWKS endpoint ---------------------------------------------------


@dataclass
class DocUpstream:
    """An upstream (or one target of one) that records each request and answers what it got as JSON.

    ``/.../hold`` waits for ``release``; ``/flaky/ID`` answers 503 the first time for an ID; ``/check`` is a
    forward_auth server (``Bearer <user>-token`` -> 200 with ``x-user: <user>``, else 401); ``/jwks.json`` the
    JWKS; with ``failing``, ``/fail...`` answers 503. Every answer carries ``server: doc-upstream``. A request whose
    body is cut short (the gateway aborted it) is not recorded in ``requests``, only in ``aborted``.
    """

    name: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    probes: int = 0
    held: int = 0
    release: anyio.Event = field(default_factory=anyio.Event)
    failing: bool = False
    jwks: dict[str, Any] | None = None
    flaky_seen: set[str] = field(default_factory=set)
    aborted: list[str] = field(default_factory=list)  # paths of requests whose body never arrived whole

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # the body was cut short: not a request the upstream served
                self.aborted.append(scope["path"])
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status, extra = 200, []
        if path == "/healthz":
            self.probes += 1
            return await _answer(send, 200, {"status": "ok"})
        if path == "/jwks.json":
            return await _answer(send, 200, self.jwks)
        record = {
            "upstream": self.name,
            "method": scope["method"],
            "path": path,
            "query": scope["query_string"].decode("latin-1"),
            "headers": headers,
            "body_size": size,
            "http_version": scope.get("http_version"),
        }
        self.requests.append(record)
        if path == "/check":
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme == "Bearer" and token.endswith("-token"):
                extra = [(b"x-user", token.removesuffix("-token").encode())]
            else:
                status = 401
        elif path.endswith("/hold"):
            self.held += 1
            await self.release.wait()
        elif path.startswith("/flaky/") and path not in self.flaky_seen:
            self.flaky_seen.add(path)
            status = 503
        elif path.startswith("/fail") and self.failing:
            status = 503
        await _answer(send, status, record, extra)


async def _answer(send: Any, status: int, body: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(data)),
        (b"server", b"doc-upstream"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


# -- the environment of one case -----------------------------------------------------------------------------------


@dataclass
class Env:
    """What a case needs: local servers by name, files, Redis, TLS, the running gateway and its clients."""

    tmp: Path
    stack: contextlib.AsyncExitStack
    redis: RedisServer
    servers: dict[str, RunningServer] = field(default_factory=dict)
    apps: dict[str, DocUpstream] = field(default_factory=dict)
    signing: SigningKey = field(default_factory=lambda: _SIGNING)
    port: int = 0
    admin_port: int = 0
    h2_ports: dict[str, int] = field(default_factory=dict)
    gateway: GatewayProcess | None = None
    tls: bool = False
    ca: Any = None
    api_key: str = "k-3f9a0c7e5d"
    password: str = "correct horse"

    async def upstream(self, name: str) -> DocUpstream:
        """The local server standing for ``name`` (an upstream, ``name#i`` for its i-th target, or ``auth``)."""
        if name not in self.apps:
            app = DocUpstream(name, jwks=jwks(self.signing))
            self.apps[name] = app
            self.servers[name] = await self.stack.enter_async_context(run_server(app))
        return self.apps[name]

    async def url_of(self, name: str, original: str) -> str:
        """``original`` (an example's URL) pointed at the local server for ``name``, its path kept."""
        await self.upstream(name)
        parts = urlsplit(original)
        return urlunsplit(("http", f"127.0.0.1:{self.servers[name].port}", parts.path, parts.query, ""))

    async def h2_url_of(self, name: str, original: str, *, tls: bool) -> str:
        """``original`` pointed at a local HTTP/2 server for ``name`` (Hypercorn: h2c, or h2 over TLS)."""
        from tests.upstream.h2_servers import run_hypercorn

        if name not in self.apps:
            app = DocUpstream(name, jwks=jwks(self.signing))
            self.apps[name] = app
            files = self.upstream_tls_files() if tls else {}
            running = await self.stack.enter_async_context(
                run_hypercorn(app, certfile=files.get("cert_file"), keyfile=files.get("key_file"))
            )
            self.h2_ports[name] = running.port
        parts = urlsplit(original)
        scheme = "https" if tls else "http"
        return urlunsplit((scheme, f"127.0.0.1:{self.h2_ports[name]}", parts.path, parts.query, ""))

    def upstream_tls_files(self) -> dict[str, str]:
        """A certificate for 127.0.0.1 signed by this test's CA, and the CA as ``ca_file``."""
        self.tls_files()  # makes the CA
        path = self.tmp / "upstream-ca.pem"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return {**self.tls_files(), "ca_file": str(path)}

    def seen(self, name: str, path: str | None = None) -> list[dict[str, Any]]:
        requests = self.apps[name].requests if name in self.apps else []
        return [r for r in requests if path is None or r["path"] == path]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def client(self, **options: Any) -> httpx.AsyncClient:
        verify: Any = True
        if self.tls:
            verify = ssl.create_default_context()
            self.ca.configure_trust(verify)
        options.setdefault("timeout", 15)
        return httpx.AsyncClient(base_url=self.url, verify=verify, **options)

    def tls_files(self) -> dict[str, str]:
        import trustme

        if self.ca is None:
            self.ca = trustme.CA()
            issued = self.ca.issue_cert("127.0.0.1", "localhost")
            issued.cert_chain_pems[0].write_to_path(str(self.tmp / "fullchain.pem"))
            for blob in issued.cert_chain_pems[1:]:
                blob.write_to_path(str(self.tmp / "fullchain.pem"), append=True)
            issued.private_key_pem.write_to_path(str(self.tmp / "privkey.pem"))
        return {"cert_file": str(self.tmp / "fullchain.pem"), "key_file": str(self.tmp / "privkey.pem")}

    def keys_file(self) -> str:
        path = self.tmp / "keys.txt"
        path.write_text(f"# name:key\npartner-a:{self.api_key}\n")
        return str(path)

    def users_file(self) -> str:
        path = self.tmp / "htpasswd"
        path.write_text(f"alice:{bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
        return str(path)

    def basic(self, user: str = "alice") -> str:
        return "Basic " + base64.b64encode(f"{user}:{self.password}".encode()).decode()

    def token(self, issuer: str, audience: str, subject: str = "alice") -> str:
        return self.signing.token({"iss": issuer, "aud": audience, "sub": subject})

    async def redis_keys(self, *, flush: bool = False) -> int:
        """How many keys this module's Redis holds (after emptying it, with ``flush``)."""
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.redis.url)
        try:
            if flush:
                await client.flushdb()
            return int(await client.dbsize())
        finally:
            await client.aclose()

    # -- the example, made runnable here ---------------------------------------------------------------------------

    async def localize(self, data: dict[str, Any]) -> dict[str, Any]:
        """The example with what cannot run here replaced, and completed if it is a fragment (see the module doc)."""
        data = json.loads(json.dumps(data))  # a copy
        server = data.setdefault("server", {})
        self.port = free_port()
        server["port"] = self.port
        if server.get("host", "127.0.0.1") != "127.0.0.1":
            server["host"] = "127.0.0.1"  # traffic stays on 127.0.0.1 (the example says 0.0.0.0)
        if "tls" in server:
            server["tls"] = self.tls_files()
            self.tls = True
        if "admin" in data:
            self.admin_port = free_port()
            data["admin"]["listen"] = f"127.0.0.1:{self.admin_port}"
        if "redis" in data:
            data["redis"]["url"] = self.redis.url
        upstreams = data.setdefault("upstreams", {})
        routes = data.get("routes")
        if not upstreams and not routes:
            upstreams["default"] = {"url": "http://127.0.0.1:9000"}
        if routes is None:
            data["routes"] = [{"prefix": f"/{name}", "upstream": name} for name in upstreams]
            data["routes"].append({"prefix": "/", "upstream": next(iter(upstreams))})
        for route in data["routes"]:
            if route["upstream"] not in upstreams:
                upstreams[route["upstream"]] = {"url": "http://127.0.0.1:9000"}
            for spec in route.get("plugins", []):
                if isinstance(spec, dict):
                    await self._localize_plugin(spec)
            store = (route.get("rate_limit") or {}).get("store")
            stores = [
                store,
                *((s.get("options") or {}).get("store") for s in route.get("plugins", []) if isinstance(s, dict)),
            ]
            if "redis" in stores and "redis" not in data:
                data["redis"] = {"url": self.redis.url}  # the example leaves the top-level redis to its section
        for name, upstream in upstreams.items():
            if upstream.get("protocol") in ("h2c", "h2"):
                tls = upstream["protocol"] == "h2"
                upstream["url"] = await self.h2_url_of(name, upstream["url"], tls=tls)
                if tls:
                    upstream["ca_file"] = self.upstream_tls_files()["ca_file"]
                continue
            if "url" in upstream:
                upstream["url"] = await self.url_of(name, upstream["url"])
            for index, target in enumerate(upstream.get("targets", [])):
                target["url"] = await self.url_of(f"{name}#{index}", target["url"])
        return data

    async def _localize_plugin(self, spec: dict[str, Any]) -> None:
        options = spec.get("options")
        if spec.get("use") == "jwt" and options == {"...": None}:
            # `options: {...}` stands for "your jwt options": the JWKS of this test, nothing checked beyond it
            spec["options"] = options = {"jwks_url": "https://idp.example/.well-known/jwks.json"}
        if not isinstance(options, dict):
            return
        if "keys_file" in options:
            options["keys_file"] = self.keys_file()
        if "users_file" in options:
            options["users_file"] = self.users_file()
        if "jwks_url" in options:
            options["jwks_url"] = await self.url_of("idp", "http://idp/jwks.json")
        if spec.get("use") == "forward_auth":
            options["url"] = await self.url_of("auth", options["url"])

    @contextlib.asynccontextmanager
    async def serve(self, example: str, *, edit: Callable[[dict[str, Any]], None] | None = None) -> AsyncIterator[Env]:
        """``fastgate run`` the example named ``example`` (localized, then ``edit``-ed) until the block ends."""
        data = await self.localize(yaml.safe_load(EXAMPLES[example].text))
        if edit is not None:
            edit(data)
        with run_fastgate(data, self.tmp, self.port, self.admin_port) as gateway:
            self.gateway = gateway
            try:
                yield self
            finally:
                for app in self.apps.values():
                    app.release.set()


_SIGNING = rsa_key("doc-key")


def _write_plugin_package(directory: Path) -> None:
    """``mypkg.auth:TokenCheck``, the plugin docs/config.md's routes example names: ``Bearer s3cret`` passes."""
    package = directory / "mypkg"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "auth.py").write_text(
        "from fastgate import Answer, Plugin, RequestContext\n\n\n"
        "class TokenCheck(Plugin):\n"
        "    def __init__(self, realm: str = 'api') -> None:\n"
        "        self.challenge = f'Bearer realm=\"{realm}\"'\n\n"
        "    async def on_request(self, request: RequestContext) -> Answer | None:\n"
        "        if request.headers.get('authorization') != 'Bearer s3cret':\n"
        "            return Answer.json(401, {'error': 'unauthorized'}, {'www-authenticate': self.challenge})\n"
        "        request.identity = 'billing-user'\n"
        "        return None\n"
    )


@contextlib.contextmanager
def run_fastgate(
    data: dict[str, Any], directory: Path, port: int, admin_port: int = 0, args: tuple[str, ...] = ()
) -> Iterator[GatewayProcess]:
    """``python -m fastgate run gateway.yaml ARGS`` in ``directory`` (plugins import from there); SIGTERM after."""
    _write_plugin_package(directory)
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = directory / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fastgate", "run", str(path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=directory,
            start_new_session=True,
        )
    running = GatewayProcess(process, port, log_path)
    try:
        try:
            wait_for_port(port, timeout=30, process=process)
            if admin_port:
                wait_for_port(admin_port, timeout=30, process=process)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}; the gateway's log:\n{running.log()[-3000:]}") from None
        yield running
    finally:
        running.stop()


async def wait_for(predicate: Callable[[], bool], limit: float = 15.0) -> None:
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - another process fills what is polled
            await anyio.sleep(0.02)


async def chunks(size: int, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    """A request body of ``size`` bytes without a length: httpx sends it chunked."""
    for start in range(0, size, piece):
        yield b"x" * min(piece, size - start)


async def post_raw(port: int, path: str, size: int, *, chunked: bool, piece: int = 64 * 1024) -> tuple[int, bytes]:
    """POST ``size`` bytes (declared or chunked) on a raw socket, reading the answer while the body goes out.

    It reads as curl does, while the body goes out, so what the gateway answered is seen however early it came
    (tests/proxy/test_lingering*.py cover clients that read only after sending, as httpx does).
    """
    framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % size
    received = b""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:

        async def send() -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                await stream.send(
                    b"POST %s HTTP/1.1\r\nhost: gw\r\n%s\r\nconnection: close\r\n\r\n" % (path.encode(), framing)
                )
                for start in range(0, size, piece):
                    data = b"x" * min(piece, size - start)
                    await stream.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                if chunked:
                    await stream.send(b"0\r\n\r\n")

        async def receive() -> None:
            nonlocal received
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                while True:
                    received += await stream.receive()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                await receive()
                tg.cancel_scope.cancel()
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


# -- the cases: one per example -------------------------------------------------------------------------------------

Case = Callable[[Env], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn

    return register


@case("config-overview")
async def _overview(env: Env) -> None:
    async with env.serve("config-overview"), env.client() as client:
        api = await client.get("/api/users")
        assert api.json()["upstream"] == "api" and api.json()["path"] == "/v1/users"  # strip_prefix + url's /v1
        web = await client.get("/about")
        assert web.json()["upstream"] == "web"
        assert web.json()["headers"]["host"] == f"127.0.0.1:{env.servers['web'].port}"  # preserve_host: false
        assert api.json()["headers"]["host"] == f"127.0.0.1:{env.port}"  # preserve_host's default: the client's
        assert env.gateway is not None
        await wait_for(lambda: len(children(env.gateway.process.pid)) >= 2)  # workers: 2


@case("config-server-tls")
async def _server_tls(env: Env) -> None:
    async with env.serve("config-server-tls"), env.client() as client:
        response = await client.get("/x")
        assert response.status_code == 200
        assert response.json()["headers"]["x-forwarded-proto"] == "https"
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port: no HTTP answer
        async with httpx.AsyncClient(timeout=5) as plain:
            await plain.get(f"http://127.0.0.1:{env.port}/x")


@case("config-targets-consistent-hash")
async def _consistent_hash(env: Env) -> None:
    async with env.serve("config-targets-consistent-hash"), env.client() as client:
        for user in ("alice", "bob", "carol"):
            picked = {(await client.get("/x", headers={"x-user": user})).json()["upstream"] for _ in range(8)}
            assert len(picked) == 1, (user, picked)  # weights 3:1 alone would have used both targets in 8
        spread: set[str] = set()
        for _ in range(64):  # without the key: weighted random (3:1) over both; 64 misses of api#1: 1e-8
            spread.add((await client.get("/x")).json()["upstream"])
            if len(spread) == 2:
                break
        assert spread == {"api#0", "api#1"}


@case("config-least-request")
async def _least_request(env: Env) -> None:
    async with env.serve("config-least-request"), env.client() as client, anyio.create_task_group() as tg:
        tg.start_soon(client.get, "/slow/hold")
        await wait_for(lambda: env.apps["api#0"].held + env.apps["api#1"].held == 1)
        busy = "api#0" if env.apps["api#0"].held else "api#1"
        picked = [(await client.get("/x")).json()["upstream"] for _ in range(6)]
        assert busy not in picked, picked  # new requests go where fewer are in flight
        env.apps[busy].release.set()


@case("config-outlier-detection")
async def _outlier_detection(env: Env) -> None:
    async with env.serve("config-outlier-detection", edit=_fail_first_target(env)), env.client() as client:
        sent = 0
        while len(env.seen("api#0")) < 5 and sent < 30:
            await client.get("/fail")
            sent += 1
        assert len(env.seen("api#0")) == 5
        after = [(await client.get("/fail")).json()["upstream"] for _ in range(6)]
        assert after == ["api#1"] * 6  # 5 x 503 in a row: api#0 is out for 30 s
        assert len(env.seen("api#0")) == 5


def _fail_first_target(env: Env) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        env.apps["api#0"].failing = True

    return edit


@case("config-health-retries")
async def _health_retries(env: Env) -> None:
    async with env.serve("config-health-retries"), env.client() as client:
        response = await client.get("/flaky/1")
        assert response.status_code == 200  # retry_on: 503, and a second try
        assert len(env.seen("api", "/flaky/1")) == 2
        await wait_for(lambda: env.apps["api"].probes >= 2)  # health_check: GET /healthz every second


@case("config-routes")
async def _routes(env: Env) -> None:
    async with env.serve("config-routes"), env.client() as client:

        async def to(path: str, **headers: str) -> tuple[str, str, str]:
            body = (await client.get(path, headers=headers)).json()
            return body["upstream"], body["path"], body["query"]

        assert await to("/anything") == ("web", "/anything", "")
        assert await to("/api/x", host="tenant.example.com") == ("api", "/x", "")
        assert (await client.post("/health")).json()["upstream"] == "web"  # methods: [GET, HEAD]
        assert await to("/health") == ("api", "/health", "")
        assert await to("/v2/items") == ("versioned", "/v2/items", "")
        assert await to("/api/x", **{"x-version": "2"}) == ("api_v2", "/api/x", "")
        assert await to("/search?debug=1") == ("debug", "/search", "debug=1")
        assert await to("/old/a?q=1") == ("api", "/new/a", "q=1")
        assert await to("/status") == ("api", "/internal/health", "")
        refused = await client.get("/billing/x")
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Bearer realm="billing"'
        assert env.seen("billing") == []
        billing = await client.get("/billing/x", headers={"authorization": "Bearer s3cret", "cookie": "sid=1"})
        seen = billing.json()["headers"]
        assert (seen["x-tenant"], seen["x-via-gw"], "cookie" in seen) == ("acme", "1", False)
        assert "server" not in billing.headers  # response_headers: {remove: [server]}


@case("config-route-order")
async def _route_order(env: Env) -> None:
    async with env.serve("config-route-order"), env.client() as client:
        assert (await client.get("/api/x", headers={"x-version": "2"})).json()["upstream"] == "api_v2"
        assert (await client.get("/api/x")).json()["upstream"] == "api"


@case("config-admin")
async def _admin(env: Env) -> None:
    async with env.serve("config-admin"), httpx.AsyncClient(timeout=15) as client:
        url = f"http://127.0.0.1:{env.admin_port}/config"
        assert (await client.get(url)).status_code == 401  # token: every admin request must carry it
        config = await client.get(url, headers={"authorization": "Bearer s3cret"})
        assert config.status_code == 200 and config.json()["admin"]["token"] == "***"


@case("config-redis")
async def _redis(env: Env) -> None:
    def limited(data: dict[str, Any]) -> None:  # the section alone connects nothing: a route must use it
        for route in data["routes"]:
            route["rate_limit"] = {"rate": 1, "per": "1m", "store": "redis"}

    async with env.serve("config-redis", edit=limited), env.client() as client:
        assert (await client.get("/x")).status_code == 200
        # rate 1 per minute: the next decision Redis makes is 429. While Redis is slower than redis.timeout (5 ms
        # by default) on_error: allow lets requests through instead, so ask a few times (issue 17 item 7).
        statuses = []
        with anyio.fail_after(20):
            while 429 not in statuses and len(statuses) < 40:
                statuses.append((await client.get("/x")).status_code)
                await anyio.sleep(0.05)
        assert 429 in statuses and set(statuses) <= {200, 429}
        assert await env.redis_keys() >= 1  # the bucket lives in this Redis


@case("config-request-buffering")
async def _request_buffering(env: Env) -> None:
    async with env.serve("config-request-buffering"), env.client() as client:
        at_limit = await client.post("/upload", content=chunks(MIB))
        assert at_limit.status_code == 200 and at_limit.json()["body_size"] == MIB
        over = await post_raw(env.port, "/upload/big", MIB + 1, chunked=True)
        assert over[0] == 413 and json.loads(over[1])["error"] == "payload_too_large"
        assert env.seen("files", "/upload/big") == []  # buffered: nothing went upstream
        larger = await client.post("/media/clip", content=chunks(3 * MIB))
        assert larger.json()["body_size"] == 3 * MIB  # its own max_body_bytes


@case("http2-grpc-web")
async def _grpc_web(env: Env) -> None:
    from tests.grpc_http1 import frame
    from tests.grpc_peers import grpc_peer

    peer = await env.stack.enter_async_context(grpc_peer())  # a grpcio server with helloworld.Greeter and health

    def to_grpc_upstream(data: dict[str, Any]) -> None:
        data["upstreams"]["greeter"]["url"] = f"http://{peer.target}"

    async with env.serve("http2-grpc-web", edit=to_grpc_upstream), env.client() as client:
        preflight = await client.options(
            "/helloworld.Greeter/SayHello",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type,x-grpc-web,x-user-agent,grpc-timeout",
            },
        )
        assert preflight.status_code == 204
        call = await client.post(
            "/helloworld.Greeter/SayHello",
            content=frame(b"hi"),
            headers={"origin": "https://app.example", "content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
        assert call.status_code == 200 and call.headers["content-type"] == "application/grpc-web+proto"
        assert call.headers["access-control-expose-headers"] == "grpc-status, grpc-message"
        assert call.content.startswith(frame(b"hello, hi") + b"\x80")
        assert b"grpc-status: 0\r\n" in call.content


@case("security-tls")
async def _security_tls(env: Env) -> None:
    async with env.serve("security-tls"), env.client() as client:
        response = await client.get("/x")
        assert response.json()["headers"]["x-forwarded-proto"] == "https"
        assert response.json()["headers"]["host"] == f"127.0.0.1:{env.port}"
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port: no HTTP answer
        async with httpx.AsyncClient(timeout=5) as plain:
            await plain.get(f"http://127.0.0.1:{env.port}/x")


@case("security-tls-deadlines")
async def _security_tls_deadlines(env: Env) -> None:
    async with env.serve("security-tls-deadlines"), env.client() as client:
        assert (await client.get("/x")).status_code == 200
        started = time.monotonic()
        async with await anyio.connect_tcp("127.0.0.1", env.port) as silent:  # never sends its ClientHello
            with anyio.fail_after(30):
                assert await _closed(silent)
        assert time.monotonic() - started >= 9  # header_timeout: 10 bounds the handshake


async def _closed(stream: Any) -> bool:
    try:
        await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
        return True
    return False


@case("security-rate-limit")
async def _security_rate_limit(env: Env) -> None:
    async with env.serve("security-rate-limit"), env.client() as client:
        api = await client.get("/api/x")
        assert api.headers["ratelimit-policy"] == '"default";q=100;w=1'
        # store: redis keeps the bucket in Redis; a decision slower than redis.timeout (5 ms by default) lets the
        # request through uncounted (on_error: allow, issue 17 item 7), so ask until one was counted.
        with anyio.fail_after(20):
            for _ in range(40):
                assert (await client.get("/shared/x")).status_code == 200
                if await env.redis_keys() == 1:
                    break
                await anyio.sleep(0.05)
        assert await env.redis_keys() == 1
        key = {"x-api-key": "one"}
        statuses = [(await client.get("/public/x", headers=key)).status_code for _ in range(11)]
        assert statuses == [200] * 10 + [429]  # rate: 10 per 1m, burst: rate
        assert (await client.get("/public/x", headers={"x-api-key": "two"})).status_code == 200  # its own bucket


@case("security-auth-then-limit")
async def _auth_then_limit(env: Env) -> None:
    async with env.serve("security-auth-then-limit"), env.client() as client:
        assert (await client.get("/api/x")).status_code == 401
        token = env.token("https://idp.test/", "api")
        response = await client.get("/api/x", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200 and response.json()["headers"]["x-fastgate-identity"] == "alice"
        policies = response.headers.get_list("ratelimit-policy")
        assert sorted(policies) == ['"default";q=100;w=60', '"per-ip";q=10;w=1']


@case("security-auth-plugins")
async def _auth_plugins(env: Env) -> None:
    async with env.serve("security-auth-plugins"), env.client() as client:
        origin = {"origin": "https://app.example"}
        preflight = await client.options("/api/x", headers={**origin, "access-control-request-method": "POST"})
        assert preflight.status_code == 204 and preflight.headers["access-control-max-age"] == "600"
        assert (await client.get("/api/x")).status_code == 401
        token = env.token("https://idp.example/", "api")
        api = await client.get("/api/x", headers={"authorization": f"Bearer {token}", **origin})
        assert api.json()["headers"]["x-fastgate-identity"] == "alice"
        assert api.headers["access-control-allow-origin"] == "https://app.example"
        assert api.headers["ratelimit-policy"] == '"default";q=100;w=1'
        partners = await client.get("/partners/x", headers={"x-api-key": env.api_key})
        seen = partners.json()["headers"]
        assert seen["x-fastgate-identity"] == "partner-a" and "x-api-key" not in seen
        admin = await client.get("/admin/x", headers={"authorization": env.basic()})
        assert admin.json()["headers"]["x-fastgate-identity"] == "alice"
        assert "authorization" not in admin.json()["headers"]
        assert (await client.get("/admin/x")).headers["www-authenticate"].startswith('Basic realm="admin"')
        app = await client.get("/app/x", headers={"authorization": "Bearer bob-token"})
        assert app.json()["headers"]["x-user"] == "bob"  # copy_headers from the auth server's answer
        assert (await client.get("/app/x")).status_code == 401
        assert env.seen("auth", "/check")


@case("security-cors-first")
async def _cors_first(env: Env) -> None:
    async with env.serve("security-cors-first"), env.client() as client:
        refused = await client.get("/api/x", headers={"origin": "https://app.example"})
        assert refused.status_code == 401  # api_key, with the CORS headers a browser needs to read it
        assert refused.headers["access-control-allow-origin"] == "https://app.example"
        allowed = await client.get("/api/x", headers={"x-api-key": env.api_key})
        assert allowed.status_code == 200


@case("security-forward-auth-identity")
async def _forward_auth_identity(env: Env) -> None:
    async with env.serve("security-forward-auth-identity"), env.client() as client:

        async def remaining(user: str) -> str:
            response = await client.get("/api/x", headers={"authorization": f"Bearer {user}-token"})
            assert response.json()["headers"]["x-user"] == user
            return str(response.headers["ratelimit"])

        assert await remaining("alice") == '"default";r=99;t=1'
        await remaining("alice")
        await remaining("alice")
        # key: identity, not the client address all three share: bob's bucket is full whatever alice spent
        assert await remaining("bob") == '"default";r=99;t=1'


@case("security-trusted-proxies")
async def _trusted_proxies(env: Env) -> None:
    async with env.serve("security-trusted-proxies"), env.client() as client:  # 127.0.0.1: a trusted proxy

        async def as_client(address: str) -> httpx.Response:
            forged = {"x-real-ip": address, "x-fastgate-identity": "mallory"}
            return await client.get("/x", headers={"x-forwarded-for": f"198.51.100.1, {address}", **forged})

        first = [await as_client("203.0.113.1") for _ in range(4)]
        assert first[0].headers["ratelimit"] == '"default";r=99;t=1'
        assert first[-1].headers["ratelimit"] != '"default";r=99;t=1'  # the client's bucket is counting
        other = await as_client("203.0.113.2")
        assert other.headers["ratelimit"] == '"default";r=99;t=1'  # its own bucket, not the proxy's
        seen = other.json()["headers"]
        assert seen["x-forwarded-for"] == "198.51.100.1, 203.0.113.2, 127.0.0.1"  # we append our peer
        assert seen["x-real-ip"] == "203.0.113.2"  # from a trusted proxy, passed on
        assert "x-fastgate-identity" not in seen  # never, from anyone
        gateway = env.gateway
        assert gateway is not None
        with anyio.fail_after(10):  # the access line names the client, not the proxy
            while '203.0.113.2:0 - "GET /x' not in gateway.log():  # noqa: ASYNC110 - a file to poll
                await anyio.sleep(0.05)


@case("security-circuit-breaker")
async def _circuit_breaker(env: Env) -> None:
    async with env.serve("security-circuit-breaker"), env.client(limits=httpx.Limits(max_connections=80)) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(client.get, "/search/hold")
            await wait_for(lambda: env.apps["search#0"].held + env.apps["search#1"].held == 64, limit=30)
            refused = await client.get("/search/x")
            assert refused.status_code == 503 and refused.json()["error"] == "upstream_overflow"
            assert refused.headers["x-fastgate-overflow"] == "max_connections"  # max_pending_requests: 0
            assert (await client.get("/api/x")).status_code == 200  # another upstream, its own breaker
            env.apps["search#0"].release.set()
            env.apps["search#1"].release.set()


@case("security-request-limits")
async def _request_limits(env: Env) -> None:
    async with env.serve("security-request-limits"), env.client() as client:
        declared = await post_raw(env.port, "/x", MIB + 1, chunked=False)
        chunked = await post_raw(env.port, "/x", MIB + 1, chunked=True)
        assert (declared[0], chunked[0]) == (413, 413)  # the server's 1 MiB (issue 17 item 6)
        assert b"payload_too_large" in declared[1] and env.seen("api") == []
        assert (await client.post("/x", content=b"x" * MIB)).json()["body_size"] == MIB  # exactly at the limit
        assert (await client.post("/stream", content=chunks(MIB + 1))).json()["body_size"] == MIB + 1  # null
        assert (await client.post("/upload", content=chunks(2 * MIB))).json()["body_size"] == 2 * MIB  # 1 GiB


# -- the suite --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc_redis() -> Iterator[RedisServer]:
    """A Redis of this module's own, so that counting its keys counts only the gateway's."""
    with RedisServer() as server:
        yield server


@pytest.fixture
async def env(tmp_path: Path, doc_redis: RedisServer) -> AsyncIterator[Env]:
    async with contextlib.AsyncExitStack() as stack:
        env = Env(tmp_path, stack, doc_redis)
        await env.redis_keys(flush=True)  # buckets are named by route position: no case may see another's
        yield env


@case("http2-server")
async def _http2_server(env: Env) -> None:
    async with env.serve("http2-server"), env.client(http1=False, http2=True) as client:
        response = await client.post("/x", content=b"y" * 300_000)  # past one 64 KiB default window
        assert response.http_version == "HTTP/2"  # h2c by prior knowledge on the plain listener
        assert response.json()["body_size"] == 300_000
        async with env.client() as plain:
            assert (await plain.get("/x")).http_version == "HTTP/1.1"  # HTTP/1.1 on the same port


@case("http2-upstream-h2c")
async def _http2_upstream_h2c(env: Env) -> None:
    async with env.serve("http2-upstream-h2c"), env.client() as client:
        response = await client.post("/orders/1", content=b"x" * 100_000)
        assert response.json()["http_version"] == "2" and response.json()["body_size"] == 100_000
        assert response.json()["headers"]["host"] == f"127.0.0.1:{env.port}"  # :authority from the client's Host


@case("http2-upstream-h2-tls")
async def _http2_upstream_h2_tls(env: Env) -> None:
    async with env.serve("http2-upstream-h2-tls"), env.client() as client:
        response = await client.get("/x")
        assert response.status_code == 200 and response.json()["http_version"] == "2"  # ALPN chose h2


def test_every_config_example_in_the_docs_has_a_marker_and_a_case() -> None:
    names = [example.name for example in doc_examples()]
    unmarked = [name for name in names if name.endswith("(no marker)")]
    assert not unmarked, f"put <!-- example: NAME --> before each of these and add a case here: {unmarked}"
    assert len(names) == len(set(names)), "two examples share a marker name"
    assert sorted(set(names) - set(CASES)) == [], "examples in the docs without a case in tests/test_docs_cli.py"
    assert sorted(set(CASES) - set(names)) == [], "cases whose example is no longer in the docs"
    marks = test_doc_example_through_fastgate_run.pytestmark  # type: ignore[attr-defined]
    collected = next(mark.args[1] for mark in marks if mark.name == "parametrize")
    # the parametrize list is taken when the test is defined: a case defined below it never runs
    assert sorted(CASES) == list(collected), "define every case above test_doc_example_through_fastgate_run"


@pytest.mark.parametrize("name", sorted(CASES))
async def test_doc_example_through_fastgate_run(name: str, env: Env) -> None:
    await CASES[name](env)


# -- issue 17 item 6: what `fastgate run` serves is what was validated -------------------------------------------------


async def test_server_max_body_bytes_holds_through_fastgate_run(env: Env) -> None:
    """``server: {max_body_bytes: 1024}``: a 2,048-byte POST, declared or chunked, is 413 and nothing goes upstream."""
    await env.upstream("api")
    port = env.port = free_port()
    data = {
        "server": {"port": port, "max_body_bytes": 1024},
        "upstreams": {"api": {"url": env.servers["api"].url}},
        "routes": [{"prefix": "/", "upstream": "api"}],
    }
    with run_fastgate(data, env.tmp, port):
        declared = await post_raw(port, "/declared", 2048, chunked=False)
        chunked = await post_raw(port, "/chunked", 2048, chunked=True, piece=512)
        async with env.client() as client:
            at_limit = await client.post("/ok", content=b"x" * 1024)
    assert (declared[0], chunked[0]) == (413, 413)
    assert json.loads(declared[1])["error"] == json.loads(chunked[1])["error"] == "payload_too_large"
    api = env.apps["api"]
    assert "/declared" not in api.aborted and env.seen("api", "/declared") == []  # answered before going upstream
    assert env.seen("api", "/chunked") == []  # cut short upstream: never a whole request there
    assert at_limit.json()["body_size"] == 1024


INHERITING_ROUTES: list[dict[str, Any]] = [
    {"prefix": "/plain"},  # everything inherited
    {"prefix": "/null", "max_body_bytes": None},  # no limit here, whatever the server says
    {"prefix": "/own", "max_body_bytes": 4096},
    {"prefix": "/buffered", "request_buffering": True},  # the server's limit (1024)
    {"prefix": "/read", "timeouts": {"read": 5}},  # the other keys: the upstream's
    {"prefix": "/noread", "timeouts": {"read": None}},  # off
    {"prefix": "/retries", "retries": {"max_retries": 0}},  # whole: keys not given take the defaults
]


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_config_fastgate_run_serves_equals_the_one_validated_in_process(env: Env, workers: int) -> None:
    """Every inheriting key (the audit in tests/test_config.py), as the worker holds it, seen through /config."""
    await env.upstream("api")
    await env.upstream("many#0")
    await env.upstream("many#1")
    port, admin_port = env.port, env.admin_port = free_port(), free_port()
    data = {
        "server": {"port": port, "max_body_bytes": 1024, "workers": workers},
        "upstreams": {
            "api": {
                "url": env.servers["api"].url,
                "timeouts": {"connect": 2, "stream_idle": 30},
                "retries": {"max_retries": 2},
            },
            "many": {"targets": [{"url": env.servers["many#0"].url}, {"url": env.servers["many#1"].url, "weight": 2}]},
        },
        "routes": [
            *({"upstream": "api", **route} for route in INHERITING_ROUTES),
            {"prefix": "/many", "upstream": "many"},
        ],
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
    }
    # The command line's server keys go over the file's before validation (reloading.with_overrides).
    expected = redacted_config(build_config({**data, "server": {**data["server"], "graceful_timeout": 5}}))
    with run_fastgate(data, env.tmp, port, admin_port, args=("--graceful-timeout", "5")):
        async with httpx.AsyncClient(timeout=15) as admin:
            served = (await admin.get(f"http://127.0.0.1:{admin_port}/config")).json()
            assert served == expected
            routes = {route["prefix"]: route for route in served["routes"]}
            assert routes["/plain"]["max_body_bytes"] == routes["/buffered"]["max_body_bytes"] == 1024
            assert routes["/null"]["max_body_bytes"] is None
            assert routes["/read"]["timeouts"] == {
                "connect": 2.0,
                "read": 5.0,
                "write": 60.0,
                "pool": 5.0,
                "stream_idle": 30.0,
            }
            assert routes["/plain"]["retries"]["max_retries"] == 2 and routes["/retries"]["retries"]["max_retries"] == 0
            # and the limits hold on each route as resolved (declared lengths; chunked bodies: the cases above)
            for prefix, limit in (("/plain", 1024), ("/buffered", 1024), ("/own", 4096), ("/null", None)):
                for size, fits in ((1024, True), (4096, limit is None or limit >= 4096), (4097, limit is None)):
                    for chunked in (False, True):
                        status, _ = await post_raw(port, f"{prefix}/x", size, chunked=chunked, piece=1000)
                        assert status == (200 if fits else 413), (prefix, size, chunked)
