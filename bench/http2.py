"""HTTP/2 and gRPC benchmark (issue 18): fastgate beside nginx and direct-to-upstream, pinned as bench.py pins.

    bench/http2.sh                                   # installs h2load, nginx, grpcio; then runs this with the same args
    python bench/http2.py --rounds 2 --duration 5 --scenarios H1,G1,B64,IDLE --proxies direct,nginx,fastgate

Scenarios (h2load and the upstreams on CPU 0, the proxy under test on CPU 1, everything on 127.0.0.1):

- H1: h2c (prior knowledge) GET 256 B, ``h2load -t1 -c16 -m10`` for ``--duration`` s after a 1 s warm-up run.
- G1: gRPC unary, a 100-byte message framed (5-byte header) to a grpcio echo server (bench/proxies/grpc_echo.py),
  ``h2load -c16 -m10 -d <frame> -H 'content-type: application/grpc' -H 'te: trailers'``. h2load counts HTTP
  statuses only, so before the load every arm is checked once with a grpcio client: the echo must come back with
  grpc-status 0 (OK).
- B64: a 64 MiB GET over h2c, one stream at a time on one connection (``h2load -c1 -m1 -n --b64-count``): MB/s and
  the peak RSS of the proxy's process tree, sampled every 20 ms during the transfers.
- IDLE: ``--idle-connections`` h2c connections opened to the proxy (preface, SETTINGS, the ACK of the server's
  SETTINGS; nothing else), held 1 s: RSS growth of the proxy's process tree per connection, in bytes.

Arms: ``direct`` (H1/B64/IDLE: an nginx serving the same files on an ``http2`` plain listener, the h2c upstream; G1:
the grpcio server itself); ``nginx`` (``listen ... http2`` on a plain port = h2c; ``proxy_pass`` to the HTTP/1.1
upstream of S1 with keepalive as bench.py's nginx arm, and ``grpc_pass grpc://`` for G1); ``fastgate`` (H1/B64/IDLE:
``fastgate proxy`` as in bench.py, h2c on its plain listener being on by default; G1: ``fastgate run`` with an
upstream of ``protocol: h2c``). A fastgate that does not answer h2c (or refuses the G1 config) is reported as
``skipped: not available on this build: ...`` and the run goes on. ``fastgate-base`` runs ``$FASTGATE_BASE_CMD``.

µs CPU/req is the proxy process tree's user + system CPU during the measured load divided by the requests answered
(bench.py's method); for B64 it is the CPU per 64 MiB download, in µs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import harness
import report
from harness import PROXY_CPU, UPSTREAM_CPU, Procs, Skipped, Unavailable
from report import Run

MB = 1_000_000
PROXIES = ("direct", "nginx", "fastgate")
OPTIONAL = ("fastgate-base",)
GRPC_METHOD = "/bench.Echo/Unary"
GRPC_MESSAGE = bytes(range(100))
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS_EMPTY = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    unit: str


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("H1", "h2c GET 256 B, 16 conns × 10 streams", "req/s"),
        Scenario("G1", "gRPC unary 100 B, 16 conns × 10 streams", "req/s"),
        Scenario("B64", "h2c GET 64 MiB, 1 stream at a time", "MB/s"),
        Scenario("IDLE", "idle h2c connections, RSS (lower is better)", "B/conn"),
    )
}


def _csv(value: str, allowed: tuple[str, ...]) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(allowed)}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=5, help="seconds of load per H1/G1 run (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up load per H1/G1 run (default 1)")
    p.add_argument("--scenarios", type=lambda v: _csv(v, tuple(SCENARIOS)), default=list(SCENARIOS))
    p.add_argument("--proxies", type=lambda v: _csv(v, PROXIES + OPTIONAL), default=list(PROXIES))
    p.add_argument("--b64-count", type=int, default=3, help="64 MiB downloads per B64 run (default 3)")
    p.add_argument("--idle-connections", type=int, default=200, help="connections held in IDLE (default 200)")
    p.add_argument("--nginx-buffer-kib", type=int, default=64, help="nginx proxy_buffer_size (as bench.py)")
    p.add_argument("--out", type=Path, default=harness.HERE / "results", help="where h2-latest.{json,md} go")
    args = p.parse_args(argv)
    if not (1 <= args.duration <= 60 and 1 <= args.rounds <= 10 and 0 <= args.warmup <= 10):
        p.error("--duration 1..60, --rounds 1..10, --warmup 0..10")
    if not (1 <= args.b64_count <= 20 and 1 <= args.idle_connections <= 2000):
        p.error("--b64-count 1..20, --idle-connections 1..2000")
    return args


# --- upstreams ----------------------------------------------------------------------------------------------------


@dataclass
class Upstreams:
    http1: int  # bench.py's upstream nginx (HTTP/1.1): /256b, /1m, /64m
    h2c: int  # an nginx serving the same files on an http2 plain listener: the "direct" arm of H1/B64/IDLE
    h2c_pid: int
    grpc: int  # the grpcio echo server: G1's upstream and its "direct" arm


def start_upstreams(procs: Procs, root: Path, grpc_wanted: bool) -> Upstreams:
    http1 = harness.start_upstream(procs, root)
    www = root / "upstream" / "www"
    h2c = harness.free_port()
    body = (
        "    sendfile on;\n    tcp_nopush on;\n    open_file_cache max=64;\n"
        f"    server {{\n        listen 127.0.0.1:{h2c} backlog=4096 http2;\n        root {www};\n    }}\n"
    )
    conf = harness.write_nginx_conf(root / "upstream-h2c", body)
    proc = procs.start(
        "upstream-h2c", [harness.nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-e", "stderr"], UPSTREAM_CPU
    )
    wait_h2(h2c, proc, "/256b")
    grpc_port = 0
    if grpc_wanted:
        grpc_port = harness.free_port()
        script = harness.HERE / "proxies" / "grpc_echo.py"
        gproc = procs.start("upstream-grpc", [sys.executable, str(script), "--port", str(grpc_port)], UPSTREAM_CPU)
        wait_port(grpc_port, gproc)
        check_grpc(grpc_port)
    return Upstreams(http1, h2c, proc.pid, grpc_port)


# --- probes -------------------------------------------------------------------------------------------------------


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not accepting after {timeout:.0f}s")


def wait_h2(port: int, proc: subprocess.Popen[bytes], path: str) -> None:
    """The port accepts, then one h2c GET of ``path`` succeeds (h2load -n1): else RuntimeError naming the answer."""
    wait_port(port, proc)
    deadline = time.monotonic() + 10
    last = ""
    while time.monotonic() < deadline:
        res = h2load([f"http://127.0.0.1:{port}{path}", "-n1", "-c1"], None, 10)
        if res.succeeded == 1:
            return
        last = res.summary
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"h2c GET {path}: {last}")


def check_grpc(port: int) -> str:
    """One unary call through ``port`` with a grpcio client: the echo and grpc-status 0, or RuntimeError."""
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(GRPC_METHOD)
        try:
            answer, rpc = call.with_call(GRPC_MESSAGE, timeout=5)
        except grpc.RpcError as exc:
            raise RuntimeError(f"gRPC call failed: {exc.code()} {exc.details()}") from exc  # type: ignore[attr-defined]
        if answer != GRPC_MESSAGE:
            raise RuntimeError(f"gRPC echo differs: {answer[:20]!r}...")
        return f"{rpc.code()}"


# --- load ---------------------------------------------------------------------------------------------------------


@dataclass
class H2loadResult:
    returncode: int
    elapsed_s: float
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status: dict[str, int]
    traffic_bytes: int
    data_bytes: int  # DATA payload received (h2load's traffic line)
    p50_ms: float
    p99_ms: float
    peak_rss: int
    cpu_s: float | None
    summary: str


def h2load(
    args: list[str], rss_pid: int | None, timeout: float, log_file: Path | None = None, sample_s: float = 0.05
) -> H2loadResult:
    """One bounded h2load run on CPU 0, sampling the RSS of ``rss_pid``'s tree; parsed from h2load's summary."""
    argv = ["taskset", "-c", UPSTREAM_CPU, "h2load", "-t1", *args]
    if log_file is not None:
        argv.append(f"--log-file={log_file}")
    cpu_before = harness.tree_cpu_seconds(rss_pid) if rss_pid is not None else None
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    peak = 0
    try:
        while proc.poll() is None:
            if rss_pid is not None:
                peak = max(peak, harness.tree_rss_bytes(rss_pid))
            if time.monotonic() > deadline:
                raise RuntimeError("h2load did not stop in time")
            time.sleep(sample_s)
        out = proc.communicate(timeout=10)[0].decode(errors="replace")
        cpu = harness.tree_cpu_seconds(rss_pid) - cpu_before if rss_pid is not None and cpu_before is not None else None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return _parse_h2load(out, proc.returncode, peak, cpu, log_file)


def _parse_h2load(out: str, code: int, peak: int, cpu: float | None, log_file: Path | None) -> H2loadResult:
    finished = re.search(r"finished in ([\d.]+)(ms|s)", out)
    elapsed = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1) if finished else 0.0
    reqs = re.search(r"requests: .*?(\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    succeeded, failed, errored, timeouts = (int(g) for g in reqs.groups()) if reqs else (0, 0, 0, 0)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    status = dict(zip(("2xx", "3xx", "4xx", "5xx"), (int(g) for g in codes.groups()), strict=True)) if codes else {}
    traffic = re.search(r"traffic: \S+ \((\d+)\) total", out)
    data = re.search(r"\S+ \((\d+)\) data", out)
    p50 = p99 = 0.0
    if log_file is not None and log_file.exists():
        times = sorted(int(line.split("\t")[2]) for line in log_file.read_text().splitlines() if line.count("\t") >= 2)
        if times:
            p50, p99 = times[len(times) // 2] / 1000, times[min(len(times) - 1, int(len(times) * 0.99))] / 1000
        log_file.unlink()
    lines = [ln.strip() for ln in out.splitlines() if ln.startswith(("requests:", "status codes:"))]
    errors = [ln.strip() for ln in out.splitlines() if "rror" in ln or "failed" in ln.lower()][:2]
    return H2loadResult(
        returncode=code,
        elapsed_s=elapsed,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeouts,
        status=status,
        traffic_bytes=int(traffic.group(1)) if traffic else 0,
        data_bytes=int(data.group(1)) if data else 0,
        p50_ms=p50,
        p99_ms=p99,
        peak_rss=peak,
        cpu_s=cpu,
        summary="; ".join(lines + [e for e in errors if e not in lines])[:300] or out.strip()[-300:],
    )


async def _hold_idle(port: int, count: int, settle_s: float, rss_pid: int) -> tuple[int, int, int]:
    """Open ``count`` h2c connections, each: preface + empty SETTINGS, read until the server's SETTINGS, ACK them.
    Hold them ``settle_s``, read the RSS, and count how many the server has not closed. Bounded by deadlines."""
    deadline = time.monotonic() + 30

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREFACE + SETTINGS_EMPTY)
        buf = b""
        while True:  # the server's first frame must be a (non-ACK) SETTINGS frame (RFC 9113 §3.4)
            buf += await reader.read(65536)
            if len(buf) >= 9:
                break
            if reader.at_eof():
                raise RuntimeError(f"closed before SETTINGS: {buf[:40]!r}")
        if buf[3] != 0x4:
            raise RuntimeError(f"first frame is not SETTINGS: {buf[:40]!r}")
        writer.write(SETTINGS_ACK)
        await writer.drain()
        return reader, writer

    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for start in range(0, count, 50):  # in bursts of 50: no accept-queue overflow, no SYN cookies
            batch = [one() for _ in range(min(50, count - start))]
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                conns += await asyncio.gather(*batch)
        await asyncio.sleep(settle_s)
        rss = harness.tree_rss_bytes(rss_pid)
        open_now = 0
        for reader, _ in conns:
            try:
                async with asyncio.timeout(0.001):
                    await reader.read(65536)
            except TimeoutError:
                open_now += 1  # nothing to read and not closed: still open
                continue
            if not reader.at_eof():
                open_now += 1
        return rss, len(conns), open_now
    finally:
        for _, writer in conns:
            writer.close()


# --- the arms -----------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Procs, root: Path, up: Upstreams) -> None:
        self.args = args
        self.procs = procs
        self.root = root
        self.up = up
        self.unavailable: dict[tuple[str, str], tuple[str, str]] = {}
        grpc_frame = root / "grpc-frame.bin"
        grpc_frame.write_bytes(b"\x00" + len(GRPC_MESSAGE).to_bytes(4, "big") + GRPC_MESSAGE)
        self.grpc_frame = grpc_frame

    def _start(self, sc: Scenario, proxy: str) -> tuple[subprocess.Popen[bytes], int]:
        port = harness.free_port()
        if proxy == "nginx":
            if sc.name == "G1":
                body = (
                    f"    upstream grpcb {{ server 127.0.0.1:{self.up.grpc}; keepalive 256; "
                    "keepalive_requests 1000000; }\n"
                    f"    server {{\n        listen 127.0.0.1:{port} backlog=4096 http2;\n"
                    "        location / { grpc_pass grpc://grpcb; }\n    }\n"
                )
            else:
                body = harness.nginx_variant_body("", port, self.up.http1, self.args.nginx_buffer_kib)
                body = body.replace("backlog=4096;", "backlog=4096 http2;", 1)
            conf = harness.write_nginx_conf(self.root / f"proxy-nginx-{sc.name}-{port}", body)
            argv = [harness.nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-e", "stderr"]
        else:
            prefix = harness.fastgate_prefix("FASTGATE_BASE_CMD" if proxy == "fastgate-base" else "FASTGATE_CMD")
            if sc.name == "G1":
                config = {
                    "server": {"host": "127.0.0.1", "port": port, "access_log": False, "log_level": "warning"},
                    "upstreams": {"grpc": {"url": f"http://127.0.0.1:{self.up.grpc}", "protocol": "h2c"}},
                    "routes": [{"prefix": "/", "upstream": "grpc"}],
                }
                path = self.root / f"{proxy}-G1-{port}.json"
                path.write_text(json.dumps(config))
                argv = [*prefix, "run", str(path)]
            else:
                argv = [*prefix, "proxy", "--from", f"127.0.0.1:{port}", "--to", f"http://127.0.0.1:{self.up.http1}",
                        "--workers", "1", "--no-access-log", "--log-level", "warning"]  # fmt: skip
        return self.procs.start(f"{proxy}-{sc.name}", argv, PROXY_CPU), port

    def _ready(self, sc: Scenario, proxy: str, proc: subprocess.Popen[bytes], port: int) -> None:
        fastgate = proxy.startswith("fastgate")
        try:
            if sc.name == "G1":
                wait_port(port, proc)
                check_grpc(port)
            else:
                wait_h2(port, proc, "/256b")
        except RuntimeError as exc:
            if not fastgate:
                raise
            if proc.poll() == 2:
                reason = f"fastgate refused the config ({self.procs.log_tail(proc, 2)})"
            else:
                reason = f"{exc} ({self.procs.log_tail(proc, 2)})" if proc.poll() is not None else str(exc)
            raise Skipped(f"not available on this build: {reason}"[:300]) from exc

    def measure(self, rnd: int, sc: Scenario, proxy: str) -> Run:
        key = (sc.name, proxy)
        if key in self.unavailable:
            return Run(rnd, sc.name, proxy, *self.unavailable[key])
        proc = None
        try:
            if proxy == "direct":
                port = self.up.grpc if sc.name == "G1" else self.up.h2c
                rss_pid = None if sc.name == "G1" else self.up.h2c_pid
            else:
                proc, port = self._start(sc, proxy)
                self._ready(sc, proxy, proc, port)
                rss_pid = proc.pid
            idle = harness.tree_rss_bytes(rss_pid) / MB if rss_pid is not None else None
            if sc.name == "IDLE":
                assert rss_pid is not None
                return self._idle(rnd, sc, proxy, port, rss_pid)
            if sc.name == "B64":
                log = self.root / f"h2load-{sc.name}-{proxy}-{rnd}.tsv"
                res = h2load([f"http://127.0.0.1:{port}/64m", "-c1", "-m1", f"-n{self.args.b64_count}"], rss_pid,
                             60 + 10 * self.args.b64_count, log, sample_s=0.02)  # fmt: skip
                want = self.args.b64_count
            else:
                load = self._load_args(sc, port)
                if self.args.warmup and proxy != "direct":
                    h2load([*load, f"-D{self.args.warmup}"], None, self.args.warmup + 30)
                log = self.root / f"h2load-{sc.name}-{proxy}-{rnd}.tsv"
                res = h2load([*load, f"-D{self.args.duration}"], rss_pid, self.args.duration + 30, log)
                want = 1
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"proxy exited with code {proc.returncode} during the run")
            if res.succeeded < want or res.elapsed_s <= 0:
                raise RuntimeError(f"h2load: {res.summary}")
            if sc.name == "G1" and res.data_bytes < res.succeeded * (5 + len(GRPC_MESSAGE)):
                # h2load counts a gRPC error (HTTP 200, Trailers-Only, no DATA) as a 2xx: every echo must be there.
                raise RuntimeError(
                    f"{res.data_bytes} bytes of DATA for {res.succeeded} answers: gRPC errors ({res.summary})"
                )
        except Unavailable as exc:
            status = "skipped" if isinstance(exc, Skipped) else "unavailable"
            self.unavailable[key] = (status, str(exc).removeprefix("skipped: "))
            return Run(rnd, sc.name, proxy, *self.unavailable[key])
        except RuntimeError as exc:
            return Run(rnd, sc.name, proxy, "failed", f"{exc}; log: {self.procs.log_tail(proc)}"[:400])
        finally:
            if proc is not None:
                self.procs.stop(proc)
        value = res.traffic_bytes / res.elapsed_s / MB if sc.unit == "MB/s" else res.succeeded / res.elapsed_s
        non2xx = sum(v for k, v in res.status.items() if k != "2xx")
        return Run(
            rnd,
            sc.name,
            proxy,
            "ok",
            unit=sc.unit,
            value=value,
            p50_ms=res.p50_ms,
            p99_ms=res.p99_ms,
            requests=res.succeeded,
            bytes=res.traffic_bytes,
            duration_s=res.elapsed_s,
            errors={"failed": res.failed, "errored": res.errored, "timeout": res.timeout, "non-2xx": non2xx},
            idle_rss_mb=idle,
            peak_rss_mb=res.peak_rss / MB if rss_pid is not None else None,
            cpu_us_per_request=res.cpu_s * 1e6 / res.succeeded if res.cpu_s is not None and res.succeeded else None,
        )

    def _load_args(self, sc: Scenario, port: int) -> list[str]:
        if sc.name == "G1":
            return [f"http://127.0.0.1:{port}{GRPC_METHOD}", "-c16", "-m10", "-d", str(self.grpc_frame),
                    "-H", "content-type: application/grpc", "-H", "te: trailers"]  # fmt: skip
        return [f"http://127.0.0.1:{port}/256b", "-c16", "-m10"]

    def _idle(self, rnd: int, sc: Scenario, proxy: str, port: int, rss_pid: int) -> Run:
        before = harness.tree_rss_bytes(rss_pid)
        count = self.args.idle_connections
        after, opened, still_open = asyncio.run(_hold_idle(port, count, 1.0, rss_pid))
        if still_open < opened:
            raise RuntimeError(f"the server closed {opened - still_open} of {opened} idle connections within 1 s")
        return Run(rnd, sc.name, proxy, "ok", unit=sc.unit, value=(after - before) / opened, requests=opened,
                   idle_rss_mb=before / MB, peak_rss_mb=after / MB)  # fmt: skip


# --- main ---------------------------------------------------------------------------------------------------------


def _describe(run: Run) -> str:
    if run.status != "ok":
        return f"{run.status}: {run.reason}"
    if run.unit == "B/conn":
        rss = f"RSS {run.idle_rss_mb:.1f} → {run.peak_rss_mb:.1f} MB"
        return f"{run.value:,.0f} bytes per connection ({run.requests} held; {rss})"
    errs = sum(run.errors.values())
    rss = "" if run.peak_rss_mb is None else f", RSS idle {run.idle_rss_mb or 0:.0f} / peak {run.peak_rss_mb:.0f} MB"
    cpu = "" if run.cpu_us_per_request is None else f", {run.cpu_us_per_request:,.0f} µs CPU/req"
    return f"{run.value:,.0f} {run.unit}, p50 {run.p50_ms:.1f} / p99 {run.p99_ms:.1f} ms, {errs} errors{rss}{cpu}"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("taskset", "h2load"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: `{tool}` not found; run bench/http2.sh, which installs it")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench: needs 2 CPUs (upstream + load on CPU 0, proxy on CPU 1)")
    harness.raise_fd_limit()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    scenarios = [SCENARIOS[s] for s in args.scenarios]
    proxies: list[str] = args.proxies
    runs: list[Run] = []
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="fastgate-h2bench-"))
    (root / "logs").mkdir()
    procs = Procs(root / "logs")
    try:
        up = start_upstreams(procs, root, grpc_wanted="G1" in args.scenarios)
        bench = Bench(args, procs, root, up)
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
    command = "bench/http2.sh" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    versions = harness.tool_versions()
    versions["h2load"] = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    for pkg in ("grpcio", "h2"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:  # a version is informative only
            versions[pkg] = "not installed"
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "elapsed_s": round(time.monotonic() - started, 1),
        "rounds": args.rounds,
        "duration_s": args.duration,
        "pinning": "upstream nginx (HTTP/1.1 and h2c), grpcio server and h2load (-t1) on CPU 0; proxy on CPU 1",
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "cpu": _cpu_model(),
            "python": platform.python_version(),
        },  # fmt: skip
        "versions": versions,
        "notes": "H1/G1 µs CPU/req per request; B64's µs CPU/req is per 64 MiB download; IDLE's value is bytes of "
        "RSS per idle connection (idle RSS = before, peak = with the connections open)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "h2-latest.json", meta, runs, summaries)
    header = f"`{command}` — {meta['date']}, {args.rounds} round(s) × {args.duration} s\n\n"
    (args.out / "h2-latest.md").write_text(header + table)
    print(table)
    print(f"wrote {args.out}/h2-latest.json, h2-latest.md in {meta['elapsed_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
