"""Processes for the benchmark: the upstream nginx, the proxies under test, wrk, and RSS sampling.

Every process is started in its own session (process group) and pinned with `taskset`; `Procs.close()` kills the
groups, so nothing outlives the run. All sockets are on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
UPSTREAM_CPU = "0"
PROXY_CPU = "1"
SMALL, MEDIUM, LARGE = 256, 1024 * 1024, 64 * 1024 * 1024
FILES = {"256b": SMALL, "1m": MEDIUM, "64m": LARGE}
PROXIES = ("direct", "nginx", "fastgate", "fastgate-full", "aiohttp", "fastapi-proxy-lib", "httpx-seed")
# fastgate-full and the feature arms (issue 12): `fastgate run` with the config of FEATURE_ARMS, each on S1 beside the
# plain `fastgate` row; an arm whose config this fastgate does not accept yet is skipped with the reason.
FEATURE_ARMS = (
    "full",
    "metrics-on",
    "metrics-off",
    "ratelimit-memory",
    "ratelimit-redis",
    "jwt",
)
# fastgate-base: $FASTGATE_BASE_CMD, for A/B runs; fastgate-granian / fastgate-uvicorn: the same Gateway under Granian
# or stock Uvicorn (httptools) instead of fastgate's own server protocol.
# nginx-rr2 / fastgate-rr2: two upstream servers behind (smooth weighted) round robin; nginx-routes100 /
# fastgate-routes100: 100 routes, the benchmark's paths matching the last (the traffic issue's rows).
OPTIONAL_PROXIES = (
    "fastgate-w2",
    "nginx-w2",
    "fastgate-base",
    "fastgate-granian",
    "fastgate-uvicorn",
    "fastgate-asyncio",
    *(f"fastgate-{arm}" for arm in FEATURE_ARMS if arm != "full"),
    "nginx-rr2",
    "fastgate-rr2",
    "nginx-routes100",
    "fastgate-routes100",
)


class Unavailable(Exception):
    """The proxy cannot be run here (e.g. its command is not installed)."""


class Skipped(Unavailable):
    """A feature arm whose config this fastgate does not accept (yet): reported as ``skipped: <reason>``."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def raise_fd_limit() -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def _tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc/PID/task/TID/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in children.read_text().split())
            except OSError:
                pass
    return out


def tree_rss_bytes(pid: int) -> int:
    """Sum of VmRSS over a process tree (shared pages count once per process, so nginx's master+worker overcount)."""
    total = 0
    for p in _tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            pass
    return total


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree so far (the proxy's own work, in seconds)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)
    return total


@dataclass
class Procs:
    """Owns every child process of the run and kills their process groups on close()."""

    logdir: Path
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)
    started: int = 0

    def start(self, name: str, argv: list[str], cpus: str) -> subprocess.Popen[bytes]:
        self.started += 1
        path = self.logdir / f"{self.started:03d}-{name}.log"
        with path.open("wb") as log:
            proc = subprocess.Popen(
                ["taskset", "-c", cpus, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append(proc)
        self.logs[proc.pid] = path
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                # The group leader is gone; make sure no worker of its group survives it.
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            break
        if proc in self.running:
            self.running.remove(proc)

    def close(self) -> None:
        for proc in list(self.running):
            self.stop(proc)

    def log_tail(self, proc: subprocess.Popen[bytes] | None, lines: int = 3) -> str:
        path = self.logs.get(proc.pid) if proc is not None else None
        text = path.read_text(errors="replace") if path is not None and path.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0, headers: tuple[str, ...] = ()) -> None:
    """Poll ``url`` until it answers 200; ``headers`` ("Name: value", as wrk takes them) go on every probe."""
    deadline = time.monotonic() + timeout
    last = ""
    request = urllib.request.Request(url, headers=dict(header.split(": ", 1) for header in headers))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                resp.read()
                if resp.status == 200:
                    return
                last = f"status {resp.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"not ready after {timeout:.0f}s: {last}")


# --- nginx -------------------------------------------------------------------------------------------------------

_NGINX_MAIN = """\
worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log stderr error;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{body}
}}
"""

# The upload sink must read the whole body before it answers (an early 200 is not an upload, and it stalls wrk).
# Static locations refuse POST, and `return` discards the body after answering, so /upload is proxied with
# proxy_request_buffering on (the default): nginx reads the whole body (1 MiB in memory, the rest into a temp file
# that is unlinked at once) and only then passes the request, without its body, to /ok on the same server.
_UPSTREAM_BODY = """\
    sendfile on;
    tcp_nopush on;
    open_file_cache max=64;
    upstream self_ok {{ server 127.0.0.1:{port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        listen 127.0.0.1:{port2} backlog=4096;
        root {prefix}/www;
        location = /upload {{
            client_max_body_size 0;
            client_body_buffer_size 1m;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Transfer-Encoding "";
            proxy_set_header Connection "";
            proxy_http_version 1.1;
            proxy_pass http://self_ok/ok;
        }}
        location = /ok {{ return 200 "ok\\n"; }}
    }}
"""

_PROXY_LOCATION = """\
            client_max_body_size 0;
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_buffer_size {buffer};
            proxy_buffers 4 {buffer};
            proxy_busy_buffers_size {busy};
"""

ROUTES = 100  # the "100 routes" rows: 99 prefixes that do not match the benchmark's paths, then a catch-all


def nginx_variant_body(variant: str, port: int, upstream: int, buffer_kib: int) -> str:
    """nginx as the proxy under test: one upstream server and one location, or what a fastgate variant does: two
    servers in the upstream block (rr2), 100 locations (routes100), or a ``reuseport`` listener (w2: one listener per
    worker, balanced by the kernel, as fastgate's ``--workers N`` does)."""
    location = _PROXY_LOCATION.format(buffer=f"{buffer_kib}k", busy=f"{2 * buffer_kib}k")
    servers = f"server 127.0.0.1:{upstream};"
    if variant == "rr2":
        servers += f" server 127.0.0.1:{SECOND_UPSTREAM_PORT};"
    locations = ""
    if variant == "routes100":
        locations = "".join(
            f"        location /api/v1/service{i}/ {{\n{location}        }}\n" for i in range(ROUTES - 1)
        )
    reuseport = " reuseport" if variant == "w2" else ""
    return (
        f"    upstream backend {{ {servers} keepalive 64; keepalive_requests 1000000; }}\n"
        f"    server {{\n        listen 127.0.0.1:{port} backlog=4096{reuseport};\n{locations}"
        f"        location / {{\n{location}        }}\n    }}\n"
    )


def fastgate_variant_config(variant: str, port: int, upstream: int) -> dict[str, object]:
    """The config of a fastgate variant: two targets behind round_robin (rr2), or 100 routes."""
    url = f"http://127.0.0.1:{upstream}"
    upstreams: dict[str, object] = {"api": {"url": url}}
    routes: list[dict[str, object]] = [{"prefix": "/", "upstream": "api"}]
    if variant == "rr2":
        second = f"http://127.0.0.1:{SECOND_UPSTREAM_PORT}"
        upstreams = {"api": {"targets": [{"url": url}, {"url": second}], "balancer": "round_robin"}}
    if variant == "routes100":
        routes = [{"prefix": f"/api/v1/service{i}/", "upstream": "api"} for i in range(ROUTES - 1)] + routes
    return {
        "server": {"host": "127.0.0.1", "port": port, "access_log": False, "log_level": "warning"},
        "upstreams": upstreams,
        "routes": routes,
    }


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise Unavailable("nginx is not installed (bench/run.sh installs it)")
    return found


def write_nginx_conf(prefix: Path, body: str, workers: int = 1) -> Path:
    prefix.mkdir(parents=True, exist_ok=True)
    prefix.chmod(0o755)  # the worker runs as nobody when we are root
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX_MAIN.format(prefix=prefix, body=body, workers=workers))
    return conf


SECOND_UPSTREAM_PORT = 0  # the upstream nginx listens on two ports: two "servers" for the balancing rows


def start_upstream(procs: Procs, root: Path) -> int:
    root.chmod(0o755)  # mkdtemp makes it 0700; nginx workers run as nobody when we are root
    prefix = root / "upstream"
    www = prefix / "www"
    www.mkdir(parents=True)
    for name, size in FILES.items():
        chunk = bytes(range(256)) * 4096
        with (www / name).open("wb") as f:
            for off in range(0, size, len(chunk)):
                f.write(chunk[: min(len(chunk), size - off)])
        (www / name).chmod(0o644)
    www.chmod(0o755)
    global SECOND_UPSTREAM_PORT
    port, SECOND_UPSTREAM_PORT = free_port(), free_port()
    conf = write_nginx_conf(prefix, _UPSTREAM_BODY.format(port=port, port2=SECOND_UPSTREAM_PORT, prefix=prefix))
    proc = procs.start(
        "upstream-nginx", [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", "stderr"], UPSTREAM_CPU
    )
    wait_ready(f"http://127.0.0.1:{port}/256b", proc)
    return port


# --- proxies under test ------------------------------------------------------------------------------------------


def fastgate_prefix(variable: str = "FASTGATE_CMD") -> list[str]:
    override = os.environ.get(variable)
    if override:
        argv = shlex.split(override)
        if not argv or shutil.which(argv[0]) is None:
            raise Unavailable(f"{variable}={override!r}: {argv[0] if argv else '(empty)'} not found")
        return argv
    if variable != "FASTGATE_CMD":
        raise Unavailable(f"set {variable} to the command of the fastgate to compare with")
    for candidate in (shutil.which("fastgate"), str(Path(sys.executable).parent / "fastgate")):
        if candidate and Path(candidate).exists():
            return [candidate]
    raise Unavailable("`fastgate` is not on PATH (set FASTGATE_CMD to override)")


def proxy_command(
    name: str, port: int, upstream: int, root: Path, nginx_buffer_kib: int, extras: Any = None
) -> tuple[list[str], str]:
    """argv and the CPU list for one proxy under test. ``extras``: a ``features.Extras`` for the feature arms."""
    up = f"http://127.0.0.1:{upstream}"
    py = sys.executable
    if name.removeprefix("fastgate-") in FEATURE_ARMS:
        import features

        if extras is None:
            raise ValueError(f"{name} needs the bench's features.Extras")
        config = features.feature_config(name.removeprefix("fastgate-"), port, upstream, SECOND_UPSTREAM_PORT, extras)
        return features.run_config_argv(fastgate_prefix(), root / f"{name}-{port}.json", config), PROXY_CPU
    if name == "nginx":
        conf = write_nginx_conf(root / f"proxy-nginx-{port}", nginx_variant_body("", port, upstream, nginx_buffer_kib))
        return [nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-e", "stderr"], PROXY_CPU
    if name == "nginx-w2":  # as fastgate-w2: 2 workers on CPUs 0,1, sharing CPU 0 with wrk and the upstream
        body = nginx_variant_body("w2", port, upstream, nginx_buffer_kib)
        conf = write_nginx_conf(root / f"proxy-{name}-{port}", body, workers=2)
        return [nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-e", "stderr"], f"{UPSTREAM_CPU},{PROXY_CPU}"
    if name in ("nginx-rr2", "nginx-routes100"):
        body = nginx_variant_body(name.split("-", 1)[1], port, upstream, nginx_buffer_kib)
        conf = write_nginx_conf(root / f"proxy-{name}-{port}", body)
        return [nginx_binary(), "-p", str(conf.parent), "-c", str(conf), "-e", "stderr"], PROXY_CPU
    if name in ("fastgate-rr2", "fastgate-routes100"):
        path = root / f"{name}-{port}.json"
        path.write_text(json.dumps(fastgate_variant_config(name.split("-", 1)[1], port, upstream)))
        return [*fastgate_prefix(), "run", str(path)], PROXY_CPU
    if name in ("fastgate", "fastgate-w2", "fastgate-base"):
        workers, cpus = ("2", f"{UPSTREAM_CPU},{PROXY_CPU}") if name == "fastgate-w2" else ("1", PROXY_CPU)
        argv = [
            *fastgate_prefix("FASTGATE_BASE_CMD" if name == "fastgate-base" else "FASTGATE_CMD"),
            "proxy",
            "--from",
            f"127.0.0.1:{port}",
            "--to",
            up,
            "--workers",
            workers,
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        return argv, cpus
    scripts = {
        "aiohttp": "aiohttp_proxy.py",
        "fastapi-proxy-lib": "fastapi_proxy_lib_app.py",
        "httpx-seed": "httpx_seed_app.py",
    }
    if name in scripts:
        return [py, str(HERE / "proxies" / scripts[name]), "--port", str(port), "--upstream", up], PROXY_CPU
    servers = {
        "fastgate-granian": "granian",
        "fastgate-uvicorn": "uvicorn-httptools",
        "fastgate-asyncio": "asyncio-loop",
    }
    if name in servers:
        script = str(HERE / "proxies" / "fastgate_servers.py")
        return [py, script, "--server", servers[name], "--port", str(port), "--upstream", up], PROXY_CPU
    raise ValueError(f"unknown proxy {name!r}")


# --- load --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    duration_s: float
    requests: int
    bytes: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    in_flight_at_end: int | None  # sent but unanswered when wrk stopped, whatever their age (None for uploads)
    peak_rss: int
    cpu_s: float | None = None  # the proxy tree's CPU time during the run


def run_wrk(
    url: str,
    connections: int,
    duration: float,
    timeout_s: float,
    body_bytes: int,
    rss_pid: int | None,
    headers: tuple[str, ...] = (),
) -> WrkResult:
    """One bounded wrk run on the load CPU; samples the proxy tree's RSS every 50 ms meanwhile."""
    argv = [
        "taskset",
        "-c",
        UPSTREAM_CPU,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s:g}s",
        "-s",
        str(HERE / "wrk_report.lua"),
        *(arg for header in headers for arg in ("-H", header)),
        url,
    ]
    stale_after = 0 if body_bytes else timeout_s  # the request hook would copy a large body once per request
    env = {**os.environ, "BENCH_BODY_BYTES": str(body_bytes), "BENCH_STALE_AFTER_S": f"{stale_after:g}"}
    cpu_before = tree_cpu_seconds(rss_pid) if rss_pid is not None else None
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    deadline = time.monotonic() + duration + 60
    peak = 0
    try:
        while proc.poll() is None:
            if rss_pid is not None:
                peak = max(peak, tree_rss_bytes(rss_pid))
            if time.monotonic() > deadline:
                raise RuntimeError("wrk did not stop in time")
            time.sleep(0.05)
        out, err = proc.communicate(timeout=10)
        cpu = tree_cpu_seconds(rss_pid) - cpu_before if rss_pid is not None and cpu_before is not None else None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    line = next((ln for ln in out.decode().splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode().strip()[-300:]}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return WrkResult(
        duration_s=data["duration_us"] / 1e6,
        requests=data["requests"],
        bytes=data["bytes"],
        errors={k: int(data[k]) for k in ("connect", "read", "write", "status", "timeout", "unanswered")},
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        in_flight_at_end=data["sent"] - data["requests"] if stale_after else None,
        peak_rss=peak,
        cpu_s=cpu,
    )


def tool_versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "unavailable"
        return (res.stdout + res.stderr).strip().splitlines()[0] if (res.stdout + res.stderr).strip() else "?"

    versions = {
        "nginx": first_line(["nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "python": sys.version.split()[0],
    }
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("fastgate", "uvicorn", "uvloop", "httptools", "aiohttp", "httpx", "fastapi", "fastapi-proxy-lib"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions
