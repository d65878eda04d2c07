"""The access line of a real ``fastgate run`` process (issue 12): the fast path under the default configuration
writes the exact line, in order, flushed at the end of the loop turn even to a block-buffered file; a log config of
one's own, and reloads turning the line off and on, work as before."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests.reload_support import fastgate_run, gateway_config, ports, write_config
from tests.servers import GatewayProcess, RunningServer

pytestmark = pytest.mark.anyio

REQUESTS = 20
TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} 127\.0\.0\.1:\d+ - \"GET /x\?i=(\d+) HTTP/1\.1\" 200 (\d+) \d+\.\dms"
    r" upstream=api request_id=rid-(\d+) trace_id=[0-9a-f]{32}"
)


async def wait_for_lines(gateway: GatewayProcess, pattern: str, count: int, limit: float = 20) -> list[str]:
    with anyio.fail_after(limit):
        while len(found := [line for line in gateway.log().splitlines() if re.search(pattern, line)]) < count:  # noqa: ASYNC110 - a log file
            await anyio.sleep(0.05)
    return found


async def requests(client: httpx.AsyncClient, count: int = REQUESTS, first: int = 0) -> None:
    for i in range(first, first + count):
        response = await client.get(f"/x?i={i}", headers={"x-request-id": f"rid-{i}"})
        assert response.status_code == 200


def access_config(upstream: RunningServer, port: int, **server: Any) -> dict[str, Any]:
    server = {"access_log": True, "log_level": "info", **server}
    return gateway_config({"api": upstream.url}, [{"prefix": "/", "upstream": "api"}], port=port, server=server)


async def test_default_config_writes_the_exact_text_line_in_order_flushed_each_turn(
    upstream: RunningServer, tmp_path: Path
) -> None:
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    write_config(path, access_config(upstream, port))
    with fastgate_run(path, tmp_path / "gateway.log", port, buffered=True) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            await requests(client)
        # Still running, stdout a block-buffered file: the lines are there because each turn flushed them.
        lines = await wait_for_lines(gateway, r"request_id=rid-", REQUESTS)
    matches = [TEXT_LINE.fullmatch(line) for line in lines]
    assert all(matches), [line for line, match in zip(lines, matches, strict=True) if not match]
    assert [(m.group(1), m.group(3)) for m in matches if m] == [(str(i), str(i)) for i in range(REQUESTS)]


async def test_default_json_config_writes_one_json_object_a_line_in_order(
    upstream: RunningServer, tmp_path: Path
) -> None:
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    write_config(path, access_config(upstream, port, access_log_format="json"))
    with fastgate_run(path, tmp_path / "gateway.log", port, buffered=True) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            await requests(client)
        lines = await wait_for_lines(gateway, r'"request_id":"rid-', REQUESTS)
    fields = [json.loads(line) for line in lines]  # the whole line is the object: no prefix
    assert [f["request_id"] for f in fields] == [f"rid-{i}" for i in range(REQUESTS)]
    assert all(f["target"] == f"/x?i={i}" and f["status"] == 200 for i, f in enumerate(fields))
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", f["time"]) for f in fields)


async def test_own_log_config_with_fastgates_handler_and_another_format_takes_loggings_path(
    upstream: RunningServer, tmp_path: Path
) -> None:
    """AccessLineHandler under a ``log_config`` with a format the fast path does not write, and a filter: each line
    is the formatter's, and the filter sees every record."""
    (port,) = ports(1)
    log_config = tmp_path / "logging.json"
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "filters": {"noise": {"()": "fastgate.observability.logging.WebSocketNoiseFilter"}},
                "formatters": {"own": {"format": "OWN %(levelname)s %(name)s %(message)s"}},
                "handlers": {
                    "access": {
                        "class": "fastgate.observability.logging.AccessLineHandler",
                        "formatter": "own",
                        "filters": ["noise"],
                        "stream": "ext://sys.stdout",
                    }
                },
                "loggers": {"fastgate.access": {"handlers": ["access"], "level": "INFO", "propagate": False}},
            }
        )
    )
    path = tmp_path / "gateway.yaml"
    write_config(path, access_config(upstream, port, log_config=str(log_config)))
    with fastgate_run(path, tmp_path / "gateway.log", port, buffered=True) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            await requests(client, 3)
        lines = await wait_for_lines(gateway, r"request_id=rid-", 3)
    assert [line.split(" - ")[0].rsplit(" ", 1)[0] for line in lines] == ["OWN INFO fastgate.access"] * 3
    assert all(not re.match(r"\d{4}-", line) for line in lines)


async def test_reload_turns_the_access_line_off_and_on(upstream: RunningServer, tmp_path: Path) -> None:
    (port,) = ports(1)
    path = tmp_path / "gateway.yaml"
    write_config(path, access_config(upstream, port))
    with fastgate_run(path, tmp_path / "gateway.log", port) as gateway:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            await requests(client, 2)
            await wait_for_lines(gateway, r"request_id=rid-1 ", 1)
            write_config(path, access_config(upstream, port, access_log=False))
            gateway.process.send_signal(signal.SIGHUP)
            await wait_for_lines(gateway, r"config reloaded", 1)
            await requests(client, 2, first=2)
            write_config(path, access_config(upstream, port))
            gateway.process.send_signal(signal.SIGHUP)
            await wait_for_lines(gateway, r"config reloaded", 2)
            await requests(client, 2, first=4)
            lines = await wait_for_lines(gateway, r"request_id=rid-", 4)
    assert [TEXT_LINE.fullmatch(line).group(3) for line in lines] == ["0", "1", "4", "5"]  # type: ignore[union-attr]
