"""Leak soak, short form: a mixed load with a third of the clients aborting and a flapping upstream, then the
gateway's descriptors, threads, sockets and memory are back at their baseline and its log holds no traceback.

The gateway is ``fastgate run CONFIG`` as a real subprocess; the load, the flapping upstream and the figures are in
tests/hostile/soak_load.py (bench/soak.py runs the same for minutes). About 35 s here: 6 s of warm-up, 18 s of
load, then the settling (keepalive_expiry 1.5 s). The figures go to stdout and to ``build/soak.md``.

Tolerances, against the baseline taken after the warm-up, once settled:

* descriptors: + 3. The listener, the epoll and the pipes do not move; a client socket in lingering close or an
  upstream socket not yet swept would be one each, and must be gone by then too.
* threads: + 2. The gateway runs one event loop; the default executor (getaddrinfo, file reads) may start a thread
  it did not need during the warm-up.
* RSS: + 8 MiB. CPython keeps freed arenas and the allocator its free lists, so RSS does not shrink back after a
  peak; the warm-up runs the same load to reach that working size first. A leak of one buffer per aborted
  request (~3,000 of them, 64 KiB to 1 MiB each) is far above that.
* sockets: 0 to the clients and 0 to either upstream once ``keepalive_expiry`` has passed; at most
  ``max_keepalive_connections`` per upstream before.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from tests.hostile.soak_load import FD_SLACK, MAX_KEEPALIVE, MIB, RSS_SLACK, THREAD_SLACK, SoakReport, run_soak

pytestmark = pytest.mark.anyio

REPORT = Path(__file__).resolve().parents[2] / "build" / "soak.md"
WARMUP = float(os.environ.get("FASTGATE_SOAK_WARMUP", "6"))
DURATION = float(os.environ.get("FASTGATE_SOAK_SECONDS", "18"))
CLIENTS = 16


async def test_soak_with_aborting_clients_and_a_flapping_upstream_leaks_nothing(tmp_path: Path) -> None:
    with anyio.fail_after(WARMUP + DURATION + 60):
        report: SoakReport = await run_soak(tmp_path, duration=DURATION, warmup=WARMUP, clients=CLIENTS, seed=20250)
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(report.markdown("Leak soak (tests/hostile/test_soak.py)"))
    print("\n" + report.table())
    print(f"{report.load.requests} requests, {report.load.aborted} aborted; log: {report.log_problems or 'clean'}")

    base, after, settled = report.baseline, report.after_load, report.settled
    load = report.load
    assert load.requests >= 300, f"only {load.requests} requests in {DURATION} s: the load did not run"
    assert load.aborted >= load.requests // 5, f"only {load.aborted} of {load.requests} requests were aborted"
    flapped = {k.split(": ", 1)[1] for k in load.outcomes if k.startswith("flap-")}
    assert "200" in flapped and flapped & {"502", "504", "closed by gateway"}, f"the upstream did not flap: {flapped}"
    assert not load.failures, f"well-behaved requests to the normal upstream failed: {load.failures[:10]}"
    assert not report.log_problems, "\n".join(report.log_problems[:20])

    assert after.main_sockets <= MAX_KEEPALIVE + CLIENTS and after.flap_sockets <= MAX_KEEPALIVE + CLIENTS
    assert settled.client_sockets == 0, f"client sockets left: {settled}"
    assert settled.main_sockets == 0, f"connections to the normal upstream outlived keepalive_expiry: {settled}"
    assert settled.flap_sockets == 0, f"connections to the flapping upstream outlived keepalive_expiry: {settled}"
    assert settled.fds <= base.fds + FD_SLACK, f"descriptors: {base.fds} before, {settled.fds} after"
    assert settled.threads <= base.threads + THREAD_SLACK, f"threads: {base.threads} before, {settled.threads} after"
    assert settled.rss <= base.rss + RSS_SLACK, (
        f"RSS: {base.rss / MIB:.1f} MiB before, {settled.rss / MIB:.1f} MiB after (allowed + {RSS_SLACK // MIB})"
    )
