"""The admin listener of ``fastgate run`` as a process: an address it cannot bind stops the start in one line."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.reload_support import gateway_config, write_config
from tests.servers import REFUSED_PORT


def test_an_admin_address_in_use_fails_the_start_with_one_line_and_exit_3(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        admin_port = busy.getsockname()[1]
        path = tmp_path / "gateway.yaml"
        data = gateway_config({"api": f"http://127.0.0.1:{REFUSED_PORT}"}, [{"upstream": "api"}])
        write_config(path, {**data, "admin": {"listen": f"127.0.0.1:{admin_port}"}})
        result = subprocess.run(
            [sys.executable, "-m", "fastgate", "run", str(path)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 3
    output = result.stdout + result.stderr
    assert f"admin.listen: cannot listen on 127.0.0.1:{admin_port}: Address already in use" in output
    assert "Traceback" not in output
