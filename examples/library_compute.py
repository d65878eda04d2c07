"""A long computation protected by ``cancel_on_disconnect``: when the client leaves, the work stops at the next
chunk instead of running to the end for nobody.

    python examples/library_compute.py --port 8000
    curl 'http://127.0.0.1:8000/primes?below=1000000'       # {"below": 1000000, "primes": 78498, ...}
    curl -m 1 'http://127.0.0.1:8000/primes?below=10000000000'   # gives up after 1 s; so does the server
    curl http://127.0.0.1:8000/stats                         # {"started": 2, "finished": 1, "cancelled": 1, ...}

The counting runs in worker threads one chunk at a time (the event loop stays free); a thread cannot be interrupted,
so cancellation takes effect when the current chunk ends.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

import anyio
import uvicorn
from fastapi import FastAPI, Query

from fastgate import cancel_on_disconnect

CHUNK = 2_000_000


@dataclass
class Stats:
    started: int = 0
    finished: int = 0
    cancelled: int = 0
    chunks: int = 0


def count_primes(lo: int, hi: int) -> int:
    """Primes in [lo, hi), by a segmented sieve."""
    lo = max(lo, 2)
    if hi <= lo:
        return 0
    limit = math.isqrt(hi - 1)
    base = bytearray([1]) * (limit + 1)
    base[:2] = b"\0\0"
    for i in range(2, math.isqrt(limit) + 1):
        if base[i]:
            base[i * i :: i] = bytes(len(range(i * i, limit + 1, i)))
    segment = bytearray([1]) * (hi - lo)
    for p in (i for i, flag in enumerate(base) if flag):
        start = max(p * p, (lo + p - 1) // p * p)
        segment[start - lo :: p] = bytes(len(range(start, hi, p)))
    return sum(segment)


def build_app(chunk: int = CHUNK) -> FastAPI:
    app = FastAPI()
    stats = app.state.stats = Stats()

    @app.get("/primes")
    @cancel_on_disconnect
    async def primes(below: int = Query(gt=1, le=10**12)) -> dict[str, int]:
        stats.started += 1
        total = 0
        try:
            for lo in range(0, below, chunk):
                total += await anyio.to_thread.run_sync(count_primes, lo, min(lo + chunk, below))
                stats.chunks += 1
        except anyio.get_cancelled_exc_class():
            stats.cancelled += 1
            raise
        stats.finished += 1
        return {"below": below, "primes": total}

    @app.get("/stats")
    async def get_stats() -> dict[str, int]:
        return asdict(stats)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
