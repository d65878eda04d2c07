"""The README's gRPC quick start as a user runs it: examples/grpc_server.py, ``fastgate run examples/grpc.yaml`` (its
ports moved to free ones, nothing else changed), and examples/grpc_client.py through the gateway, each a process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.reload_support import fastgate_run
from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).parent.parent.parent


def test_the_grpc_example_runs_through_fastgate(tmp_path: Path) -> None:
    service_port, gateway_port = free_port(), free_port()
    config = yaml.safe_load((ROOT / "examples/grpc.yaml").read_text())
    config["server"]["port"] = gateway_port
    config["upstreams"]["grpc"]["url"] = f"http://127.0.0.1:{service_port}"
    assert config["upstreams"]["grpc"]["protocol"] == "h2c"
    assert config["upstreams"]["grpc"]["health_check"]["type"] == "grpc"
    path = tmp_path / "grpc.yaml"
    path.write_text(yaml.safe_dump(config))
    service = subprocess.Popen([sys.executable, "examples/grpc_server.py", "--port", str(service_port)], cwd=ROOT)
    try:
        wait_for_port(service_port, process=service)
        with fastgate_run(path, tmp_path / "log", gateway_port):
            client = subprocess.run(
                [sys.executable, "examples/grpc_client.py", "--target", f"127.0.0.1:{gateway_port}"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
        log = (tmp_path / "log").read_text()
    finally:
        service.terminate()
        service.wait(10)
    assert client.returncode == 0, client.stderr
    lines = client.stdout.splitlines()
    assert lines[0].startswith("Say: HELLO THROUGH FASTGATE")
    assert lines[1:4] == ["Count: message 1", "Count: message 2", "Count: message 3"]
    assert "Join: a b c" in lines and "Health: SERVING" in lines
    assert "Missing: UNIMPLEMENTED - Method not found!" in lines
    assert '"POST /demo.Echo/Say HTTP/2.0" 200' in log and "grpc_status=0" in log and "grpc_status=12" in log
