"""What a WebSocket session leaves in the gateway's log: fastgate's access line, without Uvicorn's false errors and
per-session duplicates (issue 3 follow-ups)."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fastgate import Gateway
from fastgate._ws_protocol import FastgateWebSocketProtocol
from fastgate.config import build_config
from fastgate.observability.logging import WebSocketNoiseFilter
from tests.servers import (
    REFUSED_PORT,
    LogCapture,
    RunningServer,
    captured_logs,
    fastgate_process,
    run_gateway,
    run_server,
    wait_until,
)
from tests.ws_upstream import WebSocketRecorder, WebSocketUpstreamApp

pytestmark = pytest.mark.anyio

HANDSHAKE_ERROR = "ASGI callable returned without completing handshake."


def uvicorn_records() -> contextlib.AbstractContextManager[LogCapture]:
    """Records reaching ``uvicorn.error``; enter it once the servers run (starting one reconfigures logging)."""
    return captured_logs("uvicorn.error")


async def refused_with(url: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, proxy=None, open_timeout=5):
            pass
    return info.value.response.status_code


@pytest.mark.parametrize(
    ("ws", "errors"),
    [(FastgateWebSocketProtocol, 0), ("websockets-sansio", 3)],
    ids=["fastgate", "stock-uvicorn"],
)
async def test_denial_responses_leave_no_error_in_the_server_log(
    ws_recorder: WebSocketRecorder, ws: Any, errors: int
) -> None:
    """A relayed refusal, fastgate's 404 and its 502 are answers, not failures (stock Uvicorn logs each as one)."""
    # The upstream runs on fastgate's protocol too, so that its own refusals log nothing here either.
    async with run_server(WebSocketUpstreamApp(ws_recorder), ws=FastgateWebSocketProtocol) as upstream:
        config = build_config(
            {
                "upstreams": {"up": {"url": upstream.url}, "down": {"url": f"http://127.0.0.1:{REFUSED_PORT}"}},
                "routes": [{"prefix": "/ws", "upstream": "up"}, {"prefix": "/down", "upstream": "down"}],
            }
        )
        async with run_gateway(Gateway(config), ws=ws) as gateway:
            with uvicorn_records() as records:
                base = f"ws://127.0.0.1:{gateway.port}"
                assert await refused_with(f"{base}/ws/refuse/401") == 401
                assert await refused_with(f"{base}/elsewhere") == 404
                assert await refused_with(f"{base}/down/ws") == 502
                state = gateway.server.server_state
                await wait_until(lambda: not state.tasks and not state.connections)
    logged = [r.getMessage() for r in records.records if r.levelno >= logging.ERROR]
    assert logged == [HANDSHAKE_ERROR] * errors


async def test_websocket_session_logs_fastgates_access_line_without_uvicorns_duplicates(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder, tmp_path: Path
) -> None:
    with fastgate_process(["--to", ws_upstream.url], tmp_path / "gateway.log") as gateway:
        async with connect(f"ws://127.0.0.1:{gateway.port}/ws/echo?room=1", proxy=None, open_timeout=5) as ws:
            await ws.send("hello")
            with anyio.fail_after(5):
                assert await ws.recv() == "hello"
        await ws_recorder.wait_closed()
        assert await refused_with(f"ws://127.0.0.1:{gateway.port}/ws/refuse/401") == 401
        await wait_until(lambda: '"WebSocket /ws/refuse/401" 401' in gateway.log())
        await anyio.sleep(0.1)  # anything Uvicorn logs after the app returned
        log = gateway.log()
    assert '"WebSocket /ws/echo?room=1" 101 ' in log and "(client closed with 1000)" in log
    assert "upstream=default request_id=" in log
    for duplicate in ("[accepted]", "connection open", "connection closed", "connection rejected"):
        assert duplicate not in log
    assert "uvicorn.error: 127.0.0.1" not in log  # Uvicorn's own "WebSocket /path" 401 line
    assert "ERROR" not in log


async def test_own_log_config_still_sees_uvicorns_websocket_lines(
    ws_upstream: RunningServer, ws_recorder: WebSocketRecorder, tmp_path: Path
) -> None:
    out = tmp_path / "uvicorn.log"
    log_config = tmp_path / "logging.json"
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {"plain": {"format": "MINE %(levelname)s %(name)s %(message)s"}},
                "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "plain"}},
                "loggers": {"uvicorn": {"handlers": ["file"], "level": "INFO", "propagate": False}},
            }
        )
    )
    args = ["--to", ws_upstream.url, "--log-config", str(log_config)]
    with fastgate_process(args, tmp_path / "gateway.log") as gateway:
        async with connect(f"ws://127.0.0.1:{gateway.port}/ws/echo", proxy=None, open_timeout=5) as ws:
            await ws.send("hello")
            with anyio.fail_after(5):
                assert await ws.recv() == "hello"
        await ws_recorder.wait_closed()  # before stop() blocks this loop, which serves the upstream
        await wait_until(lambda: "connection open" in out.read_text())
    text = out.read_text()
    assert "MINE INFO uvicorn.error 127.0.0.1:" in text and '"WebSocket /ws/echo" [accepted]' in text


def test_noise_filter_drops_websocket_session_lines_at_info_only() -> None:
    logger = logging.getLogger("tests.websocket_noise")
    noise = WebSocketNoiseFilter()

    def passes(level: int, msg: str, *args: Any) -> bool:
        return noise.filter(logging.LogRecord(logger.name, level, __file__, 1, msg, args, None))

    try:
        logger.setLevel(logging.INFO)
        assert not passes(logging.INFO, '%s - "WebSocket %s" [accepted]', "127.0.0.1:5000", "/ws")
        assert not passes(logging.INFO, '%s - "WebSocket %s" %d', "127.0.0.1:5000", "/ws", 401)
        assert not passes(logging.INFO, "connection open")
        assert not passes(logging.INFO, "connection rejected (%d %s)", 401, "Unauthorized")
        assert passes(logging.INFO, "Application startup complete.")
        assert passes(logging.WARNING, "connection open")  # only the INFO lines are noise
        logger.setLevel(logging.DEBUG)  # --log-level debug shows everything
        assert passes(logging.INFO, "connection open")
    finally:
        logger.setLevel(logging.NOTSET)
