"""The listening sockets of ``--workers N``: one ``SO_REUSEPORT`` listener per worker where the kernel balances them.

>>> sockets = worker_listeners("127.0.0.1", 0, workers=2)  # doctest: +SKIP
>>> {sock.getsockname()[1] for sock in sockets}  # one port, chosen once  # doctest: +SKIP
{41237}

One socket shared by every worker lets whichever worker wakes first accept the whole queue (fastgate's accept loop
drains it in one turn, serving/accept.py), so one worker can take a burst while another idles. With
``SO_REUSEPORT`` on Linux each worker gets a listener of its own on the same address and the kernel spreads new
connections across them by a hash of the connection's addresses (nginx's ``listen ... reuseport``, Envoy's
per-worker listeners). The manager binds all of them before any worker starts (so ``port: 0`` is picked once, by
the first bind, and the rest join it), keeps them open, and hands socket *i* to worker *i* and to whatever worker
replaces it: connections the kernel queued on a dead worker's socket wait for its replacement instead of being
reset.

Elsewhere (macOS and the BSDs accept ``SO_REUSEPORT`` but do not balance with it; Windows has none) the workers
share one socket, and each accepts at most :data:`SHARED_ACCEPT_BATCH` connections per loop turn beyond the one
its event loop accepts (``FASTGATE_SHARED_LISTENER`` tells serving/accept.py so).

``SO_REUSEPORT`` lets any process of the same user bind the same address and take a share of its connections;
the kernel refuses processes of other users. Run the gateway as a user of its own (docs/operations.md).
"""

from __future__ import annotations

import socket
import sys

__all__ = [
    "SHARED_ACCEPT_BATCH",
    "SHARED_LISTENER_ENV",
    "balanced_reuse_port",
    "reuse_port_listener",
    "worker_listeners",
]

SHARED_LISTENER_ENV = "FASTGATE_SHARED_LISTENER"
SHARED_ACCEPT_BATCH = 4


def balanced_reuse_port() -> bool:
    """Whether ``SO_REUSEPORT`` listeners on one address share its connections out (Linux 3.9 and later)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def reuse_port_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT`` (not yet listening: the worker's loop does that)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host.strip("[]"), port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def worker_listeners(host: str, port: int, workers: int) -> list[socket.socket]:
    """``workers`` listeners on one address; the first bind picks the port when ``port`` is 0. Raises OSError."""
    first = reuse_port_listener(host, port)
    sockets = [first]
    try:
        bound = first.getsockname()[1]
        while len(sockets) < workers:
            sockets.append(reuse_port_listener(host, bound))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
