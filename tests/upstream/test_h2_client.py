"""The upstream HTTP/2 client (``protocol: h2c`` / ``h2``) against real peers on 127.0.0.1: Hypercorn (an ASGI server
speaking h2c by prior knowledge and h2 over TLS), and a raw h2 server on our codec for exact GOAWAY, REFUSED_STREAM
and PING scenarios."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import trustme

from fastgate.config import UpstreamConfig
from fastgate.exceptions import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamOverflow,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from fastgate.http2 import codec
from fastgate.upstream.cluster import Cluster
from fastgate.upstream.guarded import GuardedCluster
from fastgate.upstream.h2.connection import STREAM_WINDOW
from fastgate.upstream.h2.transport import H2Transport
from fastgate.upstream.transport import CHUNKED, UpstreamRequest, UpstreamResponse
from tests.servers import run_server
from tests.upstream.h2_servers import H2App, RawConnection, run_hypercorn, run_raw_h2
from tests.upstream_app import Recorder, UpstreamApp

pytestmark = pytest.mark.anyio

MIB = 1 << 20


def h2c(port: int, path: str = "", **options: Any) -> UpstreamConfig:
    return UpstreamConfig(url=f"http://127.0.0.1:{port}{path}", protocol="h2c", **options)


def get(path: str, **kwargs: Any) -> UpstreamRequest:
    return UpstreamRequest(b"GET", path.encode(), [(b"host", b"api.test")], **kwargs)


async def read_all(response: UpstreamResponse) -> bytes:
    body = b""
    while chunk := await response.read():
        body += chunk
    return body


async def fetch(transport: H2Transport, request: UpstreamRequest, body: Any = None) -> tuple[UpstreamResponse, bytes]:
    response = await transport.send(request, body)
    try:
        return response, await read_all(response)
    finally:
        await response.aclose()


async def pieces(total: int, piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    block = b"u" * piece
    sent = 0
    while sent < total:
        size = min(piece, total - sent)
        yield block[:size]
        sent += size


async def wait_until(predicate: Any, limit: float = 10.0) -> None:
    with anyio.fail_after(limit):
        while not predicate():  # noqa: ASYNC110 - another task (or the peer) changes what is polled
            await anyio.sleep(0.01)


# -- requests, responses, trailers ---------------------------------------------------------------------------------


async def test_request_reaches_the_upstream_as_http2_with_its_head_mapped() -> None:
    app = H2App()
    async with run_hypercorn(app) as server, H2Transport("api", h2c(server.port, path="/v1")) as transport:
        request = UpstreamRequest(
            b"GET",
            b"/echo?q=1",
            [(b"host", b"api.test"), (b"x-trace", b"t1"), (b"connection", b"keep-alive"), (b"te", b"trailers")],
        )
        response, body = await fetch(transport, request)
    seen = json.loads(body)
    assert response.status == 200 and response.target == f"127.0.0.1:{server.port}"
    assert seen["http_version"] == "2" and seen["path"] == "/v1/echo" and seen["query"] == "q=1"
    assert ["host", "api.test"] in seen["headers"]  # Hypercorn gives :authority back as host
    assert ["x-trace", "t1"] in seen["headers"] and ["te", "trailers"] in seen["headers"]
    assert not [h for h in seen["headers"] if h[0] == "connection"]
    assert (b"server", b"hypercorn-h2") in response.headers


async def test_trailers_arrive_once_the_body_has_ended() -> None:
    async with run_hypercorn(H2App()) as server, H2Transport("api", h2c(server.port)) as transport:
        asks = UpstreamRequest(b"GET", b"/trailers", [(b"host", b"a"), (b"te", b"trailers")])
        response = await transport.send(asks, None)
        assert response.trailers is None
        assert await read_all(response) == b"body before trailers"
        assert response.trailers == [(b"grpc-status", b"0"), (b"x-checksum", b"abc")]
        await response.aclose()
        plain, _ = await fetch(transport, get("/echo"))
        assert plain.trailers is None


async def test_head_and_bodiless_answers_end_cleanly_and_free_their_streams() -> None:
    async def app(connection: RawConnection, stream_id: int) -> None:
        connection.conn.send_headers(
            stream_id, [(b":status", b"204")] if stream_id == 3 else [(b":status", b"200"), (b"content-length", b"9")]
        )
        connection.conn.end_stream(stream_id)
        await connection.flush()

    async with run_raw_h2(app) as server, H2Transport("api", h2c(server.port)) as transport:
        head, body = await fetch(transport, UpstreamRequest(b"HEAD", b"/", [(b"host", b"a")]))
        assert (head.status, body, (b"content-length", b"9") in head.headers) == (200, b"", True)
        empty, body = await fetch(transport, get("/"))
        assert (empty.status, body, empty.trailers) == (204, b"", None)
        await head.aclose()  # a second aclose changes nothing
        assert transport.pool.connections[0].streams == {}


async def test_request_bodies_of_known_and_unknown_length() -> None:
    async with run_hypercorn(H2App()) as server, H2Transport("api", h2c(server.port)) as transport:
        for length in (300_000, CHUNKED):
            request = UpstreamRequest(b"POST", b"/upload", [(b"host", b"a")], body_length=length)
            response, body = await fetch(transport, request, pieces(300_000, 7000))
            assert (response.status, body) == (200, b"300000")


async def test_a_body_shorter_than_its_length_is_refused_and_the_stream_reset() -> None:
    app = H2App()
    async with run_hypercorn(app) as server, H2Transport("api", h2c(server.port)) as transport:
        request = UpstreamRequest(b"POST", b"/upload", [(b"host", b"a")], body_length=1000)
        with pytest.raises(Exception, match="ended after 10 of its 1000 bytes"):
            await transport.send(request, pieces(10))
        await wait_until(lambda: app.disconnects == ["/upload"])  # the upstream saw the stream go, not a short body
        response, body = await fetch(transport, get("/upload"))  # the connection carries on
        assert body == b"0" and app.connections == 1


# -- multiplexing and the pool -------------------------------------------------------------------------------------


async def _hold(transport: H2Transport, count: int, results: list[int]) -> None:
    async with anyio.create_task_group() as tg:
        for _ in range(count):

            async def one() -> None:
                response, _ = await fetch(transport, get("/hold"))
                results.append(response.status)

            tg.start_soon(one)


async def test_concurrent_requests_share_one_connection_up_to_the_limit_then_open_another() -> None:
    app = H2App()
    async with run_hypercorn(app) as server:
        config = h2c(server.port, http2={"max_concurrent_streams": 5})
        async with H2Transport("api", config) as transport:
            results: list[int] = []
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_hold, transport, 5, results)
                    await wait_until(lambda: app.holding == 5)
                    assert app.connections == 1  # five streams, one connection (a cold burst shares it)
                    tg.start_soon(_hold, transport, 3, results)
                    await wait_until(lambda: app.holding == 8)
                    assert app.connections == 2  # past the limit: a second connection
                    assert transport.pool.stats().busy == 2
                    app.release.set()
            assert results == [200] * 8
            response, _ = await fetch(transport, get("/echo"))  # an idle connection takes the next one
            assert response.status == 200 and app.connections == 2


async def test_the_peers_max_concurrent_streams_bounds_a_connection_too() -> None:
    app = H2App()
    async with (
        run_hypercorn(app, h2_max_concurrent_streams=2) as server,
        H2Transport("api", h2c(server.port)) as transport,
    ):
        await fetch(transport, get("/echo"))  # the connection knows the peer's SETTINGS now
        results: list[int] = []
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_hold, transport, 5, results)
                await wait_until(lambda: app.holding == 5)
                assert app.connections == 3  # 2 + 2 + 1
                app.release.set()
        assert results == [200] * 5


async def test_streams_wait_for_room_within_max_connections_then_503() -> None:
    app = H2App()
    async with run_hypercorn(app) as server:
        config = h2c(
            server.port,
            http2={"max_concurrent_streams": 1},
            limits={"max_connections": 1},
            timeouts={"pool": 0.3},
        )
        async with H2Transport("api", config) as transport:
            results: list[int] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(_hold, transport, 1, results)
                await wait_until(lambda: app.holding == 1)
                with pytest.raises(UpstreamUnavailable, match="pool exhausted"):
                    await transport.send(get("/echo"), None)
                # with a longer pool timeout, a request waits and gets the stream as soon as the first one ends
                longer = config.timeouts.model_copy(update={"pool": 10.0})
                tg.start_soon(_queued_with, transport, longer, results)
                await wait_until(lambda: transport.pool.stats().waiting == 1)
                app.release.set()
            assert results == [200, 200] and app.connections == 1


async def test_circuit_breaker_caps_http2_connections_and_pending_requests() -> None:
    app = H2App()
    async with run_hypercorn(app) as server:
        breaker = {"max_connections": 1, "max_pending_requests": 1}
        config = h2c(server.port, http2={"max_concurrent_streams": 1}, circuit_breaker=breaker)
        async with GuardedCluster("api", config) as cluster:
            results: list[int] = []
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    response = await cluster.send(get("/hold"), None)
                    await read_all(response)
                    await response.aclose()
                    results.append(response.status)

                tg.start_soon(call)
                await wait_until(lambda: app.holding == 1)
                tg.start_soon(call)  # no stream free, no connection allowed: it waits (one pending allowed)
                await wait_until(lambda: cluster.breaker_stats().pending == 1)
                with pytest.raises(UpstreamOverflow) as caught:
                    await cluster.send(get("/echo"), None)
                assert caught.value.threshold == "max_pending_requests"
                assert cluster.breaker_stats().connections == 1 and app.connections == 1
                app.release.set()
            assert results == [200, 200] and app.connections == 1


async def _queued_with(transport: H2Transport, timeouts: Any, results: list[int]) -> None:
    response, _ = await fetch(transport, get("/echo", timeouts=timeouts))
    results.append(response.status)


# -- flow control: big bodies, flat memory, slow readers --------------------------------------------------------------


async def test_64_mib_each_way_streams_through_with_flat_memory() -> None:
    app = H2App()
    async with run_hypercorn(app) as server, H2Transport("api", h2c(server.port)) as transport:
        tracemalloc.start()
        try:
            request = UpstreamRequest(b"POST", b"/upload", [(b"host", b"a")], body_length=64 * MIB)
            with anyio.fail_after(60):
                response, body = await fetch(transport, request, pieces(64 * MIB))
            assert body == b"%d" % (64 * MIB)
            with anyio.fail_after(60):
                response = await transport.send(get(f"/big?size={64 * MIB}"), None)
                total = 0
                while chunk := await response.read():
                    total += len(chunk)
                await response.aclose()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert total == 64 * MIB
    # Both peers run in this process: everything both hold at once stays far below one body.
    assert peak < 24 * MIB, f"peak {peak / MIB:.1f} MiB"


async def test_a_slow_reader_holds_its_own_stream_only() -> None:
    app = H2App()
    async with run_hypercorn(app) as server, H2Transport("api", h2c(server.port)) as transport:
        slow = await transport.send(get(f"/big?size={16 * MIB}&id=slow"), None)
        assert await slow.read()  # one piece read, then nothing: its window closes
        with anyio.fail_after(30):
            fast, body = await fetch(transport, get(f"/big?size={16 * MIB}&id=fast"))
        assert len(body) == 16 * MIB and app.connections == 1
        stream = slow._stream  # what the unread stream buffers
        # we granted no more than its window: Hypercorn holds the rest (it buffers what its app sends)
        assert stream is not None and 0 < stream.unacked <= STREAM_WINDOW
        with anyio.fail_after(30):
            rest = 0
            while chunk := await slow.read():
                rest += len(chunk)
        await slow.aclose()
        assert app.sent["slow"] == 16 * MIB


# -- cancellation, timeouts, failures --------------------------------------------------------------------------------


async def test_cancelling_a_request_resets_its_stream_and_the_upstream_sees_it() -> None:
    app = H2App()
    async with run_hypercorn(app) as server, H2Transport("api", h2c(server.port)) as transport:
        with anyio.move_on_after(0.5):
            await transport.send(get("/hold"), None)  # cancelled while waiting for the head
        await wait_until(lambda: app.disconnects == ["/hold"])
        response = await transport.send(get("/drip"), None)
        await response.read()
        await response.aclose()  # not read to its end: RST_STREAM(CANCEL)
        await wait_until(lambda: app.disconnects == ["/hold", "/drip"])
        ok, _ = await fetch(transport, get("/echo"))
        assert ok.status == 200 and app.connections == 1  # the connection outlives its streams


async def test_read_timeout_is_504_and_the_connection_stays_usable() -> None:
    app = H2App()
    async with run_hypercorn(app) as server, H2Transport("api", h2c(server.port, timeouts={"read": 0.3})) as transport:
        with pytest.raises(UpstreamTimeout, match="no response headers from upstream within 0.3s") as caught:
            await transport.send(get("/slow?delay=5"), None)
        assert caught.value.status_code == 504
        response, _ = await fetch(transport, get("/echo"))
        assert response.status == 200 and app.connections == 1


async def test_stream_idle_timeout_between_body_pieces() -> None:
    async def app(connection: RawConnection, stream_id: int) -> None:
        connection.conn.send_headers(stream_id, [(b":status", b"200")])
        connection.conn.send_data(stream_id, b"first")
        await connection.flush()  # then silence

    async with run_raw_h2(app) as server:
        async with H2Transport("api", h2c(server.port, timeouts={"stream_idle": 0.3})) as transport:
            response = await transport.send(get("/"), None)
            assert await response.read() == b"first"
            with pytest.raises(UpstreamTimeout, match="no response body data"):
                await response.read()
            await response.aclose()


async def test_connect_refused_is_a_connect_error() -> None:
    async with run_hypercorn(H2App()) as server:
        port = server.port
    async with H2Transport("api", h2c(port)) as transport:
        with pytest.raises(UpstreamConnectError, match="cannot connect"):
            await transport.send(get("/"), None)


async def test_an_http1_server_is_a_protocol_error_not_a_hang() -> None:
    async with run_server(UpstreamApp(Recorder())) as server, H2Transport("api", h2c(server.port)) as transport:
        with anyio.fail_after(10), pytest.raises(UpstreamProtocolError):
            await transport.send(get("/"), None)


# -- GOAWAY, REFUSED_STREAM, PING -------------------------------------------------------------------------------------


async def test_goaway_fails_later_streams_as_unprocessed_and_they_go_again_on_a_new_connection() -> None:
    async def app(connection: RawConnection, stream_id: int) -> None:
        if connection.index == 0 and len(connection.requests) < 2:
            return  # the first connection waits for its second request
        if connection.index == 0:
            first = connection.requests[0]
            await connection.respond(first, body=b"first")
            connection.conn.close_connection(last_stream_id=first)  # GOAWAY: the second was not processed
            await connection.flush()
            return
        await connection.respond(stream_id, body=b"again")

    async with run_raw_h2(app) as server, H2Transport("api", h2c(server.port)) as transport:
        bodies: list[bytes] = []

        async def post() -> None:
            # POST without a body: not idempotent, and still sent again because nothing was processed
            response, body = await fetch(transport, UpstreamRequest(b"POST", b"/", [(b"host", b"a")]))
            bodies.append(body)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(post)
                await wait_until(lambda: server.connections and len(server.connections[0].requests) == 1)
                tg.start_soon(post)
        assert sorted(bodies) == [b"again", b"first"]
        assert len(server.connections) == 2
        await wait_until(lambda: transport.pool.stats().busy + transport.pool.stats().idle == 1)


async def test_streams_below_a_graceful_goaway_run_to_their_end() -> None:
    async def app(connection: RawConnection, stream_id: int) -> None:
        if connection.index > 0:
            await connection.respond(stream_id)
            return
        if stream_id == 1:
            return  # answered below, once the second request is in
        await connection.goaway_only(last_stream_id=3)  # graceful: both streams may finish, nothing new
        for sid in (1, 3):
            connection.conn.send_headers(sid, [(b":status", b"200")])
            await connection.flush()
        body = b"b" * 200_000  # past our 64 KiB of initial window on the peer's side: WINDOW_UPDATEs must flow
        for sid in (1, 3):
            sent = 0
            while sent < len(body):
                room = min(connection.conn.local_flow_control_window(sid), 16384)
                if room <= 0:
                    await anyio.sleep(0.01)
                    continue
                connection.conn.send_data(sid, body[sent : sent + room])
                sent += room
                await connection.flush()
            connection.conn.end_stream(sid)
            await connection.flush()

    async with run_raw_h2(app) as server, H2Transport("api", h2c(server.port)) as transport:
        bodies: list[int] = []

        async def call() -> None:
            response, body = await fetch(transport, get("/"))
            bodies.append(len(body))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await wait_until(lambda: server.connections and len(server.connections[0].requests) == 1)
                tg.start_soon(call)
        assert bodies == [200_000, 200_000] and len(server.connections) == 1
        await wait_until(lambda: transport.pool.connections == [])  # drained, then closed
        response, _ = await fetch(transport, get("/"))  # a new connection for what comes next
        assert response.status == 200 and len(server.connections) == 2


async def test_refused_stream_is_sent_again_whatever_the_method() -> None:
    async def app(connection: RawConnection, stream_id: int) -> None:
        if len(connection.requests) == 1:
            connection.conn.reset_stream(stream_id, codec.ErrorCodes.REFUSED_STREAM)
            await connection.flush()
            return
        await connection.respond(stream_id, body=b"took it")

    async with run_raw_h2(app) as server, H2Transport("api", h2c(server.port)) as transport:
        response, body = await fetch(transport, UpstreamRequest(b"POST", b"/", [(b"host", b"a")]))
    assert (response.status, body) == (200, b"took it")
    assert server.connections[0].requests == [1, 3]


async def test_the_cluster_retries_an_unprocessed_post_on_a_connect_error() -> None:
    async def app(connection: RawConnection, stream_id: int) -> None:
        if len(connection.requests) <= 2:  # the transport's own second try is refused too
            connection.conn.reset_stream(stream_id, codec.ErrorCodes.REFUSED_STREAM)
            await connection.flush()
            return
        await connection.respond(stream_id, body=b"third time")

    async with run_raw_h2(app) as server, Cluster("api", h2c(server.port)) as cluster:
        response = await cluster.send(UpstreamRequest(b"POST", b"/", [(b"host", b"a")]), None)
        assert (response.status, await read_all(response), response.tries) == (200, b"third time", 2)
        await response.aclose()


async def test_refused_twice_is_a_connect_error_so_the_cluster_may_retry_it() -> None:
    async def app(connection: RawConnection, stream_id: int) -> None:
        connection.conn.reset_stream(stream_id, codec.ErrorCodes.REFUSED_STREAM)
        await connection.flush()

    async with run_raw_h2(app) as server, H2Transport("api", h2c(server.port)) as transport:
        with pytest.raises(UpstreamConnectError, match="not processed"):
            await transport.send(UpstreamRequest(b"POST", b"/", [(b"host", b"a")]), None)


async def test_a_reset_after_the_body_went_is_a_protocol_error() -> None:
    async def app(connection: RawConnection, stream_id: int) -> None:
        connection.conn.reset_stream(stream_id, codec.ErrorCodes.REFUSED_STREAM)
        await connection.flush()

    async with run_raw_h2(app) as server, H2Transport("api", h2c(server.port)) as transport:
        request = UpstreamRequest(b"POST", b"/", [(b"host", b"a")], body_length=5)
        with pytest.raises(UpstreamError) as caught:
            await transport.send(request, pieces(5))
        # the body was consumed: it cannot go again from here, whatever the reset says
        assert type(caught.value) is UpstreamProtocolError


async def test_idle_connections_are_pinged_and_an_unanswered_ping_closes_them() -> None:
    async def app(connection: RawConnection, stream_id: int) -> None:
        await connection.respond(stream_id)

    async with run_raw_h2(app) as server:
        config = h2c(server.port, http2={"keepalive_interval": 0.2})
        async with H2Transport("api", config) as transport:
            await fetch(transport, get("/"))
            first = server.connections[0]
            await wait_until(lambda: first.pings >= 2)  # answered (the codec acks), so pinged again
            assert not first.closed.is_set() and transport.pool.stats().idle == 1
            first.mute = True  # PINGs go unanswered from here
            await wait_until(first.closed.is_set)
            await wait_until(lambda: transport.pool.stats().idle == 0)
            response, _ = await fetch(transport, get("/"))  # a new connection takes over
            assert response.status == 200 and len(server.connections) == 2


async def test_without_keepalive_interval_idle_connections_expire() -> None:
    async def app(connection: RawConnection, stream_id: int) -> None:
        await connection.respond(stream_id)

    async with run_raw_h2(app) as server:
        config = h2c(server.port, http2={"keepalive_interval": None}, limits={"keepalive_expiry": 0.2})
        async with H2Transport("api", config) as transport:
            await fetch(transport, get("/"))
            await wait_until(server.connections[0].closed.is_set)
            assert server.connections[0].pings == 0


async def test_server_shutdown_goaway_drains_the_connection() -> None:
    app = H2App()
    async with run_hypercorn(app) as server, H2Transport("api", h2c(server.port)) as transport:
        await fetch(transport, get("/echo"))
        server.stop.set()  # Hypercorn says GOAWAY and closes
        await wait_until(lambda: transport.pool.connections == [])


# -- h2 over TLS -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("h2tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    chain = folder / "chain.pem"
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(chain), append=index > 0)
    return {"ca": str(folder / "ca.pem"), "cert": str(chain), "key": str(folder / "key.pem")}


async def test_h2_over_tls_negotiates_h2_by_alpn(tls_files: dict[str, str]) -> None:
    app = H2App()
    async with run_hypercorn(app, certfile=tls_files["cert"], keyfile=tls_files["key"]) as server:
        config = UpstreamConfig(url=f"https://127.0.0.1:{server.port}", protocol="h2", ca_file=tls_files["ca"])
        async with H2Transport("api", config) as transport:
            response, body = await fetch(transport, get("/echo"))
            asks = UpstreamRequest(b"GET", b"/trailers", [(b"host", b"a"), (b"te", b"trailers")])
            with_trailers = await transport.send(asks, None)
            await read_all(with_trailers)
            trailers = with_trailers.trailers
            await with_trailers.aclose()
    assert response.status == 200 and json.loads(body)["http_version"] == "2"
    assert trailers == [(b"grpc-status", b"0"), (b"x-checksum", b"abc")]


async def test_a_tls_peer_that_does_not_select_h2_is_a_clear_connect_error(tls_files: dict[str, str]) -> None:
    async with run_server(
        UpstreamApp(Recorder()), ssl_certfile=tls_files["cert"], ssl_keyfile=tls_files["key"]
    ) as server:
        config = UpstreamConfig(url=f"https://127.0.0.1:{server.port}", protocol="h2", ca_file=tls_files["ca"])
        async with H2Transport("api", config) as transport:
            with pytest.raises(UpstreamConnectError, match="did not select h2 by ALPN"):
                await transport.send(get("/"), None)
