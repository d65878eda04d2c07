"""UpstreamClient: httpx's API over fastgate's pooled transport, safe to share between users (issue 5)."""

from __future__ import annotations

import anyio
import pytest

from fastgate import UpstreamClient, UpstreamConfig, UpstreamConnectError, UpstreamTimeout
from tests.servers import REFUSED_PORT, RunningServer
from tests.upstream_app import Recorder

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("transport", ["fastgate", "httpx"])
async def test_upstream_client_makes_calls_through_one_pool(
    upstream: RunningServer, recorder: Recorder, transport: str
) -> None:
    config = UpstreamConfig(url=upstream.url + "/", transport=transport)
    async with UpstreamClient("api", config) as api:
        assert api.is_open
        get = await api.get("/echo", params={"a": "1"})
        post = await api.post("/upload", content=b"x" * 100_000)
        async with api.stream("GET", "/stream?n=3&delay=0.01") as streamed:
            chunks = [chunk async for chunk in streamed.aiter_raw()]
        gz = await api.get("/gzip")
        pool = getattr(api._fastgate.transport, "pool", None)
        stats = pool.stats() if pool is not None else None
    assert get.json()["query_string"] == "a=1" and get.json()["method"] == "GET"
    assert post.json()["size"] == 100_000
    assert b"".join(chunks) == b"chunk 0\nchunk 1\nchunk 2\n"
    assert gz.text.startswith("compressed payload")  # httpx decodes Content-Encoding as usual
    assert recorder.requests[1]["headers"].count(["content-length", "100000"]) == 1
    if transport == "fastgate":
        assert stats is not None
        assert (stats.busy, stats.idle, stats.connects) == (0, 1, 1)  # four calls, one kept-alive connection
    assert not api.is_open


async def test_upstream_client_prefixes_the_upstream_path(upstream: RunningServer, recorder: Recorder) -> None:
    async with UpstreamClient("api", upstream.url + "/v2") as api:
        await api.get("/users/1")
    assert recorder.last()["raw_path"] == "/v2/users/1"


async def test_upstream_client_does_not_keep_cookies(upstream: RunningServer, recorder: Recorder) -> None:
    async with UpstreamClient("api", upstream.url) as api:
        assert len((await api.get("/cookies")).headers.get_list("set-cookie")) == 2
        await api.get("/echo")
    assert recorder.header("cookie") == []  # one user's cookies never ride along with the next user's calls


async def test_upstream_client_refuses_other_hosts(upstream: RunningServer) -> None:
    async with UpstreamClient("api", upstream.url) as api:
        with pytest.raises(ValueError, match="only sends to"):
            await api.get("http://example.com/")


async def test_upstream_client_raises_fastgate_errors() -> None:
    async with UpstreamClient("api", f"http://127.0.0.1:{REFUSED_PORT}") as api:
        with pytest.raises(UpstreamConnectError) as caught:
            await api.get("/")
    assert caught.value.upstream == "api"


async def test_upstream_client_uses_the_configured_timeouts(upstream: RunningServer) -> None:
    config = UpstreamConfig(url=upstream.url, timeouts={"read": 0.2})
    async with UpstreamClient("api", config) as api:
        with anyio.fail_after(3), pytest.raises(UpstreamTimeout):
            await api.get("/slow?delay=5")


async def test_upstream_client_cancellation_drops_the_upstream_call(
    upstream: RunningServer, recorder: Recorder
) -> None:
    async with UpstreamClient("api", upstream.url) as api:
        with anyio.move_on_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(api.get, "/slow?delay=10")
                with anyio.fail_after(2):
                    await recorder.started.wait()
                tg.cancel_scope.cancel()
        with anyio.fail_after(3):
            await recorder.disconnect_event.wait()  # the upstream saw the connection go
        assert api._fastgate.transport.pool.stats().busy == 0  # type: ignore[attr-defined]
