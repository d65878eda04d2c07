"""Which connection takes the next stream, when to open another, and what a GOAWAY or a reset leaves safe to retry.

Pure: plain numbers in, decisions out, no sockets and no clock (``tests/upstream/test_h2_admission.py``).

How this works
--------------
A connection takes streams up to its *limit*, the smaller of the peer's ``SETTINGS_MAX_CONCURRENT_STREAMS`` and our
``http2.max_concurrent_streams``. A new stream goes on the first connection that is not draining (no GOAWAY seen)
and has room (first fit: streams pack onto the oldest connections, so the others fall idle and can be let go). Only
when none has room is another connection opened, within ``limits.max_connections``, and only if the connections
already being opened cannot take the demand: a burst of requests at a cold start shares one new connection instead
of opening one each (a connection being opened is counted as ``local_limit`` streams, what it will take at most).

A GOAWAY names the last stream the server may have processed (RFC 9113 §6.8): streams above it were never looked
at, so they are failed as safe to send again, whatever their method; streams at or below it run on. A stream
reset with ``REFUSED_STREAM`` (§8.7) was not processed either; any other reset may have been.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

REFUSED_STREAM = 0x7  # RFC 9113 §7


class StreamSlots(Protocol):
    """What admission reads of a connection."""

    @property
    def draining(self) -> bool: ...

    @property
    def in_use(self) -> int:
        """Streams open or promised (admitted but not yet opened)."""
        ...

    @property
    def limit(self) -> int: ...


def stream_limit(peer_max: int | None, local_max: int) -> int:
    """The streams one connection may carry: the peer's limit (None: it set none, unlimited) and ours."""
    return local_max if peer_max is None else max(0, min(peer_max, local_max))


def pick_connection(connections: Sequence[StreamSlots]) -> int | None:
    """The index of the first connection able to take another stream, or None."""
    for index, conn in enumerate(connections):
        if not conn.draining and conn.in_use < conn.limit:
            return index
    return None


def should_open(*, open_connections: int, connecting: int, demand: int, local_limit: int, max_connections: int) -> bool:
    """Whether to open one more connection for ``demand`` streams that found no room (the caller included)."""
    if open_connections + connecting >= max_connections:
        return False
    return demand > connecting * local_limit


def refused_by_goaway(stream_ids: Iterable[int], last_stream_id: int) -> list[int]:
    """The streams a GOAWAY with ``last_stream_id`` says were never processed (safe to send again)."""
    return sorted(sid for sid in stream_ids if sid > last_stream_id)


def reset_is_retry_safe(error_code: int) -> bool:
    """Whether a stream reset by the peer with ``error_code`` was left unprocessed (only REFUSED_STREAM says so)."""
    return error_code == REFUSED_STREAM
