"""Overhead of ``forward()`` inside a FastAPI route against the standalone gateway, on the benchmark's S1 scenario.

    python bench/library_overhead.py                       # 3 interleaved rounds x 5 s, about 1.5 minutes
    python bench/library_overhead.py --rounds 5 --duration 10

S1 as in bench/bench.py: GET 256 B through the proxy, ``wrk -t1 -c64``, 2 s request timeout. Pinning as there:
the upstream nginx (1 worker) and wrk on CPU 0, the proxy under test alone on CPU 1, everything on 127.0.0.1.

    fastgate          fastgate proxy --to UPSTREAM --workers 1 --no-access-log --log-level warning (standalone)
    library           python examples/library_stream.py --upstream UPSTREAM: a FastAPI catch-all route returning
                      forward(), on uvicorn (uvloop + httptools, no access log), as users run it
    library-fgproto   the same app on fastgate's server protocol (the server reports disconnects: no watcher task)
    fastapi-only      a FastAPI route answering 256 B itself, no upstream: the framework's own ceiling
    httpx-seed        python bench/proxies/httpx_seed_app.py (the seed texts' StreamingResponse over httpx)

Reports the median req/s and p99 of each and the within-round ratio library / fastgate. Needs nginx, wrk and
taskset (bench/run.sh installs the first two) and 2 CPUs. Every process is killed by process group at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_CPU, PROXY_CPU = "0", "1"

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{ listen 127.0.0.1:{port} backlog=4096; root {prefix}/www; }}
}}
"""


LIBRARY_FGPROTO = f"""
import sys
import uvicorn
sys.path.insert(0, {str(ROOT / "examples")!r})
from library_stream import build_app
from fastgate._protocol import FastgateHttpProtocol
uvicorn.run(build_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
            proxy_headers=False, http=FastgateHttpProtocol)
"""

FASTAPI_ONLY = """
import sys
import uvicorn
from fastapi import FastAPI, Response
app = FastAPI()
BODY = bytes(range(256))
@app.get("/{path:path}")
async def answer() -> Response:
    return Response(BODY)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, proxy_headers=False)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(argv: list[str], cpu: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            ["taskset", "-c", cpu, *argv], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(5)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200 and len(response.read()) == 256:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url}: not ready after {timeout} s")


def wrk(url: str, duration: int) -> tuple[float, float, int]:
    """req/s (non-error responses), p99 in ms, and errors, from one pinned ``wrk -t1 -c64`` run."""
    argv = ["taskset", "-c", UPSTREAM_CPU, "wrk", "-t1", "-c64", f"-d{duration}s", "--timeout=2s", "--latency", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    seconds = float(re.search(r"requests in ([\d.]+)(m?s)", out).group(1))  # type: ignore[union-attr]
    unit = re.search(r"requests in [\d.]+(m?s)", out).group(1)  # type: ignore[union-attr]
    seconds = seconds / 1000 if unit == "ms" else seconds
    p99_match = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(p99_match.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99_match.group(2)] if p99_match else 0.0
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        errors += int(bad.group(1))
        rate -= int(bad.group(1)) / seconds
    return rate, p99, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds of load per run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up load per run")
    args = parser.parse_args()
    for tool in ("taskset", "wrk", "nginx"):
        if shutil.which(tool) is None and not (tool == "nginx" and Path("/usr/sbin/nginx").exists()):
            sys.exit(f"library_overhead: `{tool}` not found (bench/run.sh installs nginx and wrk)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("library_overhead: needs 2 CPUs")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    fastgate = shutil.which("fastgate") or str(Path(sys.executable).parent / "fastgate")

    root = Path(tempfile.mkdtemp(prefix="fastgate-library-bench-"))
    root.chmod(0o755)
    (root / "www").mkdir()
    (root / "www" / "256b").write_bytes(bytes(range(256)))
    for path in (root / "www", root / "www" / "256b"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    upstream_port = free_port()
    (root / "nginx.conf").write_text(NGINX_CONF.format(prefix=root, port=upstream_port))
    upstream = f"http://127.0.0.1:{upstream_port}"
    commands = {
        "fastgate": lambda port: [
            fastgate,
            "proxy",
            "--from",
            f"127.0.0.1:{port}",
            "--to",
            upstream,
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        "library": lambda port: [
            sys.executable,
            str(ROOT / "examples" / "library_stream.py"),
            "--port",
            str(port),
            "--upstream",
            upstream,
        ],
        "library-fgproto": lambda port: [sys.executable, "-c", LIBRARY_FGPROTO, str(port), upstream],
        "fastapi-only": lambda port: [sys.executable, "-c", FASTAPI_ONLY, str(port)],
        "httpx-seed": lambda port: [
            sys.executable,
            str(ROOT / "bench" / "proxies" / "httpx_seed_app.py"),
            "--port",
            str(port),
            "--upstream",
            upstream,
        ],
    }
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in commands}
    ratios: list[float] = []
    nginx_proc = start(
        [nginx, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", "stderr"], UPSTREAM_CPU, root / "nginx.log"
    )
    try:
        wait_ready(f"{upstream}/256b", nginx_proc)
        for rnd in range(args.rounds):
            names = list(commands)
            names = names[rnd % len(names) :] + names[: rnd % len(names)]
            this_round: dict[str, float] = {}
            for name in names:
                port = free_port()
                proc = start(commands[name](port), PROXY_CPU, root / f"{name}.log")
                try:
                    url = f"http://127.0.0.1:{port}/256b"
                    wait_ready(url, proc)
                    if args.warmup:
                        wrk(url, args.warmup)
                    rate, p99, errors = wrk(url, args.duration)
                finally:
                    stop(proc)
                results[name].append((rate, p99, errors))
                this_round[name] = rate
                print(
                    f"[round {rnd + 1}] {name:10} {rate:9,.0f} req/s  p99 {p99:6.1f} ms  errors {errors}",
                    file=sys.stderr,
                    flush=True,
                )
            ratios.append(this_round["library"] / this_round["fastgate"])
    finally:
        stop(nginx_proc)
        shutil.rmtree(root, ignore_errors=True)

    medians = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
    print(f"\nS1 (GET 256 B, 64 connections), {args.rounds} rounds x {args.duration} s, medians:\n")
    print("| proxy | req/s | CPU µs per request | vs fastgate | p99 ms | errors |\n|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        rate, p99 = medians[name], statistics.median(r[1] for r in runs)
        share = rate / medians["fastgate"]
        print(f"| {name} | {rate:,.0f} | {1e6 / rate:.0f} | {share:.2f} | {p99:.1f} | {sum(r[2] for r in runs)} |")
    ratio = statistics.median(ratios)
    print(
        f"\nforward() in a FastAPI route / standalone gateway: {ratio:.2f} (median of per-round ratios "
        f"{', '.join(f'{r:.2f}' for r in ratios)}); the proxy has one CPU, so µs per request = 1e6 / req/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
