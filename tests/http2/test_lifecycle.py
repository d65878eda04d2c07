"""HTTP/2 connections through a gateway's life (issue 18): the ``server.http2`` keys a real ``fastgate run`` sends,
large bodies streamed with flat memory, graceful shutdown (GOAWAY, open streams finish within
``graceful_timeout``), hot reload (the retired config's connections told GOAWAY, in-flight streams complete, new
connections on the new config), and an idle connection closed after ``keepalive_timeout`` with GOAWAY."""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from h2.errors import ErrorCodes

from fastgate import Gateway, GatewayConfig
from fastgate.config import ServerConfig
from fastgate.http2 import PREFACE
from tests.http2.client import h2_connect
from tests.rawhttp import parse_response, read_until_closed
from tests.reload_support import NamedUpstream, fastgate_run, gateway_config, ports, write_config
from tests.servers import GatewayProcess, RunningServer, run_gateway, run_server, wait_until
from tests.upstream_app import Recorder, UpstreamApp

pytestmark = pytest.mark.anyio

HTTP2_KEYS = {
    "enabled": True,
    "max_concurrent_streams": 7,
    "initial_stream_window_bytes": 131072,
    "initial_connection_window_bytes": 1048576,
    "max_header_list_bytes": 16384,
    "max_frame_bytes": 32768,
}


@pytest.fixture
async def old() -> AsyncIterator[tuple[NamedUpstream, RunningServer]]:
    app = NamedUpstream("old")
    async with run_server(app) as server:
        yield app, server


@pytest.fixture
async def new() -> AsyncIterator[tuple[NamedUpstream, RunningServer]]:
    app = NamedUpstream("new")
    async with run_server(app) as server:
        yield app, server


def run_config(upstream: RunningServer, port: int, **server: Any) -> dict[str, Any]:
    return gateway_config({"api": upstream.url}, [{"prefix": "/", "upstream": "api"}], port=port, server=server)


def answer(state: Any) -> dict[str, Any]:
    assert state.headers and state.status == 200, state
    result: dict[str, Any] = json.loads(state.body)
    return result


# -- every server.http2 key through fastgate run ----------------------------------------------------------------------


async def test_fastgate_run_sends_the_settings_of_every_http2_key(
    old: tuple[NamedUpstream, RunningServer], tmp_path: Path
) -> None:
    app, named = old
    recorder = Recorder()
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    async with run_server(UpstreamApp(recorder)) as upstream:
        routes = [{"path": "/hold", "upstream": "named"}, {"prefix": "/", "upstream": "main"}]
        upstreams = {"named": named.url, "main": upstream.url}
        write_config(path, gateway_config(upstreams, routes, port=port, server={"http2": HTTP2_KEYS}))
        with fastgate_run(path, tmp_path / "gateway.log", port):
            async with h2_connect(port) as h2:
                settings = h2.server_settings
                assert settings[3] == HTTP2_KEYS["max_concurrent_streams"]  # SETTINGS_MAX_CONCURRENT_STREAMS
                assert settings[4] == HTTP2_KEYS["initial_stream_window_bytes"]  # SETTINGS_INITIAL_WINDOW_SIZE
                assert settings[5] == HTTP2_KEYS["max_frame_bytes"]  # SETTINGS_MAX_FRAME_SIZE
                assert settings[6] == HTTP2_KEYS["max_header_list_bytes"]  # SETTINGS_MAX_HEADER_LIST_SIZE
                window = HTTP2_KEYS["initial_connection_window_bytes"]
                await h2.wait(lambda: h2.conn.outbound_flow_control_window == window)
                # Seven streams at once (the limit) are served together...
                held = [await h2.request("GET", "/hold") for _ in range(7)]
                await wait_until(lambda: len(app.peers) == 7, 15)
                app.release.set()
                answers = [answer(await h2.response(stream_id)) for stream_id in held]
                assert {result["upstream"] for result in answers} == {"old"}
                # ...a body goes in frames up to max_frame_bytes, through the 128 KiB stream window...
                assert h2.conn.max_outbound_frame_size == HTTP2_KEYS["max_frame_bytes"]
                body = bytes(range(256)) * 4096
                uploaded = answer(await h2.response(await h2.request("POST", "/upload", body=body)))
                assert uploaded == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
                # ...and a header list over max_header_list_bytes closes the connection (GOAWAY), never forwarded.
                await h2.request("GET", "/echo", [(f"x-h{i}", "v" * 100) for i in range(200)])
                await h2.wait(lambda: h2.goaway is not None or h2.closed)
                assert h2.goaway is None or h2.goaway.error_code != ErrorCodes.NO_ERROR
            async with h2_connect(port) as h2:  # the process serves on
                assert (await h2.get("/echo")).status == 200
    assert [request["raw_path"] for request in recorder.requests] == ["/upload", "/echo"]


async def test_fastgate_run_with_http2_disabled_answers_a_preface_505(
    old: tuple[NamedUpstream, RunningServer], tmp_path: Path
) -> None:
    _, upstream = old
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    write_config(path, run_config(upstream, port, http2={"enabled": False}))
    with fastgate_run(path, tmp_path / "gateway.log", port):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(PREFACE)
            assert parse_response(await read_until_closed(stream, 10)).status == 505
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert (await client.get("/x")).status_code == 200


# -- large bodies, memory flat ----------------------------------------------------------------------------------------


async def test_32_mib_up_and_down_over_h2c_with_flat_memory(tmp_path: Path) -> None:
    recorder = Recorder()
    size = 32 * 1024 * 1024
    async with run_server(UpstreamApp(recorder)) as upstream:
        (port,) = ports(1)
        path = tmp_path / "gateway.yaml"
        write_config(path, run_config(upstream, port))
        with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
            async with httpx.AsyncClient(base_url=gateway.url, http1=False, http2=True, timeout=60) as client:
                # Warm up (imports, pools, first buffers) before the baseline.
                assert (await client.post("/upload", content=b"w" * 1_000_000)).status_code == 200
                assert len((await client.get("/big?size=1000000")).content) == 1_000_000
                baseline = gateway.rss_bytes()
                peak = baseline
                done = anyio.Event()

                async def sample() -> None:
                    nonlocal peak
                    for _ in range(6000):  # at most 5 minutes at 50 ms
                        peak = max(peak, gateway.rss_bytes())
                        with anyio.move_on_after(0.05):
                            await done.wait()
                        if done.is_set():
                            return

                async def chunks() -> AsyncIterator[bytes]:
                    piece = bytes(range(256)) * 256  # 64 KiB
                    for _ in range(size // len(piece)):
                        yield piece

                async with anyio.create_task_group() as tg:
                    tg.start_soon(sample)
                    with anyio.fail_after(120):
                        uploaded = await client.post("/upload", content=chunks())
                        digest = hashlib.sha256()
                        received = 0
                        async with client.stream("GET", f"/big?size={size}") as response:
                            assert response.http_version == "HTTP/2"
                            async for piece in response.aiter_raw():
                                digest.update(piece)
                                received += len(piece)
                    done.set()
    expected = hashlib.sha256((bytes(range(256)) * 256) * (size // 65536)).hexdigest()
    assert uploaded.json() == {"size": size, "sha256": expected}
    assert received == size and digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()
    assert recorder.header("transfer-encoding", -2) == ["chunked"]  # streamed: no content-length was known
    # Flat: the growth is the windows and buffers, not the bodies (measured: 2-5 MiB).
    assert peak - baseline < 16 * 1024 * 1024, (baseline, peak)


# -- graceful shutdown and reload -------------------------------------------------------------------------------------


async def test_sigterm_sends_goaway_and_the_open_stream_finishes(
    old: tuple[NamedUpstream, RunningServer], tmp_path: Path
) -> None:
    app, upstream = old
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    write_config(path, run_config(upstream, port, graceful_timeout=20))
    with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
        async with h2_connect(port) as h2:
            held = await h2.request("GET", "/hold")
            with anyio.fail_after(10):
                await app.holding.wait()
            gateway.process.send_signal(signal.SIGTERM)
            await h2.wait(lambda: h2.goaway is not None)
            assert h2.goaway is not None and h2.goaway.error_code == ErrorCodes.NO_ERROR
            assert h2.goaway.last_stream_id >= held
            assert gateway.process.poll() is None  # still serving the open stream
            app.release.set()
            assert answer(await h2.response(held))["upstream"] == "old"
            await h2.wait(lambda: h2.closed)  # and then the connection closes
        await exit_code(gateway, -signal.SIGTERM)


async def test_sigterm_cuts_a_stream_still_open_after_graceful_timeout(
    old: tuple[NamedUpstream, RunningServer], tmp_path: Path
) -> None:
    app, upstream = old
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    write_config(path, run_config(upstream, port, graceful_timeout=1))
    with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
        async with h2_connect(port) as h2:
            held = await h2.request("GET", "/hold")
            with anyio.fail_after(10):
                await app.holding.wait()
            gateway.process.send_signal(signal.SIGTERM)
            await h2.wait(lambda: h2.goaway is not None)
            state = h2.state(held)
            await h2.wait(lambda: state.done or h2.closed, 20)  # within graceful_timeout and a generous margin
            assert not state.ended  # cut off, never completed
        await exit_code(gateway, None)
    app.release.set()


async def exit_code(gateway: GatewayProcess, code: int | None) -> None:
    """Wait (polling: another process) for the gateway to exit; with ``code``, assert it (Uvicorn re-raises SIGTERM
    after a clean shutdown: -SIGTERM is the clean exit)."""
    with anyio.fail_after(30):
        while gateway.process.poll() is None:  # noqa: ASYNC110 - another process
            await anyio.sleep(0.05)
    if code is not None:
        assert gateway.process.returncode == code


async def test_reload_tells_the_open_connection_goaway_and_its_stream_completes(
    old: tuple[NamedUpstream, RunningServer], new: tuple[NamedUpstream, RunningServer], tmp_path: Path
) -> None:
    old_app, old_upstream = old
    _, new_upstream = new
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    write_config(path, run_config(old_upstream, port))
    with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
        async with h2_connect(port) as h2:
            assert answer(await h2.get("/before"))["upstream"] == "old"
            held = await h2.request("GET", "/hold")
            with anyio.fail_after(10):
                await old_app.holding.wait()
            write_config(path, run_config(new_upstream, port))
            gateway.process.send_signal(signal.SIGHUP)
            await h2.wait(lambda: h2.goaway is not None, 20)
            assert h2.goaway is not None and h2.goaway.error_code == ErrorCodes.NO_ERROR
            assert h2.goaway.last_stream_id == held
            late = h2.state(await h2.request("GET", "/late"))  # past the GOAWAY's last stream id: refused
            await h2.wait(lambda: late.done)
            assert late.reset_code == ErrorCodes.REFUSED_STREAM  # safe to retry elsewhere (RFC 9113 §8.7)
            old_app.release.set()
            assert answer(await h2.response(held))["upstream"] == "old"  # finished on the config it started on
            await h2.wait(lambda: h2.closed)
        async with h2_connect(port) as fresh:
            assert answer(await fresh.get("/after"))["upstream"] == "new"
        assert gateway.process.poll() is None
    assert len(old_app.peers) == 2  # /before and /hold: the refused stream never went upstream


# -- idle connections -------------------------------------------------------------------------------------------------


async def test_idle_connection_gets_goaway_after_keepalive_timeout(upstream: RunningServer) -> None:
    config = GatewayConfig.single(upstream.url, server=ServerConfig(keepalive_timeout=1))
    async with run_gateway(Gateway(config)) as gw, h2_connect(gw.port) as h2:
        assert (await h2.get("/echo")).status == 200
        opened = anyio.current_time()
        await h2.wait(lambda: h2.goaway is not None, 15)
        assert h2.goaway is not None and h2.goaway.error_code == ErrorCodes.NO_ERROR
        assert anyio.current_time() - opened >= 0.9  # not before the timeout
        await h2.wait(lambda: h2.closed, 15)


async def test_a_connection_with_an_open_stream_is_not_idle(upstream: RunningServer, recorder: Recorder) -> None:
    config = GatewayConfig.single(upstream.url, server=ServerConfig(keepalive_timeout=1))
    async with run_gateway(Gateway(config)) as gw, h2_connect(gw.port) as h2:
        streamed = await h2.get("/stream?n=8&delay=0.3")  # 2.4 s, longer than the keepalive timeout
        assert streamed.ended and streamed.body.count(b"chunk") == 8
        assert h2.goaway is None  # the idle clock starts when its last stream ends
        await h2.wait(lambda: h2.goaway is not None, 15)  # and then it runs


async def test_a_client_goaway_lets_its_open_stream_finish(upstream: RunningServer, recorder: Recorder) -> None:
    # RFC 9113 §6.8: a client's GOAWAY NO_ERROR stops new streams; the ones open complete.
    async with run_gateway(Gateway(GatewayConfig.single(upstream.url))) as gw, h2_connect(gw.port) as h2:
        stream_id = await h2.request("GET", "/stream?n=4&delay=0.2")
        state = h2.state(stream_id)
        await h2.wait(lambda: b"chunk 0\n" in state.body)
        await h2.send_goaway(stream_id)
        await h2.wait(lambda: state.done or h2.closed)
        assert state.ended and state.body == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
        await h2.wait(lambda: h2.closed)  # then the server closes the connection
    assert len(recorder.requests) == 1
