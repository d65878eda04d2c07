"""A live gateway with its admin listener, real targets and headless Chromium, for the dashboard's browser test and
for scripts/dashboard-screenshot.

The gateway is ``python -m fastgate run CONFIG`` as a subprocess; targets are ``examples/upstream.py`` processes (every
path answers 200, so ``/healthz`` passes until the process is stopped). Chromium and chromedriver are Debian's
(``scripts/install`` installs ``chromium`` and ``chromium-driver``), driven by Selenium with the driver's path given,
so Selenium never tries to download one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.servers import GatewayProcess, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent.parent


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver) found on PATH, or None when either is missing."""
    chromium = os.environ.get("FASTGATE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("FASTGATE_CHROMEDRIVER") or shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@contextlib.contextmanager
def headless_chromium(width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
    paths = browser_paths()
    if paths is None:
        raise RuntimeError("chromium and chromedriver are needed (scripts/install installs them on Debian)")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no usable sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def example_upstream(log_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``examples/upstream.py`` on a free port: (process, "127.0.0.1:PORT"); stopped afterwards."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "upstream.py"), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, process=process)
        yield process, f"127.0.0.1:{port}"
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@dataclass
class AdminGateway:
    gateway: GatewayProcess
    admin_port: int
    token: str | None

    @property
    def dashboard_url(self) -> str:
        fragment = f"#token={self.token}" if self.token else ""
        return f"http://127.0.0.1:{self.admin_port}/{fragment}"


@contextlib.contextmanager
def admin_gateway(config: dict[str, Any], tmp_path: Path, *, token: str | None = None) -> Iterator[AdminGateway]:
    """``fastgate run`` a YAML file: ``config`` plus its server section and ``admin: {listen, token}`` on free ports.

    Waits for both the proxy and the admin listener: a gateway without one fails here (never skips).
    """
    port, admin_port = free_port(), free_port()
    admin: dict[str, Any] = {"listen": f"127.0.0.1:{admin_port}"}
    if token:
        admin["token"] = token
    full = {"server": {"host": "127.0.0.1", "port": port, "access_log": False}, "admin": admin, **config}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fastgate", "run", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    running = GatewayProcess(process, port, log_path)
    try:
        try:
            wait_for_port(port, timeout=30, process=process)
            wait_for_port(admin_port, timeout=30, process=process)
        except (RuntimeError, TimeoutError) as error:
            raise AssertionError(f"gateway with an admin listener did not start: {error}\n{running.log()}") from error
        yield AdminGateway(running, admin_port, token)
    finally:
        running.stop(timeout=10)
