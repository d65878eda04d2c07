"""Run a Python console script (or ``-m module``) with cProfile switched on and off by signals: the helper of
bench/request_profile.py, started as ``python profile_wrapper.py SCRIPT ARGS...`` or
``python profile_wrapper.py -m MODULE ARGS...``. It first writes ``calibrate()``'s figures to
``$PROFILE_OUT.calibration.json``.

SIGUSR1 starts profiling the main thread (and touches ``$PROFILE_MARK.on``), SIGUSR2 stops it and writes the stats
to ``$PROFILE_OUT`` (then touches ``$PROFILE_MARK.done``): the window between them is the measured load, without
start-up, warm-up or shutdown. The handlers run in the main thread, where the proxy's event loop runs. Nothing of
the program is imported here: it runs as its console script would run it.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import runpy
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType


def _empty() -> None:
    pass


def _python_calls(n: int) -> None:
    for _ in range(n):
        _empty()


def _c_calls(n: int, x: tuple[()] = ()) -> None:
    for _ in range(n):
        len(x)


def calibrate(timer: Callable[[], float] | None, n: int = 200_000, rounds: int = 5) -> dict[str, float]:
    """What the profiler charges per call of a Python function and of a C one, to the callee's own time and to the
    caller's (seconds): the profiled own times of an empty function and its caller, less the caller's plain time."""
    out: dict[str, float] = {}
    for kind, caller, callee in (("python", _python_calls, _empty), ("c", _c_calls, len)):
        plain, callee_own, caller_own = [], [], []
        for _ in range(rounds):
            started = time.process_time()
            caller(n)
            plain.append((time.process_time() - started) / n)
            profiler = cProfile.Profile(timer) if timer is not None else cProfile.Profile()
            profiler.runcall(caller, n)
            stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
            for key, (_, _, tottime, _, _) in stats.items():
                if key[2] == caller.__name__:
                    caller_own.append(tottime / n)
                elif key[2] == getattr(callee, "__name__", "") or "len" in key[2]:
                    callee_own.append(tottime / n)
        out[f"{kind}_callee"] = min(callee_own)
        out[f"{kind}_caller"] = max(0.0, min(caller_own) - min(plain))
    return out


def main() -> None:
    out, mark = Path(os.environ["PROFILE_OUT"]), os.environ["PROFILE_MARK"]
    # cpu: the process's CPU time (time the machine's other work takes from it is not counted); wall: cProfile's own
    timer = time.process_time if os.environ.get("PROFILE_TIMER") == "cpu" else None
    profiler = cProfile.Profile(timer) if timer is not None else cProfile.Profile()
    Path(f"{out}.calibration.json").write_text(json.dumps(calibrate(timer)))

    def start(signum: int, frame: FrameType | None) -> None:
        profiler.enable()
        Path(mark + ".on").touch()

    def stop(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(out)
        Path(mark + ".done").touch()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    if len(sys.argv) > 2 and sys.argv[1] == "-m":
        sys.argv = [sys.argv[2], *sys.argv[3:]]
        sys.path[0] = os.getcwd()  # as `python -m` sets it (not this file's directory)
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        sys.path[0] = str(Path(sys.argv[0]).resolve().parent)  # as `python SCRIPT` sets it
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
