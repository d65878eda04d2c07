#!/usr/bin/env python3
"""Where a proxied request's work goes, per component: cProfile of the proxy over a bounded load, grouped by file.

    python bench/request_profile.py                                   # `fastgate proxy` from this interpreter's install
    python bench/request_profile.py --instructions 250000             # scale shares by a bench/instructions.py figure
    python bench/request_profile.py --measure-instructions            # ... measured first, in the same run (callgrind)
    python bench/request_profile.py --cmd "env PYTHONPATH=/other/checkout/src fastgate" --label other
    python bench/request_profile.py --config gateway.json | --arm full   # `fastgate run FILE`, as bench/instructions.py

The upstream and the client are bench/instructions.py's (a fixed 256-byte response; ``--connections`` keep-alive
connections sending GETs one after another), in this process on 127.0.0.1. The proxy runs its own command (a
Python console script such as ``fastgate``, or ``python -m fastgate``) under bench/profile_wrapper.py, which
imports nothing of fastgate and switches cProfile on (SIGUSR1) after ``--warmup`` requests and off (SIGUSR2) after
``--requests`` more, so the stats cover exactly those requests: no start-up, warm-up or shutdown.

Each function's own time (tottime) goes to a component by its source file (the table ``COMPONENTS``): the server
protocol, the exchange core, routing, header rules, the upstream client, observability, plugins and policies,
anyio, the event loop (uvloop and asyncio, and their C methods), httptools (its parser's C methods), other. A C
function other than those (``len``, ``bytes.join``, ``dict.get``...) counts for the component of the Python
function that called it: cProfile records the time per caller. What runs in C outside any Python call (uvloop's
loop between callbacks: epoll, reading sockets, scheduling) is not seen by cProfile; it is the gap between the
process's CPU time over the window and the profile's total, shown as its own row (it counts on the event loop's
side). Calls per request count each call of a Python function, and each resumption of a coroutine, as one.

The estimated instructions per request of a component are its share of the window's CPU time times the total of
bench/instructions.py (``--instructions N`` or ``--measure-instructions``). Read them as an estimate: cProfile adds
a fixed cost to every call it records (about 1 µs here), which inflates components of many small calls (coroutine
resumptions, small helpers) against C code; the CPU time includes the kernel's (system calls), which callgrind
does not count; and only the main thread is profiled (fastgate's request path runs there). For A/B questions
compare instruction totals (bench/instructions.py); use this to see where they go.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import instructions  # bench/instructions.py: the same upstream, client and proxy command

HERE = Path(__file__).resolve().parent
Key = tuple[str, int, str]  # pstats: (file, line, function); C functions have file "~"

# (substring of a normalised source path, component): the first match wins.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("/fastgate/serving/", "server protocol (serving/)"),
    ("/fastgate/routing.py", "routing (routing.py, proxy/paths.py)"),
    ("/fastgate/proxy/paths.py", "routing (routing.py, proxy/paths.py)"),
    ("/fastgate/proxy/headers.py", "header rules (proxy/headers.py)"),
    ("/fastgate/proxy/", "exchange / proxy core (proxy/)"),
    ("/fastgate/upstream/", "upstream client (upstream/)"),
    ("/fastgate/observability/", "observability (observability/)"),
    ("/fastgate/plugins/", "plugins and policies"),
    ("/fastgate/policies/", "plugins and policies"),
    ("/fastgate/", "fastgate, other modules"),
    ("/anyio/", "anyio"),
    ("/uvloop/", "event loop (uvloop, asyncio)"),
    ("/asyncio/", "event loop (uvloop, asyncio)"),
    ("/httptools/", "httptools"),
)
# C functions by the type or module in their name: "<method 'write' of 'uvloop.loop.UVStream' objects>".
C_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("uvloop.", "event loop (uvloop, asyncio)"),
    ("_asyncio.", "event loop (uvloop, asyncio)"),
    ("httptools.", "httptools"),
)
OTHER = "other (stdlib, other packages)"
UNSEEN = "event loop C code outside Python calls (not profiled)"
ORDER = [
    *dict.fromkeys(name for _, name in COMPONENTS),
    OTHER,
    UNSEEN,
]


def component(key: Key) -> str | None:
    """The component of a function; None for a C function that counts for its callers."""
    file, _, name = key
    if file == "~":
        return next((comp for marker, comp in C_COMPONENTS if marker in name), None)
    path = "/" + file.replace(os.sep, "/").lstrip("/")
    return next((comp for marker, comp in COMPONENTS if marker in path), OTHER)


Stats = dict[Key, tuple[int, int, float, float, dict[Key, tuple[int, int, float, float]]]]


@dataclass
class Share:
    seconds: float = 0.0  # own time as profiled
    fixed: float = 0.0  # ... less the profiler's cost (``Overhead``)
    calls: int = 0
    files: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0, 0]))

    def add(self, file: str, seconds: float, fixed: float, calls: int) -> None:
        self.seconds += seconds
        self.fixed += fixed
        self.calls += calls
        entry = self.files[file]
        entry[0], entry[1], entry[2] = entry[0] + seconds, entry[1] + fixed, entry[2] + calls


@dataclass(frozen=True)
class Overhead:
    """Seconds the profiler charges per recorded call, to the callee's own time and to its caller's, by the callee's
    kind ("python", "c"): the wrapper's calibration (an empty function and ``len`` called in a loop) scaled by one
    factor so that the charges of all the window's calls add up to its CPU time less the unprofiled window's (the
    calibration alone, in a tight loop, accounts for about half of it)."""

    callee: dict[str, float]
    caller: dict[str, float]

    @classmethod
    def fit(cls, stats: Stats, calibration: dict[str, float], excess: float) -> Overhead:
        counts = {"python": 0, "c": 0}
        for key, (_, calls, _, _, _) in stats.items():
            counts[_kind(key)] += calls
        modelled = sum(counts[k] * (calibration[f"{k}_callee"] + calibration[f"{k}_caller"]) for k in counts)
        scale = max(0.0, excess / modelled) if modelled else 0.0
        return cls(
            {k: scale * calibration[f"{k}_callee"] for k in counts},
            {k: scale * calibration[f"{k}_caller"] for k in counts},
        )

    def own(self, stats: Stats) -> dict[Key, float]:
        """Each function's own time less its calls' charges and the charges of the calls it made."""
        made: dict[Key, dict[str, int]] = defaultdict(lambda: {"python": 0, "c": 0})
        for key, (_, _, _, _, callers) in stats.items():
            for caller, (calls, _, _, _) in callers.items():
                made[caller][_kind(key)] += calls
        return {
            key: max(
                0.0,
                tottime
                - calls * self.callee[_kind(key)]
                - sum(count * self.caller[kind] for kind, count in made[key].items()),
            )
            for key, (_, calls, tottime, _, _) in stats.items()
        }


def _kind(key: Key) -> str:
    return "c" if key[0] == "~" else "python"


def attribute(stats: Stats, overhead: Overhead) -> tuple[dict[str, Share], dict[Key, float]]:
    """Own time and calls per component (and the corrected own time per function); a C function's go to its
    callers' components (per caller, as cProfile records them)."""
    own = overhead.own(stats)
    shares: dict[str, Share] = defaultdict(Share)
    for key, (_, calls, tottime, _, callers) in stats.items():
        comp = component(key)
        if comp is not None:
            shares[comp].add(key[0], tottime, own[key], calls)
            continue
        recorded = 0.0
        for caller, (caller_calls, _, caller_tottime, _) in callers.items():
            fixed = max(0.0, caller_tottime - caller_calls * overhead.callee["c"])
            shares[component(caller) or OTHER].add(caller[0], caller_tottime, fixed, caller_calls)
            recorded += caller_tottime
        if tottime > recorded:  # called from outside any profiled frame
            shares[OTHER].add("~", tottime - recorded, tottime - recorded, 0)
    return shares, own


def _short(file: str) -> str:
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1] if marker != "/lib/python3" else "python3" + file.split(marker, 1)[1]
    return file


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def _wrapped(command: list[str]) -> list[str]:
    """``command`` (a Python console script, or an interpreter with ``-m module``) run under profile_wrapper.py."""
    wrapper = str(HERE / "profile_wrapper.py")
    head = command[0] if os.sep in command[0] else shutil.which(command[0]) or command[0]
    if Path(head).name.startswith("python") and len(command) > 2 and command[1] == "-m":
        return [head, wrapper, *command[1:]]
    try:
        with open(head, "rb") as script:
            shebang = script.readline()
    except OSError as exc:
        raise SystemExit(f"cannot read {head}: {exc}") from exc
    if not shebang.startswith(b"#!") or b"python" not in shebang:
        raise SystemExit(f"{head} is not a Python script; give --cmd a console script or `python -m fastgate`")
    return [*shebang[2:].decode().split(), wrapper, head, *command[1:]]


async def _signal_and_wait(proc: subprocess.Popen[bytes], signum: int, mark: Path, timeout_s: float) -> None:
    os.kill(proc.pid, signum)
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(mark.exists):
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy did not answer signal {signum} within {timeout_s:.0f} s")
        await asyncio.sleep(0.05)


PER_CONNECTION = 500  # requests per connection of one load: below fastgate's max_requests_per_connection (1000)


async def _load(args: argparse.Namespace, port: int, requests: int, path: bytes) -> None:
    """``requests`` requests in rounds of fresh connections (instructions.py's client does not reconnect)."""
    async with asyncio.timeout(args.load_timeout):
        while requests > 0:
            batch = min(requests, args.connections * PER_CONNECTION)
            await instructions._load(port, args.connections, batch, path)
            requests -= batch


async def _window(
    proc: subprocess.Popen[bytes], args: argparse.Namespace, port: int, path: bytes
) -> tuple[float, float, float]:
    """``args.requests`` requests: (seconds, the proxy's user and system CPU seconds)."""
    (user, system), started = _cpu_seconds(proc.pid), time.monotonic()
    await _load(args, port, args.requests, path)
    after = _cpu_seconds(proc.pid)
    return time.monotonic() - started, after[0] - user, after[1] - system


async def _drive(
    args: argparse.Namespace, upstreams: list[socket.socket], port: int, proc: subprocess.Popen[bytes], mark: Path
) -> tuple[float, float, float, float]:
    """Warm up, run ``args.requests`` requests without the profiler, then as many with it: (seconds and CPU seconds
    of the profiled window, user and system CPU seconds of the other)."""
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(instructions._Upstream, sock=upstream) for upstream in upstreams]
    path = args.path.encode()
    try:
        await instructions._wait_ready(port, proc, path, args.start_timeout)
        await _load(args, port, args.warmup, path)
        _, plain_user, plain_system = await _window(proc, args, port, path)
        await _signal_and_wait(proc, signal.SIGUSR1, Path(f"{mark}.on"), 30)
        elapsed, user, system = await _window(proc, args, port, path)
        await _signal_and_wait(proc, signal.SIGUSR2, Path(f"{mark}.done"), 120)
        return elapsed, user + system, plain_user, plain_system
    finally:
        for server in servers:
            server.close()


@dataclass(frozen=True)
class Run:
    stats: pstats.Stats
    elapsed: float  # seconds of the profiled window
    cpu: float  # the proxy's CPU seconds in it
    plain_cpu: float  # ... in the window before, without the profiler
    plain_system: float  # ... of which the kernel's
    calibration: dict[str, float]  # profile_wrapper.calibrate()
    command: str


def profile(args: argparse.Namespace, directory: Path) -> Run:
    """Run the proxy under the wrapper and profile it."""
    upstreams = [socket.socket(), socket.socket()]
    for upstream in upstreams:
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(128)
    port = args.port or instructions._free_port()
    command, environment = instructions._proxy_command(args, port, [u.getsockname()[1] for u in upstreams])
    out, mark = directory / "proxy.pstats", directory / "mark"
    environment.update(PROFILE_OUT=str(out), PROFILE_MARK=str(mark), PROFILE_TIMER=args.timer)
    pin = ["taskset", "-c", args.cpu] if args.cpu and shutil.which("taskset") else []
    with (directory / "proxy.log").open("wb") as log:
        proc = subprocess.Popen(
            [*pin, *_wrapped(command)], stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
    try:
        elapsed, cpu, plain_user, plain_system = asyncio.run(_drive(args, upstreams, port, proc, mark))
    except RuntimeError as exc:
        tail = (directory / "proxy.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"{exc}; proxy log: {' | '.join(tail)}") from exc
    finally:
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        for upstream in upstreams:
            upstream.close()
    calibration = json.loads(Path(f"{out}.calibration.json").read_text())
    stats = pstats.Stats(str(out))
    return Run(stats, elapsed, cpu, plain_user + plain_system, plain_system, calibration, " ".join(command))


def self_costs(text: str) -> dict[tuple[str, str], int]:
    """Own instructions per (object file, function) of a callgrind dump (``--dump-instr=no``): every cost line counts
    for the current ``ob=``/``fn=`` except the one after ``calls=`` (the inclusive cost of that call)."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}

    def resolve(kind: str, spec: str) -> str:  # "(7) name" defines id 7, "(7)" uses it; each kind has its own ids
        match = re.match(r"\((\d+)\)(?: (.*))?$", spec)
        if match is None:
            return spec
        if match.group(2) is not None:
            names[kind][match.group(1)] = match.group(2)
        return names[kind].get(match.group(1), "???")

    costs: dict[tuple[str, str], int] = defaultdict(int)
    ob, fn, after_calls = "???", "???", False
    for line in text.splitlines():
        if not line:
            continue
        if line[0].isdigit() or line[0] in "+-*":
            parts = line.split()
            if not after_calls and len(parts) > 1:
                costs[ob, fn] += int(parts[1])
            after_calls = False
        elif line.startswith(("ob=", "cob=")):
            name = resolve("ob", line.split("=", 1)[1])
            ob = name if line[0] == "o" else ob
        elif line.startswith(("fn=", "cfn=")):
            name = resolve("fn", line.split("=", 1)[1])
            fn = name if line[0] == "f" else fn
        elif line.startswith("calls="):
            after_calls = True
    return costs


def _object(path: str) -> str:
    name = Path(path).name
    for marker, label in (("/uvloop/", "uvloop"), ("/httptools/", "httptools")):
        if marker in path:
            return f"{label} ({name})"
    if name.startswith(("libpython", "python")):
        return f"the interpreter ({name})"
    return name


def count_instructions(args: argparse.Namespace) -> tuple[int, dict[tuple[str, str], int]]:
    """bench/instructions.py's count, keeping callgrind's dump: (instructions per request, own instructions per
    (object, function) over the counted requests)."""
    counted = argparse.Namespace(
        **{**vars(args), "requests": args.instructions_requests, "warmup": 500, "start_timeout": 180}
    )
    upstreams, port, proc, directory, _ = instructions.start_under_callgrind(counted)
    try:
        total, _ = asyncio.run(instructions._drive(counted, upstreams, port, proc, directory))
        dumps = [path for path in directory.glob(f"cg.{proc.pid}*") if re.search(r"^totals: ", path.read_text(), re.M)]
        costs = self_costs(dumps[0].read_text()) if len(dumps) == 1 else {}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for upstream in upstreams:
            upstream.close()
        shutil.rmtree(directory, ignore_errors=True)
    return round(total / counted.requests), costs


def objects_report(args: argparse.Namespace, costs: dict[tuple[str, str], int], per_request: int) -> str:
    """Shares of the dump's cost lines, in instructions per request of its summary: the lines add up to its
    ``totals:`` line, which after ``callgrind_control -z`` exceeds the ``summary:`` (the count bench/instructions.py
    gives) by some 10% here, in the main thread alone; the table scales them to the summary."""
    total = sum(costs.values()) or 1
    n = total / per_request  # requests' worth of cost lines
    excess = 100 * total / (per_request * args.instructions_requests) - 100
    by_object: dict[str, int] = defaultdict(int)
    for (ob, _), cost in costs.items():
        by_object[_object(ob)] += cost
    lines = [
        f"Instructions per request by object file (callgrind over {args.instructions_requests:,} requests, user "
        f"space): shares of the dump's cost lines, which add up to {excess:+.0f}% of its summary, scaled to the "
        f"summary's {per_request:,} per request:",
        "",
        "| object | instructions/req | % |",
        "|---|---:|---:|",
    ]
    for name, cost in sorted(by_object.items(), key=lambda item: -item[1]):
        if cost * 200 >= total:
            lines.append(f"| {name} | {cost / n:,.0f} | {100 * cost / total:.1f} |")
    rest = sum(cost for cost in by_object.values() if cost * 200 < total)
    lines.append(f"| other objects (each < 0.5%) | {rest / n:,.0f} | {100 * rest / total:.1f} |")
    lines += [
        "",
        f"Top {args.top} C functions by own instructions (the interpreter's include running all Python code):",
        "",
        "| function | object | instructions/req | % |",
        "|---|---|---:|---:|",
    ]
    for (ob, fn), cost in sorted(costs.items(), key=lambda item: -item[1])[: args.top]:
        lines.append(f"| `{fn}` | {_object(ob)} | {cost / n:,.0f} | {100 * cost / total:.1f} |")
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace, run: Run, total: int | None) -> str:
    raw: Stats = run.stats.stats  # type: ignore[attr-defined]  # pstats' table, as its own methods read it
    n = args.requests
    profiled = sum(tottime for _, _, tottime, _, _ in raw.values())
    overhead = Overhead.fit(raw, run.calibration, max(run.cpu, profiled) - run.plain_cpu)
    shares, own = attribute(raw, overhead)
    unseen = max(0.0, run.cpu - profiled)  # the CPU clock ticks at 1/100 s
    shares[UNSEEN].add("~", unseen, unseen, 0)
    calls = sum(share.calls for share in shares.values())
    basis = sum(share.fixed for share in shares.values()) or 1.0

    def est(seconds: float) -> str:  # corrected seconds of the window -> instructions per request
        return f"{seconds / basis * total:,.0f}" if total else "–"

    def us(seconds: float) -> str:
        return f"{seconds * 1e6 / n:.1f}"

    lines = [
        f"`{run.command}`: {n:,} requests on {args.connections} connections after {args.warmup:,} of warm-up, then "
        f"{n:,} profiled ({args.timer} timer). Proxy CPU per request: {run.plain_cpu * 1e6 / n:,.0f} µs unprofiled "
        f"({100 * run.plain_system / max(run.plain_cpu, 1e-9):.0f}% of it in the kernel), "
        f"{run.cpu * 1e6 / n:,.0f} µs profiled ({n / run.elapsed:,.0f} req/s), {calls / n:,.1f} recorded calls per "
        f"request. Corrected = own time less the profiler's charges ({overhead.callee['python'] * 1e6:.2f} + "
        f"{overhead.caller['python'] * 1e6:.2f} µs per Python call, {overhead.callee['c'] * 1e6:.2f} + "
        f"{overhead.caller['c'] * 1e6:.2f} µs per C call, callee + caller); its total is "
        f"{basis * 1e6 / n:,.0f} µs per request"
        + (f"; instructions per request (bench/instructions.py): {total:,}." if total else "."),
        "",
        "| component | µs/req profiled | calls/req | µs/req corrected | % corrected | est. instructions/req |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ORDER + sorted(set(shares) - set(ORDER)):
        share = shares.get(name)
        if share is None or (share.seconds <= 0 and not share.calls):
            continue
        lines.append(
            f"| {name} | {us(share.seconds)} | {share.calls / n:.1f} | {us(share.fixed)} | "
            f"{100 * share.fixed / basis:.1f} | {est(share.fixed)} |"
        )
    lines.append(
        f"| **total** | {us(sum(x.seconds for x in shares.values()))} | {calls / n:.1f} | {us(basis)} | 100.0 | "
        f"{est(basis)} |"
    )

    files: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for share in shares.values():
        for file, values in share.files.items():
            if "/fastgate/" in file.replace(os.sep, "/"):
                files[file] = [a + b for a, b in zip(files[file], values, strict=True)]
    lines += [
        "",
        f"fastgate's files by own time (with the C functions they call), top {args.top_files}:",
        "",
        "| file | µs/req profiled | calls/req | µs/req corrected | % corrected | est. instructions/req |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for file, (seconds, fixed, count) in sorted(files.items(), key=lambda item: -item[1][1])[: args.top_files]:
        lines.append(
            f"| {_short(file)} | {us(seconds)} | {count / n:.1f} | {us(fixed)} | {100 * fixed / basis:.1f} | "
            f"{est(fixed)} |"
        )

    lines += [
        "",
        f"Top {args.top} functions by corrected own time (C functions as cProfile names them; in the tables above "
        "they count for their callers' component):",
        "",
        "| function | component | calls/req | µs/call profiled | µs/req corrected | % corrected | est. instr./req |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(raw, key=lambda k: -own[k])[: args.top]:
        file, line, name = key
        _, count, tottime, _, _ = raw[key]
        where = name if file == "~" else f"{_short(file)}:{line}({name})"
        lines.append(
            f"| `{where}` | {component(key) or '(callers)'} | {count / n:.2f} | {tottime * 1e6 / max(count, 1):.2f} | "
            f"{us(own[key])} | {100 * own[key] / basis:.1f} | {est(own[key])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    instructions.proxy_arguments(p, warmup=1000, requests=20000, start_timeout=60)
    p.add_argument("--load-timeout", type=float, default=300, help="bound on each load's seconds")
    p.add_argument("--size", type=int, default=256, help="response body bytes (default 256)")
    p.add_argument("--timer", choices=("cpu", "wall"), default="cpu", help="cProfile's clock (default: CPU time)")
    p.add_argument("--instructions", type=int, help="instructions per request (bench/instructions.py) to apportion")
    p.add_argument("--measure-instructions", action="store_true", help="run bench/instructions.py first for them")
    p.add_argument("--instructions-requests", type=int, default=3000, help="requests counted under callgrind")
    p.add_argument("--keep-stats", help="copy the proxy's pstats file here (for pstats / snakeviz)")
    p.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    p.add_argument("--top-files", type=int, default=15, help="fastgate files listed (default 15)")
    p.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    args = p.parse_args()
    if args.requests <= 0 or args.warmup < 0 or args.connections <= 0:
        sys.exit("--requests and --connections must be positive, --warmup not negative")
    instructions.RESPONSE = instructions.response(args.size)
    total: int | None = args.instructions
    costs: dict[tuple[str, str], int] = {}
    if args.measure_instructions:
        if shutil.which("valgrind") is None:
            sys.exit("--measure-instructions needs valgrind (apt-get install valgrind)")
        total, costs = count_instructions(args)
        print(f"{args.label}: {total:,} instructions per request (callgrind)", file=sys.stderr)
    directory = Path(tempfile.mkdtemp(prefix="fastgate-profile-"))
    try:
        run = profile(args, directory)
        if args.keep_stats:
            shutil.copyfile(directory / "proxy.pstats", args.keep_stats)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    text = report(args, run, total) + ("\n" + objects_report(args, costs, total) if costs and total else "")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")  # as bench/instructions.py: the proxy inherits it
    main()
