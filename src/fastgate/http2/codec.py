"""The HTTP/2 codec, behind one module: every other module of fastgate reaches python-hyper's ``h2`` through here.

Why ``h2`` (README, design notes): it is mature and sans-IO, and its flow control is per stream and ours to drive:
inbound window is granted only when we call :func:`H2Connection.acknowledge_received_data`, which fastgate does
as a stream's bytes are written upstream, so a slow upstream slows that stream and not the connection. ``zttp``
(Uvicorn 0.54's ``--http2`` parser) is faster at parsing but alpha, and grants window as soon as data is parsed: its
only backpressure is pausing the whole connection. A replacement codec would offer the names exported here.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    PingAckReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import FlowControlError, ProtocolError, StreamClosedError, TooManyStreamsError
from h2.settings import SettingCodes, Settings

from . import PREFACE

__all__ = [
    "PREFACE",
    "ConnectionTerminated",
    "DataReceived",
    "ErrorCodes",
    "Event",
    "FlowControlError",
    "H2Connection",
    "InformationalResponseReceived",
    "PingAckReceived",
    "PingReceived",
    "PriorityUpdated",
    "ProtocolError",
    "RemoteSettingsChanged",
    "RequestReceived",
    "ResponseReceived",
    "SettingCodes",
    "SettingsAcknowledged",
    "StreamClosedError",
    "StreamEnded",
    "StreamReset",
    "TooManyStreamsError",
    "TrailersReceived",
    "WindowUpdated",
    "client_connection",
    "server_connection",
]


def server_connection(
    *,
    max_concurrent_streams: int,
    initial_window: int,
    max_header_list: int,
    max_frame: int,
) -> H2Connection:
    """A server-side connection with fastgate's settings (sent by ``initiate_connection``). Inbound headers are
    validated by the codec (RFC 9113 §8.2: uppercase names, connection-specific fields, pseudo-headers)."""
    config = H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = H2Connection(config)
    conn.local_settings = Settings(
        client=False,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: initial_window,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
            SettingCodes.MAX_FRAME_SIZE: max_frame,
            SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,
        },
    )
    conn.max_inbound_frame_size = max_frame
    conn.decoder.max_header_list_size = max_header_list
    return conn


def client_connection(*, initial_window: int, max_header_list: int = 65536) -> H2Connection:
    """A client-side connection (upstream h2/h2c), push disabled."""
    config = H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = H2Connection(config)
    conn.local_settings = Settings(
        client=True,
        initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.INITIAL_WINDOW_SIZE: initial_window,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
        },
    )
    conn.decoder.max_header_list_size = max_header_list
    return conn
