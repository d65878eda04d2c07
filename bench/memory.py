"""Idle and peak RSS of one fastgate worker, and what the idle figure is made of.

    venv/bin/python bench/memory.py                  # idle RSS, then peak RSS under S1, S4 and S2 loads (~25 s)
    venv/bin/python bench/memory.py --duration 5 --config my.yaml

Starts the upstream nginx of bench.py and `fastgate proxy` (or `fastgate run CONFIG`) with one worker, pinned
like bench.py (upstream and wrk on CPU 0, the gateway on CPU 1). Idle RSS is read once the gateway has answered
one request; each load is one bounded `wrk` run while the RSS of the gateway's process tree is sampled every
50 ms. Then, in this process, it imports what a worker imports (`fastgate.server` and one built `Gateway`) step
by step and prints the RSS each step adds, and which optional packages a worker without those features has
loaded (none should be: tests/test_lazy_imports.py pins it; prometheus_client is imported here by the first
scrape's exposition only). Targets (issues 12, 19): idle <= 35 MB, peak during S2-S4 <= 45 MB.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MB = 1_000_000
LOADS = (("S1", "/256b", 64, 2.0), ("S4", "/1m", 16, 5.0), ("S2", "/64m", 4, 10.0))
# Imported by a worker only when the feature that needs them is configured (yaml: only to read a YAML file, which
# a worker given its config by the manager never does; websockets: on the first WebSocket; prometheus_client: at
# the first scrape of a single process, at startup with --workers N, whose multiprocess files need it).
OPTIONAL = (
    "httpx",
    "opentelemetry",
    "redis",
    "jwt",
    "cryptography",
    "yaml",
    "websockets",
    "prometheus_client",
    "fastgate.admin",
)
STEPS = (
    "asyncio",  # with ssl, which asyncio.base_events imports (OpenSSL's libraries)
    "uvloop",
    "httptools",
    "uvicorn",  # with click, multiprocessing and watchfiles (uvicorn.main imports them)
    "pydantic",
    "pydantic.main",
    "fastgate.config",  # the config model classes (validators are built on first use: defer_build)
    "fastgate.app",  # the rest of fastgate a worker runs
    "fastgate.server",
)


def _status(pid: int | str = "self") -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(line.split()[1]) * 1024 / MB
    return out


def measure_process(args: argparse.Namespace) -> None:
    import harness
    from harness import Procs

    harness.raise_fd_limit()
    root = Path(tempfile.mkdtemp(prefix="fastgate-memory-"))
    (root / "logs").mkdir()
    procs = Procs(root / "logs")
    try:
        upstream = harness.start_upstream(procs, root)
        port = harness.free_port()
        if args.config:
            argv = [*harness.fastgate_prefix(), "run", str(args.config)]
        else:
            name = "fastgate-w2" if args.workers2 else "fastgate"
            argv, _ = harness.proxy_command(name, port, upstream, root, 64)
        proc = procs.start("fastgate", argv, harness.PROXY_CPU)
        base = f"http://127.0.0.1:{args.port or port}"
        harness.wait_ready(base + "/256b", proc)
        if args.workers2:
            _wait_for_workers(base + "/256b", proc.pid, 2)
        for pid in harness._tree(proc.pid):
            st = _status(pid)
            role = "worker" if pid == proc.pid and not args.workers2 else _role(pid)
            print(
                f"idle RSS of {role} {pid}: {st['VmRSS']:.1f} MB "
                f"(anonymous {st['RssAnon']:.1f}, file-backed {st['RssFile']:.1f})"
            )
        print(f"idle RSS of the process tree: {harness.tree_rss_bytes(proc.pid) / MB:.1f} MB")
        for name, path, conns, timeout in LOADS:
            res = harness.run_wrk(base + path, conns, args.duration, timeout, 0, proc.pid)
            errs = sum(res.errors.values())
            print(
                f"{name} {path} x{conns}: peak RSS {res.peak_rss / MB:.1f} MB ({res.requests} responses, {errs} errors)"
            )
        print(f"after the loads: {harness.tree_rss_bytes(proc.pid) / MB:.1f} MB")
    finally:
        procs.close()
        shutil.rmtree(root, ignore_errors=True)


def _role(pid: int) -> str:
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    if b"resource_tracker" in cmdline:
        return "multiprocessing's resource tracker"
    return "worker" if b"multiprocessing" in cmdline else "manager"


def _wait_for_workers(url: str, pid: int, workers: int) -> None:
    """Until ``workers`` workers run and their RSS has settled (each has built its gateway and served)."""
    import time
    import urllib.request

    import harness

    deadline, last = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        for _ in range(4 * workers):
            urllib.request.urlopen(url, timeout=5).read()
        sizes = [round(_status(p)["VmRSS"]) for p in harness._tree(pid) if _role(p) == "worker"]
        if len(sizes) >= workers and sizes == last:
            return
        last = sizes
        time.sleep(0.5)


def import_steps() -> None:
    print("\nwhat a worker's imports add (this process, in order):")
    # fastgate/__init__.py imports the whole package: a bare package object lets each step import only its modules.
    import types

    spec = importlib.util.find_spec("fastgate")  # finds the package without running it
    assert spec is not None and spec.submodule_search_locations is not None
    package = types.ModuleType("fastgate")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["fastgate"] = package
    prev = _status()
    print(f"  {'interpreter':28s} {prev['VmRSS']:5.1f} MB")
    for module in STEPS:
        importlib.import_module(module)
        now = _status()
        print(
            f"  {module:28s} +{now['VmRSS'] - prev['VmRSS']:4.1f} MB "
            f"(anonymous +{now['RssAnon'] - prev['RssAnon']:4.1f}); {len(sys.modules)} modules"
        )
        prev = now
    import os

    from fastgate.config import GatewayConfig
    from fastgate.server import CONFIG_ENV, create_app

    os.environ[CONFIG_ENV] = GatewayConfig.single("http://127.0.0.1:9").model_dump_json()
    create_app()
    now = _status()
    print(f"  {'create_app()':28s} +{now['VmRSS'] - prev['VmRSS']:4.1f} MB; total {now['VmRSS']:.1f} MB")
    print("  (create_app() validates the JSON config here; a served worker unpickles the CLI's: ~0 MB)")
    loaded = [m for m in OPTIONAL if m in sys.modules]
    print(f"optional packages loaded without their feature: {', '.join(loaded) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per load (default 5)")
    parser.add_argument("--config", type=Path, help="run this config (`fastgate run`) instead of `fastgate proxy`")
    parser.add_argument("--port", type=int, help="the port CONFIG listens on (with --config)")
    parser.add_argument("--imports-only", action="store_true", help="skip the process and loads")
    parser.add_argument("--workers2", action="store_true", help="`fastgate proxy --workers 2`: each process's RSS")
    args = parser.parse_args()
    if args.imports_only:
        import_steps()
        return
    measure_process(args)
    # A fresh interpreter, so that this script's own imports (subprocess, json, ...) do not hide a step's cost.
    subprocess.run([sys.executable, __file__, "--imports-only"], check=True, timeout=60)


if __name__ == "__main__":
    main()
