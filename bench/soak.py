"""Leak soak, long form: tests/hostile/test_soak.py's load for minutes, with the gateway's figures over time.

    venv/bin/python bench/soak.py                         # 10 s warm-up, 3 minutes of load
    venv/bin/python bench/soak.py --duration 600 --clients 32

``fastgate run`` as a subprocess in front of a normal upstream (tests/upstream_app.py) and a flapping one (up,
reset, stall, down, every 1.5 s); clients in this process, a third of the requests aborted at a random moment.
Prints the before/after table and writes it, with the outcomes and a timeline sampled every ``--sample`` seconds,
to ``--out`` (default build/soak-bench.md). Exits 1 when a figure is not back within its tolerance or the log holds
a ``Traceback``, ``LocalProtocolError`` or ``Exception in ASGI``. Everything is on 127.0.0.1; the run is bounded
by ``--duration`` plus about a minute of warm-up and settling.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hostile.soak_load import SoakReport, run_soak  # noqa: E402
from tests.hostile.support import raise_fd_limit  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=180, help="seconds of load (default 180)")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of the same load before the baseline")
    parser.add_argument("--clients", type=int, default=16, help="concurrent client connections (default 16)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample", type=float, default=5, help="seconds between samples of the figures")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "soak-bench.md")
    args = parser.parse_args()
    raise_fd_limit(4096)

    async def soak() -> SoakReport:
        with tempfile.TemporaryDirectory(prefix="fastgate-soak-") as tmp:
            return await run_soak(
                Path(tmp),
                duration=args.duration,
                warmup=args.warmup,
                clients=args.clients,
                seed=args.seed,
                sample_every=args.sample,
            )

    report = anyio.run(soak, backend="asyncio", backend_options={"use_uvloop": True})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.markdown(f"Leak soak (bench/soak.py, {args.duration:.0f} s)"))
    print(report.table())
    print(f"\n{report.load.requests} requests, {report.load.aborted} aborted by the client; full report: {args.out}")
    problems = report.problems()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("verdict:", "leaks or errors found" if problems else "back at the baseline, clean log")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
