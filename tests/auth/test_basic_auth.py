"""basic_auth: an htpasswd file of bcrypt entries, generated here with bcrypt."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from typing import Any

import anyio
import bcrypt
import httpx
import pytest

from fastgate import ConfigError, Gateway
from fastgate.plugins.auth import basic_auth
from tests.servers import RunningServer, run_gateway, wait_until
from tests.upstream_app import Recorder

from .helpers import all_logs, assert_error_body, client_for, gateway_config, log_text

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery staple"


@pytest.fixture
def users_file(tmp_path: Path) -> str:
    path = tmp_path / "htpasswd"
    alice = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    bob = bcrypt.hashpw(b"bobs-pw", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)  # Apache's
    path.write_text(f"alice:{alice}\nbob:{bob}\n")
    return str(path)


def _plugin(users_file: str, **options: Any) -> dict[str, Any]:
    return {"use": "basic_auth", "options": {"users_file": users_file, "realm": "admin", **options}}


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_basic_auth_refusals_are_401_with_a_basic_challenge_and_never_reach_upstream(
    upstream: RunningServer, recorder: Recorder, users_file: str
) -> None:
    async with run_gateway(Gateway(gateway_config(upstream.url, _plugin(users_file)))) as gw, client_for(gw) as client:
        for headers in (
            {},
            _basic("alice", "wrong"),
            _basic("mallory", PASSWORD),
            {"authorization": "Basic !!notbase64"},
            {"authorization": "Bearer x"},
            _basic("alice", "x" * 100),  # over bcrypt's 72 bytes
        ):
            response = await client.get("/echo", headers=headers)
            assert_error_body(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == 'Basic realm="admin", charset="UTF-8"'
        assert recorder.requests == []


async def test_basic_auth_user_becomes_identity_and_authorization_is_stripped(
    upstream: RunningServer, recorder: Recorder, users_file: str
) -> None:
    async with run_gateway(Gateway(gateway_config(upstream.url, _plugin(users_file)))) as gw, client_for(gw) as client:
        response = await client.get("/echo", headers={**_basic("alice", PASSWORD), "x-fastgate-identity": "root"})
        assert response.status_code == 200
        assert recorder.header("x-fastgate-identity") == ["alice"]
        assert recorder.header("authorization") == []
        assert (await client.get("/echo", headers=_basic("bob", "bobs-pw"))).status_code == 200  # a $2y$ entry
        assert recorder.header("x-fastgate-identity") == ["bob"]


async def test_basic_auth_caches_a_successful_check_so_a_hot_client_pays_bcrypt_once(
    upstream: RunningServer, users_file: str
) -> None:
    gateway = Gateway(gateway_config(upstream.url, _plugin(users_file)))
    (plugin,) = [p for _, p in gateway.plugin_chains[0].plugins]
    async with run_gateway(gateway) as gw, client_for(gw) as client:
        for _ in range(10):
            assert (await client.get("/echo", headers=_basic("alice", PASSWORD))).status_code == 200
        assert plugin.verifications == 1
        for _ in range(3):  # failures are never cached
            assert (await client.get("/echo", headers=_basic("alice", "nope"))).status_code == 401
        assert plugin.verifications == 4


async def test_basic_auth_runs_bcrypt_off_the_event_loop(upstream: RunningServer, tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("slow:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=14)).decode() + "\n")  # ~1 s per check
    gateway = Gateway(gateway_config(upstream.url, _plugin(str(path), cache_ttl=0)))
    (plugin,) = [p for _, p in gateway.plugin_chains[0].plugins]
    async with run_gateway(gateway) as gw, client_for(gw) as client:
        done = anyio.Event()

        async def slow_login() -> None:
            await client.get("/echo", headers=_basic("slow", "wrong"))
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_login)
            await wait_until(lambda: plugin.verifications == 1)  # the slow check has started
            # while bcrypt grinds, the gateway still answers others (the loop is free)
            answers = 0
            async with httpx.AsyncClient(base_url=gw.url, timeout=15) as other:
                while not done.is_set() and answers < 3:
                    assert (await other.get("/echo")).status_code == 401
                    answers += 1
            assert answers == 3 and not done.is_set()


async def test_basic_auth_password_never_reaches_the_logs(upstream: RunningServer, users_file: str) -> None:
    config = gateway_config(upstream.url, _plugin(users_file), access_log=True)
    encoded = _basic("alice", PASSWORD)["authorization"].split()[1]
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        with all_logs() as logs:
            assert (await client.get("/echo", headers=_basic("alice", PASSWORD))).status_code == 200
            assert (await client.get("/echo", headers=_basic("alice", PASSWORD + "!"))).status_code == 401
    text = log_text(logs)
    assert "/echo" in text
    assert PASSWORD not in text and encoded not in text


def test_basic_auth_bad_options_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match="users_file: cannot read"):
        Gateway(gateway_config(url, _plugin(str(tmp_path / "absent"))))
    plain = tmp_path / "md5"
    plain.write_text("alice:$apr1$abc$def\n")  # htpasswd's default MD5: refused, bcrypt only
    with pytest.raises(ConfigError, match=r"users_file: line 1 is not 'user:<bcrypt hash>'"):
        Gateway(gateway_config(url, _plugin(str(plain))))


class _HashCounter:
    """Wraps basic_auth's bcrypt check: how many run at once (threads enter and leave it), and the most ever."""

    def __init__(self, check: Any) -> None:
        self._check = check
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started = 0
        self.finished = 0

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)
        try:
            return bool(self._check(password, hashed))
        finally:
            with self._lock:
                self.running -= 1
                self.finished += 1


async def test_issue17_5_disconnected_clients_never_run_more_bcrypt_checks_than_the_limiter(
    upstream: RunningServer, recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 requests, each dropped 10 ms after it was sent, by 20 clients at once: the checks that started run to
    their end holding their limiter slot (anyio's shield), so no more run at once than the documented limiter allows.
    With the exchange cancelled by a raw ``Task.cancel`` the slot came free at the disconnect, the thread kept
    hashing, and 19 checks ran at once under a limiter of 2."""
    path = tmp_path / "htpasswd"
    path.write_text("alice:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode() + "\n")  # ~60 ms
    counter = _HashCounter(basic_auth._check)
    monkeypatch.setattr(basic_auth, "_check", counter)
    gateway = Gateway(gateway_config(upstream.url, _plugin(str(path), cache_ttl=0)))
    (plugin,) = [p for _, p in gateway.plugin_chains[0].plugins]
    bound = plugin._limiter.total_tokens  # "at most as many at once as the machine has CPUs"
    assert bound == (os.cpu_count() or 1)
    credentials = _basic("alice", "wrong")["authorization"]
    request = f"GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: {credentials}\r\n\r\n".encode()
    async with run_gateway(gateway) as gw:

        async def client() -> None:
            for _ in range(10):
                async with await anyio.connect_tcp("127.0.0.1", gw.port) as stream:
                    await stream.send(request)
                    await anyio.sleep(0.01)
                # closed without reading: the gateway sees the disconnect while the check waits or runs

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for _ in range(20):
                    group.start_soon(client)
            # every request that reached the plugin has ended (one dropped before its exchange began never does)
            await wait_until(lambda: gateway.snapshot.inflight == 0 and counter.running == 0, limit=30)
        # the gateway still serves, and a check still answers
        async with client_for(gw) as http:
            assert (await http.get("/echo", headers=_basic("alice", PASSWORD))).status_code == 200
    print(f"{plugin.verifications} checks asked for, {counter.started} started, at most {counter.most} at once")
    assert plugin.verifications >= 100  # most requests reached the check before their client left
    assert counter.started >= 2  # the clients left while checks were running, not before any began
    assert counter.most <= bound
    assert recorder.requests[-1:] and len(recorder.requests) == 1  # no dropped request went upstream
