"""A small raw HTTP/2 client for the tests, on python-hyper's ``h2`` (test tooling; src/ reaches h2 only through
``fastgate.http2.codec``): what httpx hides — trailers, RST_STREAM, windows, GOAWAY, the server's SETTINGS.

The reader task feeds every byte to the codec and keeps per-stream state; tests wait on that state with
:meth:`H2Client.wait` (an event fired on every change, under a deadline), never with sleeps.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame


@dataclass
class StreamState:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    reset_code: int | None = None

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None


@dataclass
class GoAway:
    error_code: int
    last_stream_id: int


class H2Client:
    """One HTTP/2 connection to ``stream``; use :func:`h2_connect`."""

    def __init__(
        self, stream: anyio.abc.ByteStream, authority: str, *, scheme: str = "http", auto_ack: bool = True
    ) -> None:
        self.stream = stream
        self.scheme = scheme.encode()
        self.authority = authority.encode()
        self.auto_ack = auto_ack
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, StreamState] = {}
        self.goaway: GoAway | None = None
        self.server_settings: dict[int, int] = {}
        self.closed = False  # the server closed the TCP connection
        self._changed = anyio.Event()
        self._lock = anyio.Lock()
        self._frames = b""  # a partial frame read so far

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            async with self._lock:
                try:
                    await self.stream.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    self._gone()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _gone(self) -> None:
        self.closed = True
        self._notify()

    async def read_loop(self) -> None:
        while True:
            try:
                data = await self.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self._gone()
                return
            try:
                events = self.conn.receive_data(self._take_goaway(data))
            except ProtocolError:
                self._gone()
                return
            for event in events:
                self._event(event)
            await self._flush()
            self._notify()

    def _take_goaway(self, data: bytes) -> bytes:
        """The bytes to feed the codec: every frame but GOAWAY, which is recorded here instead.

        h2 closes its state machine on a GOAWAY it receives (python-hyper/h2#1181), so the responses of streams the
        server still finishes after a graceful GOAWAY (RFC 9113 §6.8) would be refused by our own codec."""
        buffer = self._frames + data
        out = bytearray()
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            frame, buffer = buffer[: 9 + length], buffer[9 + length :]
            if frame[3] == 0x7:  # GOAWAY: last stream id (31 bits), error code
                last = int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF
                self.goaway = GoAway(int.from_bytes(frame[13:17], "big"), last)
            else:
                out += frame
        self._frames = buffer
        return bytes(out)

    def _event(self, event: object) -> None:
        if isinstance(event, ResponseReceived):
            self.state(event.stream_id).headers = list(event.headers or [])  # type: ignore[arg-type]
        elif isinstance(event, DataReceived):
            assert event.stream_id is not None
            self.state(event.stream_id).body += event.data or b""
            if self.auto_ack and event.flow_controlled_length:
                with contextlib.suppress(StreamClosedError, ProtocolError):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, TrailersReceived):
            self.state(event.stream_id).trailers = list(event.headers or [])  # type: ignore[arg-type]
        elif isinstance(event, StreamEnded):
            self.state(event.stream_id).ended = True
        elif isinstance(event, StreamReset):
            self.state(event.stream_id).reset_code = int(event.error_code)  # type: ignore[arg-type]
        elif isinstance(event, RemoteSettingsChanged):
            for code, setting in event.changed_settings.items():
                self.server_settings[int(code)] = setting.new_value
        elif isinstance(event, WindowUpdated):
            pass  # wait() callers look at the windows themselves

    def state(self, stream_id: int | None) -> StreamState:
        assert stream_id is not None
        return self.streams.setdefault(stream_id, StreamState())

    async def wait(self, predicate: Callable[[], object], limit: float = 15.0) -> None:
        """Until ``predicate()`` is true (checked on every change the reader makes), at most ``limit`` seconds."""
        with anyio.fail_after(limit):
            while not predicate():
                await self._changed.wait()

    # -- requests ----------------------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        *,
        end: bool | None = None,
        authority: str | None = None,
    ) -> int:
        """Send a request head (and ``body`` within the windows); ``end=False`` leaves the body open."""
        stream_id = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", self.scheme),
            (b":authority", authority.encode() if authority is not None else self.authority),
            (b":path", path.encode()),
        ] + [(name.encode(), value.encode()) for name, value in headers or []]
        last = end if end is not None else True
        self.streams[stream_id] = StreamState()
        self.conn.send_headers(stream_id, fields, end_stream=last and not body)
        await self._flush()
        if body:
            await self.send_body(stream_id, body, end=last)
        return stream_id

    def window(self, stream_id: int) -> int:
        return self.conn.local_flow_control_window(stream_id)

    async def send_available(self, stream_id: int, data: bytes) -> int:
        """Send as much of ``data`` as the windows allow now, without waiting; the count sent."""
        sent = 0
        while sent < len(data):
            size = min(self.window(stream_id), self.conn.max_outbound_frame_size, len(data) - sent)
            if size <= 0:
                break
            self.conn.send_data(stream_id, data[sent : sent + size])
            sent += size
        await self._flush()
        return sent

    async def send_body(self, stream_id: int, data: bytes, *, end: bool = True, limit: float = 60.0) -> None:
        """Send all of ``data``, waiting for the server's window updates."""
        view = memoryview(data)
        sent = 0
        with anyio.fail_after(limit):
            while sent < len(data):
                sent += await self.send_available(stream_id, bytes(view[sent : sent + (1 << 20)]))
                if sent < len(data):
                    await self.wait(lambda: self.window(stream_id) > 0 or self.closed, limit)
                    if self.closed:
                        raise ConnectionError("the server closed the connection")
        if end:
            self.conn.end_stream(stream_id)
            await self._flush()

    async def end(self, stream_id: int) -> None:
        self.conn.end_stream(stream_id)
        await self._flush()

    async def send_goaway(self, last_stream_id: int) -> None:
        """GOAWAY NO_ERROR, written past our codec (which would refuse every frame after it: python-hyper/h2#1181)."""
        await self._flush()
        async with self._lock:
            await self.stream.send(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0).serialize())

    async def reset(self, stream_id: int, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        self.conn.reset_stream(stream_id, code)
        await self._flush()

    async def ack(self, stream_id: int, size: int) -> None:
        self.conn.acknowledge_received_data(size, stream_id)
        await self._flush()

    async def response(self, stream_id: int, limit: float = 30.0) -> StreamState:
        state = self.state(stream_id)
        await self.wait(lambda: state.done or self.closed, limit)
        return state

    async def get(self, path: str, headers: list[tuple[str, str]] | None = None, **kwargs: object) -> StreamState:
        return await self.response(await self.request("GET", path, headers, **kwargs))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def h2_connect(
    port: int,
    *,
    host: str = "127.0.0.1",
    ssl_context: ssl.SSLContext | None = None,
    settings: dict[int, int] | None = None,
    auto_ack: bool = True,
) -> AsyncIterator[H2Client]:
    """An HTTP/2 connection (h2c by prior knowledge, or h2 by ALPN with ``ssl_context``), its preface sent and the
    server's SETTINGS received."""
    if ssl_context is not None:
        ssl_context.set_alpn_protocols(["h2"])
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(
            host, port, tls=True, ssl_context=ssl_context, tls_hostname=host
        )
    else:
        stream = await anyio.connect_tcp(host, port)
    scheme = "https" if ssl_context is not None else "http"
    client = H2Client(stream, f"{host}:{port}", scheme=scheme, auto_ack=auto_ack)
    client.conn.local_settings.update({SettingCodes.ENABLE_PUSH: 0, **(settings or {})})
    client.conn.initiate_connection()
    async with stream, anyio.create_task_group() as tg:
        await client._flush()
        tg.start_soon(client.read_loop)
        await client.wait(lambda: client.server_settings or client.closed)
        try:
            yield client
        finally:
            tg.cancel_scope.cancel()
