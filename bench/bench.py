"""fastgate benchmark: proxies side by side with nginx and direct-to-upstream, on pinned cores, 127.0.0.1 only.

    bench/run.sh                # installs what it needs, then runs this with the same arguments
    python bench/bench.py --quick --proxies direct,nginx,aiohttp

Upstream nginx (1 worker) and wrk run on CPU 0; the proxy under test runs on CPU 1. Each (round, scenario, proxy)
starts a fresh proxy, measures its idle RSS, warms it up, then runs one bounded wrk load while sampling the RSS of
the proxy's process tree. Rounds interleave every proxy per scenario; medians and within-round ratios are reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
import timeit
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import features
import harness
import report
from harness import LARGE, OPTIONAL_PROXIES, PROXIES, Procs, Skipped, Unavailable
from report import Run


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    path: str
    connections: int
    unit: str  # req/s or MB/s
    timeout_s: float
    body_bytes: int = 0


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("S1", "GET 256 B, 64 conns", "/256b", 64, "req/s", 2),
        Scenario("S2", "GET 64 MiB, 4 conns", "/64m", 4, "MB/s", 10),
        Scenario("S3", "POST 64 MiB, 4 conns", "/upload", 4, "MB/s", 10, body_bytes=LARGE),
        Scenario("S4", "GET 1 MiB, 16 conns", "/1m", 16, "MB/s", 5),
        Scenario("S5", "GET 256 B, 1000 conns", "/256b", 1000, "req/s", 2),
    )
}
MB = 1_000_000


def _csv(value: str, allowed: tuple[str, ...]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(allowed)}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=5, help="seconds of load per run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up load per run, 0 for none (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 s")
    p.add_argument("--scenarios", type=lambda v: _csv(v, tuple(SCENARIOS)), default=list(SCENARIOS))
    p.add_argument(
        "--proxies",
        type=lambda v: _csv(v, PROXIES + OPTIONAL_PROXIES),
        default=list(PROXIES),
        help=f"default {','.join(PROXIES)}; also {','.join(OPTIONAL_PROXIES)} (*-w2: 2 workers on CPUs 0,1)",
    )
    p.add_argument(
        "--nginx-buffer-kib",
        type=int,
        default=64,
        help="nginx proxy_buffer_size in KiB with proxy_buffering off (default 64; nginx's own is 4)",
    )
    p.add_argument("--out", type=Path, default=harness.HERE / "results", help="where latest.{json,md,png} go")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    if args.duration < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--duration and --rounds must be >= 1, --warmup >= 0")
    return args


def _value(sc: Scenario, res: harness.WrkResult) -> float:
    good = res.requests - res.errors["status"] - res.errors["timeout"]
    if sc.body_bytes:
        # Completed uploads only: bodies still in flight when wrk stops are not counted (a small underestimate).
        return good * sc.body_bytes / res.duration_s / MB
    if sc.unit == "MB/s":
        return res.bytes / res.duration_s / MB
    return good / res.duration_s


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Procs, root: Path, upstream_port: int) -> None:
        self.args = args
        self.procs = procs
        self.root = root
        self.upstream = upstream_port
        self.unavailable: dict[str, tuple[str, str]] = {}
        self.extras = features.Extras(root, procs)

    def measure(self, rnd: int, sc: Scenario, proxy: str) -> Run:
        if proxy in self.unavailable:
            return Run(rnd, sc.name, proxy, *self.unavailable[proxy])
        proc = None
        try:
            port, idle, rss_pid = self.upstream, None, None
            if proxy != "direct":
                port = harness.free_port()
                argv, cpus = harness.proxy_command(
                    proxy, port, self.upstream, self.root, self.args.nginx_buffer_kib, self.extras
                )
                proc = self.procs.start(proxy, argv, cpus)
                arm_headers = features.wrk_headers(proxy.removeprefix("fastgate-"), self.extras)
                harness.wait_ready(f"http://127.0.0.1:{port}/256b", proc, headers=arm_headers)
                rss_pid = proc.pid
                idle = harness.tree_rss_bytes(proc.pid) / MB
            url = f"http://127.0.0.1:{port}{sc.path}"
            headers = features.wrk_headers(proxy.removeprefix("fastgate-"), self.extras)
            if self.args.warmup and proxy != "direct":  # the upstream itself needs no warming
                harness.run_wrk(url, sc.connections, self.args.warmup, sc.timeout_s, sc.body_bytes, None, headers)
            res = harness.run_wrk(
                url, sc.connections, self.args.duration, sc.timeout_s, sc.body_bytes, rss_pid, headers
            )
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"proxy exited with code {proc.returncode} during the run")
        except Unavailable as exc:
            status = "skipped" if isinstance(exc, Skipped) else "unavailable"
            reason = str(exc).removeprefix("skipped: ")
            self.unavailable[proxy] = (status, reason)
            return Run(rnd, sc.name, proxy, status, reason)
        except RuntimeError as exc:
            reason = f"{exc}; log: {self.procs.log_tail(proc)}"[:400]
            if proc is not None and proc.returncode == 2 and proxy.removeprefix("fastgate-") in harness.FEATURE_ARMS:
                # `fastgate run` exits 2 on a config it refuses: a feature that is not wired yet.
                self.unavailable[proxy] = ("skipped", f"fastgate refused the config: {reason}")
                return Run(rnd, sc.name, proxy, *self.unavailable[proxy])
            return Run(rnd, sc.name, proxy, "failed", reason)
        finally:
            if proc is not None:
                self.procs.stop(proc)
        return Run(
            rnd,
            sc.name,
            proxy,
            "ok",
            unit=sc.unit,
            value=_value(sc, res),
            p50_ms=res.p50_ms,
            p99_ms=res.p99_ms,
            requests=res.requests,
            bytes=res.bytes,
            duration_s=res.duration_s,
            errors=res.errors,
            in_flight_at_end=res.in_flight_at_end,
            idle_rss_mb=idle,
            peak_rss_mb=res.peak_rss / MB if rss_pid else None,
            cpu_us_per_request=res.cpu_s * 1e6 / res.requests if res.cpu_s is not None and res.requests else None,
        )


def _describe(run: Run) -> str:
    if run.status != "ok":
        return f"{run.status}: {run.reason}"
    errs = sum(run.errors.values())
    rss = "" if run.peak_rss_mb is None else f", RSS idle {run.idle_rss_mb or 0:.0f} / peak {run.peak_rss_mb:.0f} MB"
    cpu = "" if run.cpu_us_per_request is None else f", {run.cpu_us_per_request:.0f} µs CPU/req"
    return f"{run.value:,.0f} {run.unit}, p99 {run.p99_ms:.1f} ms, {errs} errors{rss}{cpu}"


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("taskset", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: `{tool}` not found; run bench/run.sh, which installs it")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs 2 CPUs (upstream + load on CPU 0, proxy on CPU 1)")
    fd_limit = harness.raise_fd_limit()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    scenarios = [SCENARIOS[s] for s in args.scenarios]
    proxies: list[str] = args.proxies
    interp = _interpreter()
    print(f"Python {interp['version']} ({interp['executable']}), {interp['build']}; a 2M-iteration loop in "
          f"{interp['loop_2m_ms']} ms", flush=True)  # fmt: skip
    runs: list[Run] = []
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="fastgate-bench-"))
    (root / "logs").mkdir()
    procs = Procs(root / "logs")
    try:
        bench = Bench(args, procs, root, harness.start_upstream(procs, root))
        for rnd in range(1, args.rounds + 1):
            order = proxies[(rnd - 1) % len(proxies) :] + proxies[: (rnd - 1) % len(proxies)]
            for sc in scenarios:
                for proxy in order:
                    run = bench.measure(rnd, sc, proxy)
                    runs.append(run)
                    print(f"[round {rnd} {sc.name} {proxy}] {_describe(run)}", file=sys.stderr, flush=True)
    finally:
        procs.close()
        shutil.rmtree(root, ignore_errors=True)

    titles = {sc.name: sc.title for sc in scenarios}
    summaries = report.summarize(runs, [sc.name for sc in scenarios], proxies)
    table = report.markdown(summaries, titles, proxies)
    command = "bench/run.sh" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "elapsed_s": round(time.monotonic() - started, 1),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "nginx_proxy_buffer_kib": args.nginx_buffer_kib,
        "pinning": "upstream nginx (1 worker) + wrk (1 thread) on CPU 0; proxy on CPU 1 (*-w2: CPUs 0,1)",
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "cpu": _cpu_model(), "fd_limit": fd_limit},
        "versions": harness.tool_versions(),
        "interpreter": interp,
        "scenarios": {
            sc.name: {
                "title": sc.title,
                "path": sc.path,
                "connections": sc.connections,
                "unit": sc.unit,
                "wrk_timeout_s": sc.timeout_s,
                "body_bytes": sc.body_bytes,
            }
            for sc in scenarios
        },
        "units": "req/s: responses with status < 400 within the wrk timeout, per second; MB/s: 10^6 bytes/s",
        "errors": "wrk's connect/read/write/status(>=400)/timeout (late responses) plus unanswered: requests "
        "still without a response at the end that were sent more than the timeout before (a lower bound)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "latest.json", meta, runs, summaries)
    (args.out / "latest.md").write_text(
        f"`{command}` — {meta['date']}, {args.rounds} round(s) × {args.duration} s\n\n" + table
    )
    try:
        report.write_chart(args.out / "latest.png", summaries, titles, proxies)
    except ImportError:  # matplotlib is installed by bench/run.sh; BENCH_SKIP_INSTALL=1 may leave it out
        print(f"no chart: matplotlib is not installed in {sys.prefix}", file=sys.stderr)
    print(f"Python {interp['version']} ({interp['executable']}), {interp['build']}; a 2M-iteration loop in "
          f"{interp['loop_2m_ms']} ms")  # fmt: skip
    print(table)
    print(f"wrote {args.out}/latest.json, latest.md, latest.png in {meta['elapsed_s']} s", file=sys.stderr)
    return 0


def _interpreter() -> dict[str, str]:
    """Which Python ran the proxies, and how fast it runs plain Python: builds differ by ~25% (PGO/LTO), which
    config variables do not reliably tell (Debian builds with PGO outside ``configure``), so a fixed loop is timed."""
    loop = timeit.repeat("for i in range(2_000_000): x = i * 2", number=1, repeat=5)
    return {
        "executable": sys.executable,
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "loop_2m_ms": f"{min(loop) * 1000:.0f}",
        "compiler": platform.python_compiler(),
        "build": _build_flags(),
    }


def _build_flags() -> str:
    """PGO and LTO as the build's configure arguments and compiler flags record them (Debian's PGO build does not
    pass --enable-optimizations to configure, hence the loop timing as well)."""
    args = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    cflags = " ".join(str(sysconfig.get_config_var(v) or "") for v in ("PY_CFLAGS", "PY_CFLAGS_NODIST", "CFLAGS"))
    ldflags = str(sysconfig.get_config_var("PY_LDFLAGS_NODIST") or "") + str(sysconfig.get_config_var("LDFLAGS") or "")
    pgo = "--enable-optimizations" in args or "-fprofile-use" in cflags
    lto = "--with-lto" in args or "-flto" in cflags or "-flto" in ldflags
    return f"PGO {'yes' if pgo else 'no'}, LTO {'yes' if lto else 'no'} (sysconfig)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    sys.exit(main())
