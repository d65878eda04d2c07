"""What an HTTP/2 client may do for free, counted: pure policy (no I/O), tested without sockets.

HTTP/2 lets a client make the server work with frames that cost the client nothing: a stream opened and reset at
once (rapid reset, CVE-2023-44487), PING and SETTINGS frames the server must acknowledge (CVE-2019-9512, -9515),
DATA frames with nothing in them (CVE-2019-9518) and PRIORITY frames (CVE-2019-9513), each parsed and dispatched
at a cost in CPU while serving nothing.
``http2/server.py`` asks these counters at each such frame and, when one says no, tells the client ``GOAWAY``
``ENHANCE_YOUR_CALM`` and closes the connection.

* :class:`ResetGuard`, Envoy's rule for premature resets: a connection is closed once it has opened at least
  ``min_streams`` streams and more than ``ratio`` of them were reset by the client before their response was
  complete. A client that cancels now and then never comes near it; one that opens and resets in a loop trips it
  after ``min_streams`` streams, whatever its rate.
* :class:`TokenBucket`: at most ``burst`` frames at once and ``rate`` a second after that (PING, SETTINGS).
* :class:`EmptyFrameGuard`, Envoy's ``max_consecutive_inbound_frames_with_empty_payload`` (default 1): more than
  ``limit`` DATA frames in a row with an empty payload and no END_STREAM.
* :class:`PriorityGuard`, Envoy's ``max_inbound_priority_frames_per_stream`` (default 100): more PRIORITY frames
  over the connection's life than ``per_stream`` times one more than the streams it opened.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ResetGuard:
    """Counts the streams a connection opened and those its client reset before their response was complete.

    >>> guard = ResetGuard(min_streams=4)
    >>> [guard.opened() or guard.reset() for _ in range(3)]
    [False, False, False]
    >>> guard.opened(); guard.reset()
    True
    """

    min_streams: int = 100
    ratio: float = 0.5
    streams: int = 0
    resets: int = 0

    def opened(self) -> None:
        self.streams += 1

    def reset(self) -> bool:
        """A client reset a stream before its response was complete; True: the connection must be closed."""
        self.resets += 1
        return self.streams >= self.min_streams and self.resets > self.ratio * self.streams


@dataclass(slots=True)
class TokenBucket:
    """At most ``burst`` events at once, refilled at ``rate`` a second.

    >>> bucket = TokenBucket(rate=1.0, burst=2.0)
    >>> [bucket.take(0.0) for _ in range(3)]
    [True, True, False]
    >>> bucket.take(1.0)
    True
    """

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = 0.0

    def take(self, now: float) -> bool:
        """One event at loop time ``now``: False when the bucket is empty (the client is over its allowance)."""
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(slots=True)
class EmptyFrameGuard:
    """Counts DATA frames in a row that carry no payload and do not end their stream; any other DATA frame ends
    the run.

    >>> guard = EmptyFrameGuard(limit=1)
    >>> guard.data(empty=True), guard.data(empty=False), guard.data(empty=True), guard.data(empty=True)
    (False, False, False, True)
    """

    limit: int = 1
    run: int = 0

    def data(self, empty: bool) -> bool:
        """One DATA frame (``empty``: no payload and no END_STREAM); True: the connection must be closed."""
        if not empty:
            self.run = 0
            return False
        self.run += 1
        return self.run > self.limit


@dataclass(slots=True)
class PriorityGuard:
    """Counts the PRIORITY frames of a connection against its streams (a priority sent with a request's HEADERS is
    part of that request and is not counted).

    >>> guard = PriorityGuard(per_stream=2)
    >>> [guard.priority(opened=0) for _ in range(3)]
    [False, False, True]
    """

    per_stream: int = 100
    frames: int = 0

    def priority(self, opened: int) -> bool:
        """One PRIORITY frame on a connection that has opened ``opened`` streams; True: it must be closed."""
        self.frames += 1
        return self.frames > self.per_stream * (1 + opened)
