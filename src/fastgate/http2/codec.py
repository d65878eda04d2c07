"""The HTTP/2 codec, behind one module: every other module of fastgate reaches python-hyper's ``h2`` through here.

Why ``h2`` (README, design notes): it is mature and sans-IO, and its flow control is per stream and ours to drive:
inbound window is granted only when we call :func:`H2Connection.acknowledge_received_data`, which fastgate does
as a stream's bytes are written upstream, so a slow upstream slows that stream and not the connection. ``zttp``
(Uvicorn 0.54's ``--http2`` parser) is faster at parsing but alpha, and grants window as soon as data is parsed: its
only backpressure is pausing the whole connection. A replacement codec would offer the names exported here.
"""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
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
from hyperframe.frame import GoAwayFrame

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
    "drain_after_goaway",
    "graceful_goaway",
    "refuse_streams_beyond",
    "server_connection",
]


def _connection(client_side: bool, values: dict[SettingCodes, int], max_header_list: int) -> H2Connection:
    """A connection with ``values`` as the settings we send. Inbound fields are validated by the codec (RFC 9113
    §8.2: uppercase names, connection-specific fields, pseudo-headers, CR/LF/NUL); outbound ones are ours."""
    config = H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    conn = H2Connection(config)
    conn.local_settings = Settings(
        client=client_side, initial_values={**values, SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list}
    )
    conn.decoder.max_header_list_size = max_header_list
    return conn


def server_connection(
    *,
    max_concurrent_streams: int,
    initial_window: int,
    max_header_list: int,
    max_frame: int,
) -> H2Connection:
    """A server-side connection with fastgate's settings (sent by ``initiate_connection``)."""
    values = {
        SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
        SettingCodes.INITIAL_WINDOW_SIZE: initial_window,
        SettingCodes.MAX_FRAME_SIZE: max_frame,
        SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,
    }
    conn = _connection(False, values, max_header_list)
    conn.max_inbound_frame_size = max_frame
    return conn


def client_connection(*, initial_window: int, max_header_list: int = 65536) -> H2Connection:
    """A client-side connection (upstream h2/h2c), push disabled."""
    values = {SettingCodes.ENABLE_PUSH: 0, SettingCodes.INITIAL_WINDOW_SIZE: initial_window}
    return _connection(True, values, max_header_list)


def refuse_streams_beyond(conn: H2Connection, advertised: int) -> None:
    """After ``initiate_connection`` has sent ``advertised`` as SETTINGS_MAX_CONCURRENT_STREAMS, let the codec take
    up to twice as many streams without a connection error, so that the caller can refuse the excess one by one
    with ``REFUSED_STREAM`` (as nginx does) instead of the whole connection going with GOAWAY PROTOCOL_ERROR, which
    would also cut the streams in flight: a client may open streams before our SETTINGS reach it (RFC 9113 §6.5.3).
    The settings object is replaced unsent; every other value stays as sent."""
    values = {SettingCodes(code): conn.local_settings[code] for code in conn.local_settings}
    values[SettingCodes.MAX_CONCURRENT_STREAMS] = min(2 * advertised, 2**31 - 1)
    conn.local_settings = Settings(client=conn.config.client_side, initial_values=values)


def graceful_goaway(last_stream_id: int) -> bytes:
    """A GOAWAY ``NO_ERROR`` frame, to be written by the caller, that leaves the connection open for its streams.

    h2's ``close_connection`` moves its state machine to CLOSED, after which no stream may send again
    (python-hyper/h2#1181, open); RFC 9113 §6.8 lets streams up to ``last_stream_id`` complete after a GOAWAY, which is
    what a graceful shutdown or a reload needs. The caller refuses new streams itself."""
    return GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0).serialize()


def drain_after_goaway(conn: H2Connection) -> None:
    """After the peer's GOAWAY ``NO_ERROR``, let the streams up to its last id finish (RFC 9113 §6.8: "activity on
    streams numbered lower than or equal to the last stream identifier might still complete successfully").

    ``h2`` closes its connection state machine on any GOAWAY received (python-hyper/h2#1181), after which it raises on
    the DATA, HEADERS and WINDOW_UPDATE those streams still need; this puts it back to open, on either side. h2 has no
    public way to do it: this module is the one place that reaches its state machine. The caller opens (client) or
    accepts (server) no new stream on the connection."""
    conn.state_machine.state = ConnectionState.CLIENT_OPEN if conn.config.client_side else ConnectionState.SERVER_OPEN
