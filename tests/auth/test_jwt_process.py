"""The ``jwt`` plugin in a real ``fastgate run`` process (issue 17 item 9): hostile header fields are 401s with no
error log, and the JWKS refresh runs in the background, so a hanging IdP delays no token with a known ``kid``."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import anyio
import httpx
import pytest

from tests.reload_support import fastgate_run, gateway_config, ports, write_config
from tests.servers import RunningServer, run_server, wait_until

from .helpers import JwksApp, jwks, rsa_key
from .test_jwt import HOSTILE_HEADERS

pytestmark = pytest.mark.anyio

RSA = rsa_key("rsa-1")


async def test_fastgate_run_jwt_hostile_headers_are_401_and_a_hanging_jwks_delays_no_known_kid(
    upstream: RunningServer, tmp_path: Path
) -> None:
    app = JwksApp(jwks(RSA))
    async with run_server(app, lifespan="off") as idp:
        (port,) = ports(1)
        options = {
            "jwks_url": f"{idp.url}/jwks",
            "issuer": "https://idp.test/",
            "audience": "api",
            "cache_ttl": 1,
            "min_refresh_interval": 0.5,
            "timeout": 30,
            "token_cache_size": 0,
        }
        routes = [{"prefix": "/", "upstream": "api", "plugins": [{"use": "jwt", "options": options}]}]
        path = tmp_path / "gateway.yaml"
        write_config(path, gateway_config({"api": upstream.url}, routes, port=port))
        with contextlib.ExitStack() as stack:
            # entered in a thread: the process fetches the JWKS from this test's loop before it opens its port
            gateway = await anyio.to_thread.run_sync(
                stack.enter_context, fastgate_run(path, tmp_path / "gateway.log", port)
            )
            async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
                assert len(app.fetches) == 1  # at startup, before the port opened
                for name, (token, _) in HOSTILE_HEADERS.items():
                    response = await client.get("/echo", headers={"authorization": f"Bearer {token}"})
                    assert response.status_code == 401, name
                    assert response.json()["error"] == "unauthorized"
                good = {"authorization": f"Bearer {RSA.token()}"}
                assert (await client.get("/echo", headers=good)).status_code == 200

                before = len(app.fetches)  # 1, or 2 if cache_ttl passed already on a busy machine
                app.stall = anyio.Event()  # the IdP hangs from now on, far past the process's timeout of 30 s
                try:
                    await anyio.sleep(1.2)  # cache_ttl has passed: the next token starts a background refresh
                    started = time.monotonic()
                    for _ in range(10):
                        assert (await client.get("/echo", headers=good)).status_code == 200
                    elapsed = time.monotonic() - started
                    await wait_until(lambda: len(app.fetches) == before + 1)  # the refresh is under way, hanging
                    assert elapsed < 10, f"ten requests took {elapsed:.2f}s while the JWKS endpoint hung"
                finally:
                    app.stall.set()
            await anyio.to_thread.run_sync(stack.close)  # SIGTERM, and wait for the process to end
            log = gateway.log()
    # The whole log, shutdown included: on main a jwks_url plugin's shutdown failed ("Attempted to exit a cancel scope
    # that isn't the current task's current cancel scope", then "Application shutdown failed").
    assert "ERROR" not in log and "WARNING" not in log, log[-3000:]
    assert "Application shutdown complete" in log
    assert " 500" not in log
