"""The client-side limits and deadlines of fastgate's server, as one immutable value built from ``ServerConfig``."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Http2Config, ServerConfig


@dataclass(frozen=True, slots=True)
class Http2Limits:
    """``server.http2``: what an HTTP/2 connection tells its client, and whether h2 is served at all."""

    enabled: bool = True
    max_concurrent_streams: int = 100
    initial_stream_window: int = 1048576
    initial_connection_window: int = 4194304
    max_header_list: int = 65536
    max_frame: int = 16384

    @classmethod
    def from_config(cls, http2: Http2Config) -> Http2Limits:
        return cls(
            http2.enabled,
            http2.max_concurrent_streams,
            http2.initial_stream_window_bytes,
            http2.initial_connection_window_bytes,
            http2.max_header_list_bytes,
            http2.max_frame_bytes,
        )


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client connection may cost. Times in seconds; ``None`` turns a limit off.

    >>> limits = ServerLimits.from_config(ServerConfig(header_timeout=5))
    >>> limits.header_timeout
    5.0
    """

    max_header_bytes: int = 65536
    max_header_field_bytes: int = 32768
    max_uri_bytes: int = 8192
    header_timeout: float | None = 10.0
    keepalive_timeout: float | None = 75.0
    send_timeout: float | None = 60.0
    min_body_rate: float | None = 240.0
    body_grace_period: float = 5.0
    max_requests_per_connection: int | None = 1000
    max_connections: int | None = 10000
    lingering_time: float = 30.0
    lingering_timeout: float = 5.0
    max_lingering_bytes: int = 4 * 1024 * 1024
    underscores_in_headers: bool = False
    http2: Http2Limits = Http2Limits()
    graceful_timeout: float = 30.0

    @classmethod
    def from_config(cls, server: ServerConfig) -> ServerLimits:
        rate = server.min_request_body_rate
        return cls(
            max_header_bytes=server.max_header_bytes,
            max_header_field_bytes=server.max_header_field_bytes,
            max_uri_bytes=server.max_uri_bytes,
            header_timeout=server.header_timeout,
            keepalive_timeout=server.keepalive_timeout,
            send_timeout=server.send_timeout,
            min_body_rate=rate.bytes_per_second if rate else None,
            body_grace_period=rate.grace_period if rate else 0.0,
            max_requests_per_connection=server.max_requests_per_connection,
            max_connections=server.max_connections,
            lingering_time=server.lingering_time,
            lingering_timeout=server.lingering_timeout,
            max_lingering_bytes=server.max_lingering_bytes,
            underscores_in_headers=server.underscores_in_headers,
            http2=Http2Limits.from_config(server.http2),
            graceful_timeout=server.graceful_timeout,
        )

    @property
    def sweep_interval(self) -> float:
        """How often deadlines are checked: a tenth of the shortest, between 50 ms and 1 s.

        The lingering deadlines are left out (they only run after an early answer): a closing socket lingers up to
        one interval longer than ``lingering_timeout`` says, rather than every connection being swept more often.
        """
        times = [t for t in (self.header_timeout, self.keepalive_timeout, self.send_timeout) if t]
        if self.min_body_rate:
            times.append(max(self.body_grace_period, 1.0))
        return min(1.0, max(0.05, min(times, default=10.0) / 10))
