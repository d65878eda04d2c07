"""A raw HTTP/2 client for hostile tests: h2c with prior knowledge over a plain socket, frame by frame.

A compliant client library (h2, httpx) refuses to send a malformed request, so the hostile suites build their
frames with python-hyper's ``hyperframe`` and their header blocks with ``hpack`` (client tooling: the gateway
itself reaches h2 only through ``fastgate.http2.codec``) and write them as they are. What the server sends back is
parsed into frames and kept in order; header blocks are decoded, so a test reads statuses, resets and GOAWAY codes.

    async with RawH2.connect(port) as client:
        await client.send(client.headers(1, [(b":method", b"GET"), ...]))
        response = await client.response(1)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import anyio
import anyio.abc
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROTOCOL_ERROR = 0x1
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB
Header = tuple[bytes, bytes]


def request_headers(
    path: bytes = b"/a", method: bytes = b"GET", authority: bytes = b"example.test", *extra: Header
) -> list[Header]:
    """A well-formed request's fields, in the order RFC 9113 §8.3 wants (pseudo-headers first)."""
    return [(b":method", method), (b":scheme", b"http"), (b":path", path), (b":authority", authority), *extra]


@dataclass
class Response:
    """What came back on one stream: the head, the body, the trailers, a reset code, or a GOAWAY that ended it."""

    status: int | None = None
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    trailers: list[Header] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None  # RST_STREAM's error code
    goaway: int | None = None  # the connection's GOAWAY error code, when one ended the stream (or came first)
    closed: bool = False  # the connection closed before the stream ended

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name]


class RawH2:
    """One h2c connection; every frame received is kept in ``frames`` (see the module docstring)."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.buffer = bytearray()
        self.frames: list[Frame] = []
        self.fields: dict[int, list[Header]] = {}  # id(frame) -> its decoded header block, for each HEADERS frame
        self.closed = False  # the server closed (or reset) the connection
        self.bytes_sent = 0
        self.send_failed = False  # a write failed: the server had closed the connection
        self.ack_settings = True  # answer the server's SETTINGS with an ACK, as a client must
        self.mark = 0  # ``response`` reads the frames from this index on (``mark_now``: only what comes next)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, port: int, settings: dict[int, int] | None = None, *, preface: bool = True
    ) -> AsyncIterator[RawH2]:
        """Connect to 127.0.0.1:``port`` and send the preface and our SETTINGS (``settings``: code -> value)."""
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            client = cls(stream)
            if preface:
                frame = SettingsFrame(0, settings=settings or {})
                await client.send_bytes(PREFACE + frame.serialize())
            yield client

    # -- building frames ------------------------------------------------------------------------------------------

    def block(self, headers: Iterable[Header]) -> bytes:
        """An HPACK block of ``headers`` exactly as given (no validation, no normalisation)."""
        return bytes(self.encoder.encode(list(headers)))

    def headers(
        self, stream_id: int, headers: Iterable[Header] | bytes, *, end_stream: bool = True, end_headers: bool = True
    ) -> HeadersFrame:
        flags = [flag for flag, on in (("END_STREAM", end_stream), ("END_HEADERS", end_headers)) if on]
        data = headers if isinstance(headers, bytes) else self.block(headers)
        return HeadersFrame(stream_id, data=data, flags=flags)

    @staticmethod
    def continuation(stream_id: int, data: bytes, *, end_headers: bool = False) -> ContinuationFrame:
        return ContinuationFrame(stream_id, data=data, flags=["END_HEADERS"] if end_headers else [])

    @staticmethod
    def data(stream_id: int, data: bytes, *, end_stream: bool = True) -> DataFrame:
        return DataFrame(stream_id, data=data, flags=["END_STREAM"] if end_stream else [])

    @staticmethod
    def rst(stream_id: int, code: int = CANCEL) -> RstStreamFrame:
        return RstStreamFrame(stream_id, error_code=code)

    @staticmethod
    def ping(payload: bytes = b"\0" * 8) -> PingFrame:
        return PingFrame(0, opaque_data=payload)

    @staticmethod
    def settings(values: dict[int, int] | None = None) -> SettingsFrame:
        return SettingsFrame(0, settings=values or {})

    @staticmethod
    def window_update(stream_id: int, increment: int) -> WindowUpdateFrame:
        return WindowUpdateFrame(stream_id, window_increment=increment)

    # -- sending --------------------------------------------------------------------------------------------------

    async def send(self, *frames: Frame | bytes) -> bool:
        """Write ``frames`` (or bytes made by hand) in one write; False when the server has closed the connection."""
        return await self.send_bytes(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    async def send_bytes(self, data: bytes) -> bool:
        if self.send_failed:
            return False
        try:
            await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self.send_failed = True
            return False
        self.bytes_sent += len(data)
        return True

    async def request(self, stream_id: int, headers: Iterable[Header], body: bytes | None = None) -> Response:
        """Send one request (HEADERS, then DATA when ``body`` is given) and read its response."""
        if body is None:
            await self.send(self.headers(stream_id, headers))
        else:
            await self.send(self.headers(stream_id, headers, end_stream=False), self.data(stream_id, body))
        return await self.response(stream_id)

    # -- receiving ------------------------------------------------------------------------------------------------

    async def receive(self) -> bool:
        """Read from the socket once and parse the whole frames in it; False once the connection is closed."""
        if self.closed:
            return False
        try:
            chunk = await self.stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self.closed = True
            return False
        self.buffer += chunk
        replies: list[Frame] = []
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
            del self.buffer[: 9 + length]
            self.frames.append(frame)
            if isinstance(frame, HeadersFrame):  # decoded in order: HPACK's dynamic table is the connection's
                self.fields[id(frame)] = [(bytes(k), bytes(v)) for k, v in self.decoder.decode(frame.data, raw=True)]
            elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags and self.ack_settings:
                replies.append(SettingsFrame(0, flags=["ACK"]))
        if replies:
            await self.send(*replies)
        return True

    async def until(self, predicate: Callable[[Frame], bool], limit: float = 10.0) -> Frame | None:
        """The first frame received (from now or before) that ``predicate`` accepts; None if the connection closes
        first. Fails the test after ``limit`` seconds."""
        seen = 0
        with anyio.fail_after(limit):
            while True:
                for frame in self.frames[seen:]:
                    if predicate(frame):
                        return frame
                seen = len(self.frames)
                if not await self.receive():
                    return next((f for f in self.frames[seen:] if predicate(f)), None)

    async def goaway(self, limit: float = 10.0) -> GoAwayFrame | None:
        """The server's GOAWAY, waited for (None: the connection closed without one)."""
        frame = await self.until(lambda f: isinstance(f, GoAwayFrame), limit)
        assert frame is None or isinstance(frame, GoAwayFrame)
        return frame

    async def wait_closed(self, limit: float = 10.0) -> None:
        """Read (and keep) everything until the server closes the connection; fails after ``limit`` seconds."""
        with anyio.fail_after(limit):
            while await self.receive():
                pass

    def goaway_code(self) -> int | None:
        for frame in self.frames:
            if isinstance(frame, GoAwayFrame):
                return int(frame.error_code)
        return None

    def reset_code(self, stream_id: int) -> int | None:
        for frame in self.frames:
            if isinstance(frame, RstStreamFrame) and frame.stream_id == stream_id:
                return int(frame.error_code)
        return None

    def mark_now(self) -> None:
        """From now on ``response`` ignores the frames received so far (a stream id used again, say)."""
        self.mark = len(self.frames)

    async def response(self, stream_id: int, limit: float = 10.0) -> Response:
        """Read until stream ``stream_id`` ends (END_STREAM or RST_STREAM) or the connection goes."""
        response = Response()
        seen = self.mark
        heads = 0
        with anyio.fail_after(limit):
            while True:
                for frame in self.frames[seen:]:
                    if isinstance(frame, GoAwayFrame):
                        response.goaway = int(frame.error_code)
                        if frame.last_stream_id < stream_id:
                            return response
                    if frame.stream_id != stream_id:
                        continue
                    if isinstance(frame, HeadersFrame):
                        fields = self.fields[id(frame)]
                        heads += 1
                        if heads == 1:
                            response.headers = fields
                            response.status = int(dict(fields)[b":status"])
                        else:
                            response.trailers = fields
                    elif isinstance(frame, DataFrame):
                        response.body += frame.data
                        if frame.flow_controlled_length:
                            await self.send(
                                self.window_update(0, frame.flow_controlled_length),
                                self.window_update(stream_id, frame.flow_controlled_length),
                            )
                    elif isinstance(frame, RstStreamFrame):
                        response.reset = int(frame.error_code)
                        return response
                    if "END_STREAM" in frame.flags:
                        response.ended = True
                        return response
                seen = len(self.frames)
                if not await self.receive():
                    response.closed = True
                    return response
