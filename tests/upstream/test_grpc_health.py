"""Active health checks with the gRPC health protocol (``health_check: {type: grpc, service: ...}``): the hand-made
protobuf, one check against a real grpcio health service, a target marked down and up as the service flips between
SERVING and NOT_SERVING, in process and through ``fastgate run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from fastgate import Gateway
from fastgate.config import build_config
from fastgate.exceptions import ConfigError
from fastgate.upstream.grpc_health import decode_status, encode_request, grpc_check
from tests.grpc_peers import NOT_SERVING, SERVICE, SERVING, grpc_peer
from tests.misbehaving import raw_upstream
from tests.reload_support import fastgate_run, gateway_config, write_config
from tests.servers import free_port, run_gateway, run_server, wait_until
from tests.upstream_app import Recorder, UpstreamApp

pytestmark = pytest.mark.anyio


def test_health_check_request_is_the_protobuf_grpcio_would_send() -> None:
    from grpc_health.v1 import health_pb2

    for service in ("", "test.Peer", "ü" * 200):
        message = health_pb2.HealthCheckRequest(service=service).SerializeToString()
        assert encode_request(service) == b"\x00" + len(message).to_bytes(4, "big") + message


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_health_check_response_decodes_what_grpcio_encodes(status: int) -> None:
    from grpc_health.v1 import health_pb2

    message = health_pb2.HealthCheckResponse(status=status).SerializeToString()  # type: ignore[arg-type]
    assert decode_status(b"\x00" + len(message).to_bytes(4, "big") + message) == status


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x01\x00\x00\x00\x00",  # compressed
        b"\x00\x00\x00\x00\x05\x08",  # shorter than its length
        b"\x00\x00\x00\x00\x01\x08",  # a truncated varint
        b"\x00\x00\x00\x00\x01\x0f",  # wire type 7
    ],
)
def test_a_body_that_is_not_one_health_response_is_none(body: bytes) -> None:
    assert decode_status(body) is None


def test_config_asks_for_a_path_only_for_http_checks() -> None:
    def config(check: dict[str, Any]) -> Any:
        upstreams = {"api": {"url": "http://127.0.0.1:1", "health_check": check}}
        return build_config({"upstreams": upstreams, "routes": [{"upstream": "api"}]})

    assert config({"type": "grpc"}).upstreams["api"].health_check.service == ""
    assert config({"type": "grpc", "service": "x"}).upstreams["api"].health_check.service == "x"
    for bad, words in (
        ({}, "health_check.path: Field required"),
        ({"type": "grpc", "path": "/h"}, "health_check.path: only for HTTP checks"),
        ({"path": "/h", "service": "x"}, "health_check.service: only for type: grpc"),
        ({"type": "tcp"}, "health_check.type"),
    ):
        with pytest.raises(ConfigError, match=words):
            config(bad)


async def test_one_check_against_a_grpcio_health_service() -> None:
    async with grpc_peer() as peer:
        authority = peer.target.encode()
        assert await grpc_check("127.0.0.1", peer.port, authority, "", 5)
        assert await grpc_check("127.0.0.1", peer.port, authority, SERVICE, 5)
        assert not await grpc_check("127.0.0.1", peer.port, authority, "no.such.Service", 5)  # NOT_FOUND
        await peer.health.set(SERVICE, NOT_SERVING)
        assert not await grpc_check("127.0.0.1", peer.port, authority, SERVICE, 5)
    assert not await grpc_check("127.0.0.1", free_port(), b"x", "", 5)  # refused


async def test_a_server_that_is_not_grpc_fails_the_check() -> None:
    async with run_server(UpstreamApp(Recorder())) as plain:  # HTTP/1.1 only: the h2 preface gets no HTTP/2 answer
        assert not await grpc_check("127.0.0.1", plain.port, b"x", "", 2)


async def test_a_silent_server_fails_the_check_within_its_timeout() -> None:
    release = anyio.Event()

    async def silent(stream: anyio.abc.SocketStream, number: int) -> None:
        await release.wait()  # reads nothing, answers nothing

    async with raw_upstream(silent) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with anyio.fail_after(5):
            assert not await grpc_check("127.0.0.1", port, b"x", "", 0.3)
        release.set()


HEALTH = {"type": "grpc", "service": SERVICE, "interval": 0.2, "timeout": 2, "unhealthy_threshold": 1}


async def test_the_target_is_marked_down_and_up_as_the_service_flips() -> None:
    async with grpc_peer() as peer:
        config = build_config(
            {
                "upstreams": {"grpc": {"url": f"http://{peer.target}", "health_check": HEALTH}},
                "routes": [{"upstream": "grpc"}],
            }
        )
        gateway = Gateway(config)
        async with run_gateway(gateway):
            cluster: Any = gateway.transports["grpc"]
            await wait_until(lambda: cluster.stats()[0].state == "healthy", limit=10)
            await peer.health.set(SERVICE, NOT_SERVING)
            await wait_until(lambda: cluster.stats()[0].state == "unhealthy", limit=10)
            await peer.health.set(SERVICE, SERVING)
            await wait_until(lambda: cluster.stats()[0].state == "healthy", limit=10)


async def test_grpc_health_check_through_fastgate_run(tmp_path: Path) -> None:
    async with grpc_peer() as peer:
        port = free_port()
        data = gateway_config({"grpc": f"http://{peer.target}"}, [{"prefix": "/", "upstream": "grpc"}], port=port)
        data["upstreams"]["grpc"]["health_check"] = HEALTH
        config_file = tmp_path / "gateway.yaml"
        write_config(config_file, data)
        with fastgate_run(config_file, tmp_path / "gateway.log", port) as gateway:
            await peer.health.set(SERVICE, NOT_SERVING)
            await _wait_for_log(gateway, "healthy -> unhealthy")
            await peer.health.set(SERVICE, SERVING)
            await _wait_for_log(gateway, "unhealthy -> healthy")


async def _wait_for_log(gateway: Any, text: str) -> None:
    with anyio.fail_after(15):
        while text not in gateway.log():  # noqa: ASYNC110 - another process writes the log
            await anyio.sleep(0.05)
