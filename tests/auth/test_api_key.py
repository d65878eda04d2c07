"""api_key: header keys checked against a keys file, through a real gateway and a real upstream."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from fastgate import ConfigError, Gateway
from fastgate.plugins.auth.api_key import ApiKey
from fastgate.testing import PluginRunner
from tests.rawhttp import parse_response
from tests.servers import RunningServer, run_gateway
from tests.upstream_app import Recorder

from .helpers import all_logs, assert_error_body, client_for, gateway_config, log_text

pytestmark = pytest.mark.anyio

SECRET = "k-7f3a9c1e5b2d-secret"
UNNAMED = "bare-key-0123456789"


@pytest.fixture
def keys_file(tmp_path: Path) -> str:
    path = tmp_path / "keys.txt"
    path.write_text(f"# service keys\nbilling:{SECRET}\n\n{UNNAMED}\n")
    return str(path)


def _plugin(keys_file: str, **options: object) -> dict[str, object]:
    return {"use": "api_key", "options": {"keys_file": keys_file, **options}}


async def test_api_key_missing_or_wrong_is_401_with_the_error_body_and_never_reaches_upstream(
    upstream: RunningServer, recorder: Recorder, keys_file: str
) -> None:
    async with run_gateway(Gateway(gateway_config(upstream.url, _plugin(keys_file)))) as gw, client_for(gw) as client:
        missing = await client.get("/echo")
        assert_error_body(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == 'ApiKey header="x-api-key"'
        wrong = await client.get("/echo", headers={"x-api-key": SECRET + "x"})
        assert_error_body(wrong, 401, "unauthorized")
        assert wrong.json()["detail"] == "invalid API key"
        assert recorder.requests == []


async def test_api_key_identity_is_the_key_name_passed_upstream_and_the_key_is_stripped(
    upstream: RunningServer, recorder: Recorder, keys_file: str
) -> None:
    async with run_gateway(Gateway(gateway_config(upstream.url, _plugin(keys_file)))) as gw, client_for(gw) as client:
        named = await client.get("/echo", headers={"x-api-key": SECRET, "x-fastgate-identity": "admin"})
        assert named.status_code == 200
        assert recorder.header("x-fastgate-identity") == ["billing"]  # the client's copy is gone
        assert recorder.header("x-api-key") == []
        unnamed = await client.get("/echo", headers={"x-api-key": UNNAMED})
        assert unnamed.status_code == 200
        (fingerprint,) = recorder.header("x-fastgate-identity")
        assert fingerprint.startswith("key-") and UNNAMED not in fingerprint


async def test_api_key_spoofed_identity_header_is_removed_even_when_refused_and_strip_false_keeps_the_key(
    upstream: RunningServer, recorder: Recorder, keys_file: str
) -> None:
    plugin = _plugin(keys_file, strip=False, header="X-Key", identity_header="x-caller")
    async with run_gateway(Gateway(gateway_config(upstream.url, plugin))) as gw, client_for(gw) as client:
        allowed = await client.get("/echo", headers={"x-key": SECRET, "x-caller": "root"})
        assert allowed.status_code == 200
        assert recorder.header("x-caller") == ["billing"]
        assert recorder.header("x-key") == [SECRET]


async def test_api_key_never_reaches_the_logs(upstream: RunningServer, keys_file: str) -> None:
    config = gateway_config(upstream.url, _plugin(keys_file), access_log=True)
    async with run_gateway(Gateway(config)) as gw, client_for(gw) as client:
        with all_logs() as logs:
            assert (await client.get("/echo", headers={"x-api-key": SECRET})).status_code == 200
            assert (await client.get("/echo", headers={"x-api-key": SECRET + "bad"})).status_code == 401
    text = log_text(logs)
    assert "/echo" in text  # the access log did run
    assert SECRET not in text


async def test_api_key_refusal_answers_an_upload_before_reading_its_body(
    upstream: RunningServer, recorder: Recorder, keys_file: str
) -> None:
    async with run_gateway(Gateway(gateway_config(upstream.url, _plugin(keys_file)))) as gw:
        with anyio.fail_after(10):
            stream = await anyio.connect_tcp("127.0.0.1", gw.port)
            async with stream:
                # the head promises 10 MB that never come: the 401 must not wait for them
                await stream.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
                raw = b""
                while b"request_id" not in raw:
                    raw += await stream.receive()
    assert parse_response(raw).status == 401
    assert recorder.requests == []


def test_api_key_bad_options_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match=r"routes\[0\]\.plugins\[0\]\.options.*keys_file"):
        Gateway(gateway_config(url, {"use": "api_key", "options": {}}))
    with pytest.raises(ConfigError, match="keys_file: cannot read"):
        Gateway(gateway_config(url, _plugin(str(tmp_path / "absent.txt"))))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="keys_file: .* has no entries"):
        Gateway(gateway_config(url, _plugin(str(empty))))
    twice = tmp_path / "twice.txt"
    twice.write_text("a:same\nb:same\n")
    with pytest.raises(ConfigError, match="keys_file: line 2 repeats a key"):
        Gateway(gateway_config(url, _plugin(str(twice))))


async def test_api_key_sets_request_identity_for_later_plugins_and_the_rate_limiter(keys_file: str) -> None:
    runner = PluginRunner(ApiKey(keys_file=keys_file))
    allowed = await runner.request("GET", "/x", headers={"x-api-key": SECRET})
    assert allowed.answer is None and allowed.request.identity == "billing"
    refused = await runner.request("GET", "/x", headers={"x-api-key": "nope"})
    assert refused.answer is not None and refused.answer.status == 401 and refused.request.identity is None
