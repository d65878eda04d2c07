"""What an HTTP/2 client may do for free, counted: pure policy (no I/O), tested without sockets.

HTTP/2 lets a client make the server work with frames that cost the client nothing: a stream opened and reset at
once (rapid reset, CVE-2023-44487), PING and SETTINGS frames the server must acknowledge (CVE-2019-9512, -9515).
``http2/server.py`` asks these counters at each such frame and, when one says no, tells the client ``GOAWAY``
``ENHANCE_YOUR_CALM`` and closes the connection.

* :class:`ResetGuard`, Envoy's rule for premature resets: a connection is closed once it has opened at least
  ``min_streams`` streams and more than ``ratio`` of them were reset by the client before their response was
  complete. A client that cancels now and then never comes near it; one that opens and resets in a loop trips it
  after ``min_streams`` streams, whatever its rate.
* :class:`TokenBucket`: at most ``burst`` frames at once and ``rate`` a second after that (PING, SETTINGS).
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
