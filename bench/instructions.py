#!/usr/bin/env python3
"""Instructions per proxied request, counted by valgrind's callgrind: a figure this shared machine cannot blur.

Wall-clock µs of CPU per request move by 30-50% between rounds here when other work shares the machine; the number
of instructions the proxy process executes per request does not (callgrind counts them in user space; the kernel's
share, i.e. the system calls themselves, is not counted). Use it for A/B questions ("did this change add work to the
request path?"), and bench/run.sh for speed.

    python bench/instructions.py                          # `fastgate proxy` from this interpreter's install
    python bench/instructions.py --cmd "env PYTHONPATH=/other/checkout/src fastgate" --label other
    python bench/instructions.py --config gateway.json    # `fastgate run FILE`: {UPSTREAM_PORT}, {UPSTREAM_PORT_2}
    python bench/instructions.py --arm full               # a bench/features.py arm (the issue's "full" row)
    python bench/instructions.py --h2c-streams 10         # h2c prior knowledge: h2load -c8 -m10 is the client

The upstream (a fixed 256-byte response) and the client (``--connections`` keep-alive connections, each sending
GET requests one after another) run in this process on 127.0.0.1; the proxy runs under callgrind (about 50x
slower). After ``--warmup`` requests the counters are zeroed, ``--requests`` requests are made, and the counters are
dumped: the total over the request count is the figure. Needs valgrind (Debian package ``valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast


def response(size: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size


RESPONSE = response(256)


class _Upstream(asyncio.Protocol):
    """Answers every GET head it receives with ``RESPONSE`` (the client sends no bodies)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answered = self.buffer.count(b"\r\n\r\n")
        if answered:
            self.buffer = self.buffer.rsplit(b"\r\n\r\n", 1)[1]
            self.transport.write(RESPONSE * answered)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: bytes) -> int:
    writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: bench\r\nUser-Agent: instructions\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if match is None:
        raise RuntimeError(f"response without Content-Length: {head!r}")
    await reader.readexactly(int(match.group(1)))
    return status


async def _load(port: int, connections: int, requests: int, path: bytes) -> None:
    remaining = requests

    async def one_connection() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining > 0:
                remaining -= 1
                status = await _exchange(reader, writer, path)
                if status != 200:
                    raise RuntimeError(f"status {status} from the proxy")
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))


async def _load_h2c(port: int, connections: int, requests: int, path: bytes, streams: int) -> None:
    """``requests`` h2c GETs by ``h2load`` (``connections`` connections, ``streams`` in flight on each), on CPU 0."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    url = f"http://127.0.0.1:{port}{path.decode()}"
    argv = [*pin, "h2load", "-t1", f"-c{min(connections, requests)}", f"-m{streams}", f"-n{requests}", url]
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=900)
    match = re.search(r"(\d+) succeeded", done.stdout)
    if done.returncode != 0 or match is None or int(match.group(1)) != requests:
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(("requests:", "status codes:"))]
        raise RuntimeError(f"h2load: {' '.join(lines) or done.stderr.strip()[-200:]}")


async def _wait_ready(port: int, proc: subprocess.Popen[bytes], path: bytes, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proc.returncode} before it answered")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        try:
            async with asyncio.timeout(60):
                if await _exchange(reader, writer, path) == 200:
                    return
        finally:
            writer.close()
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the proxy did not answer within {deadline_s:.0f} s")


def _callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL, timeout=120)


def _dump_total(directory: Path, pid: int, before: set[Path]) -> int:
    """The instruction total of the dump callgrind wrote after ``-d`` (a new file beside the first)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in sorted(set(directory.glob(f"cg.{pid}*")) - before):
            match = re.search(r"^(?:totals|summary): (\d+)", path.read_text(errors="replace"), re.M)
            if match:
                return int(match.group(1))
        time.sleep(0.2)
    raise RuntimeError("callgrind wrote no dump")


def _proxy_command(args: argparse.Namespace, port: int, upstreams: list[int]) -> tuple[list[str], dict[str, str]]:
    """The proxy's argv (without valgrind) and its environment."""
    default = shutil.which("fastgate") or str(Path(sys.executable).parent / "fastgate")
    command = shlex.split(args.cmd) if args.cmd else [default]
    environment = dict(os.environ)
    if command[0] == "env":  # `env A=B cmd`: valgrind must run cmd itself (it does not follow exec by default)
        command.pop(0)
        while command and "=" in command[0]:
            key, _, value = command.pop(0).partition("=")
            environment[key] = value
    if args.arm:
        import features  # bench/features.py: the same configs bench/run.sh runs

        root = Path(tempfile.mkdtemp(prefix="fastgate-instr-"))
        extras = features.Extras(root, procs=None)  # type: ignore[arg-type]  # arms needing redis/JWT are refused
        config = features.feature_config(args.arm, port, upstreams[0], upstreams[1], extras)
        config_path = root / "gateway.json"
        config_path.write_text(json.dumps(config))
        return [*command, "run", str(config_path)], environment
    if args.config:
        text = Path(args.config).read_text().replace("{UPSTREAM_PORT}", str(upstreams[0]))
        config = json.loads(text.replace("{UPSTREAM_PORT_2}", str(upstreams[1])))
        config.setdefault("server", {}).update({"host": "127.0.0.1", "port": port})
        config_path = Path(tempfile.mkdtemp(prefix="fastgate-instr-")) / "gateway.json"
        config_path.write_text(json.dumps(config))
        return [*command, "run", str(config_path)], environment
    command += ["proxy", "--from", f"127.0.0.1:{port}", "--to", f"http://127.0.0.1:{upstreams[0]}"]
    return [*command, "--workers", "1", "--no-access-log", "--log-level", "warning"], environment


async def _drive(
    args: argparse.Namespace, upstreams: list[socket.socket], port: int, proc: subprocess.Popen[bytes], directory: Path
) -> tuple[int, float]:
    """Serve the upstreams, warm the proxy up, then count ``args.requests``: (instructions, seconds)."""
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(_Upstream, sock=upstream) for upstream in upstreams]
    path = args.path.encode()
    try:
        await _wait_ready(port, proc, path, args.start_timeout)
        streams = getattr(args, "h2c_streams", 0)

        async def load(requests: int) -> None:
            if streams:
                await _load_h2c(port, args.connections, requests, path, streams)
            else:
                await _load(port, args.connections, requests, path)

        await load(args.warmup)
        await asyncio.to_thread(_callgrind_control, "-z", str(proc.pid))
        before = await asyncio.to_thread(lambda: set(directory.glob(f"cg.{proc.pid}*")))
        started = time.monotonic()
        await load(args.requests)
        elapsed = time.monotonic() - started
        await asyncio.to_thread(_callgrind_control, "-d", str(proc.pid))
        return await asyncio.to_thread(_dump_total, directory, proc.pid, before), elapsed
    finally:
        for server in servers:
            server.close()


def start_under_callgrind(
    args: argparse.Namespace,
) -> tuple[list[socket.socket], int, subprocess.Popen[bytes], Path, list[str]]:
    """Bind the upstream sockets and start the proxy under callgrind: (upstreams, proxy port, process, dump
    directory, the proxy's command)."""
    upstreams = [socket.socket(), socket.socket()]  # the second for configs with {UPSTREAM_PORT_2}
    for upstream in upstreams:
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(128)
    port = args.port or _free_port()
    command, environment = _proxy_command(args, port, [upstream.getsockname()[1] for upstream in upstreams])
    directory = Path(tempfile.mkdtemp(prefix="fastgate-callgrind-"))
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={directory}/cg.%p", "--dump-instr=no"]
    pin = ["taskset", "-c", args.cpu] if args.cpu and shutil.which("taskset") else []
    proc = subprocess.Popen(
        [*pin, *valgrind, *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )
    return upstreams, port, proc, directory, command


def measure(args: argparse.Namespace) -> dict[str, object]:
    upstreams, port, proc, directory, command = start_under_callgrind(args)
    try:
        total, elapsed = asyncio.run(_drive(args, upstreams, port, proc, directory))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(directory, ignore_errors=True)
    return {
        "label": args.label,
        "command": " ".join(command),
        "requests": args.requests,
        "connections": args.connections,
        "h2c_streams": getattr(args, "h2c_streams", 0),
        "instructions": total,
        "instructions_per_request": round(total / args.requests),
        "response_bytes": args.size,
        "seconds_under_callgrind": round(elapsed, 1),
    }


def proxy_arguments(p: argparse.ArgumentParser, *, warmup: int, requests: int, start_timeout: float) -> None:
    """The options that say which proxy runs and what load it gets (shared with bench/request_profile.py)."""
    p.add_argument("--cmd", help="the fastgate command (default: fastgate beside this interpreter)")
    p.add_argument("--config", help="a JSON config for `fastgate run`; {UPSTREAM_PORT} is replaced, the listener set")
    p.add_argument("--arm", choices=("full", "metrics-on", "metrics-off", "ratelimit-memory"), help="a bench arm")
    p.add_argument("--label", default="fastgate")
    p.add_argument("--path", default="/256b")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--requests", type=int, default=requests)
    p.add_argument("--cpu", default="1", help="CPU list for the proxy (taskset), '' for none")
    p.add_argument("--start-timeout", type=float, default=start_timeout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    proxy_arguments(p, warmup=500, requests=3000, start_timeout=180)
    p.add_argument("--size", type=int, default=256, help="response body bytes (default 256; S4 is 1048576)")
    p.add_argument(
        "--h2c-streams",
        type=int,
        default=0,
        help="0: HTTP/1.1 (default); N: h2c by prior knowledge, h2load with N streams in flight per connection",
    )
    args = p.parse_args()
    global RESPONSE
    RESPONSE = response(args.size)
    if shutil.which("valgrind") is None:
        sys.exit("bench/instructions.py needs valgrind (apt-get install valgrind)")
    if args.requests <= 0 or args.warmup < 0 or args.connections <= 0 or not 0 <= args.h2c_streams <= 100:
        sys.exit("--requests and --connections must be positive, --warmup not negative, --h2c-streams 0..100")
    if args.h2c_streams and shutil.which("h2load") is None:
        sys.exit("--h2c-streams needs h2load (apt-get install nghttp2-client, or bench/http2.sh)")
    result = measure(args)
    print(json.dumps(result))
    print(f"{args.label}: {result['instructions_per_request']:,} instructions per request", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the proxy inherits it: dict and set layouts repeat run to run
    main()
